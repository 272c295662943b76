"""What the tasks share: the options the faces (``fcnseg predict``, ``evaluate``, ``serve``) ask of
a net, a net's description for ``fcnseg info``, and the defaults most tasks take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from fcnseg.data.palette import pascal_palette
from fcnseg.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale
from fcnseg.files import atomic_write
from fcnseg.infer.detect import MIN_SCORE
from fcnseg.models.flops import ComputeCost

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = [
    "INFO_SIZE",
    "REFINEMENTS",
    "InferenceOptions",
    "NetDescription",
    "TaskBase",
    "augmentation",
    "class_legend",
    "hex_colour",
    "write_picture",
]

REFINEMENTS = ("probs", "tta_flip", "tta_scales", "crf")
"""The options that only some nets take (segmentation nets of one output): probabilities, test-time
augmentation and the dense CRF; a task lists those it takes in ``TaskBase.takes``."""


@dataclass(frozen=True)
class InferenceOptions:
    """What a face asks of a net beyond its plain prediction, as ``fcnseg predict``'s flags say it.

    Each task uses those that apply to it: the overlay options for nets drawn over their image,
    ``min_score`` for boxes, :data:`REFINEMENTS`, ``precision`` and ``max_memory`` for
    segmentation nets; it refuses a refinement it cannot give (:meth:`TaskBase.check_options`).
    """

    overlay: bool = False
    overlay_format: str = "jpg"
    """``jpg`` or ``png``: the overlays' and the drawn boxes' file type."""
    overlay_alpha: float = 0.5
    min_score: float = MIN_SCORE
    probs: bool = False
    probs_dtype: str = "float16"
    tta_flip: bool = False
    tta_scales: tuple[float, ...] | None = None
    crf: bool = False
    precision: str = "fp32"
    backend: str = "torch"
    """What runs the net: ``torch``, ``onnxruntime`` or ``openvino`` (:data:`fcnseg.infer.predict.BACKENDS`)."""
    calibration: Any = None
    """int8's calibration: a folder of images or a :class:`~fcnseg.accel.quantize.Calibration`."""
    max_memory: int | None = None
    batch_size: int = 1
    edge_output: str = "fuse"
    """An edge net's map: its own, or HED's merge (:data:`~fcnseg.infer.edge_outputs.EDGE_OUTPUTS`)."""

    def refinements(self) -> list[str]:
        """The :data:`REFINEMENTS` asked for, in that order."""
        return [name for name in REFINEMENTS if getattr(self, name)]


INFO_SIZE = (500, 500)
"""The input size (H, W) ``fcnseg info`` describes a net at unless told: about PASCAL VOC's largest
images."""


@dataclass(frozen=True)
class NetDescription:
    """What ``fcnseg info`` says of a net, in the words of its task: its cost at the size described,
    the geometry of its layers and outputs."""

    cost: ComputeCost
    predicts: str
    """What it predicts, after the net's name: ``21 classes``, ``edges, 6 outputs``."""
    fields: dict[str, tuple[int, int]]
    """(stride, receptive field) in input pixels of the layers (by Caffe name) that have them."""
    outputs: list[tuple[str, str, str]]
    """Rows after the layers: (name, what it is, shape) of each output."""
    summary: list[str]
    """Lines after the table: strides, crop offsets, receptive fields or priors."""


def hex_colour(colour: Any) -> str:
    """An RGB triple as ``#rrggbb``, as the page's styles take colours."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))


def class_legend(names: list[str]) -> list[dict[str, Any]]:
    """Each class's id, name and colour (PASCAL's, as the label PNGs and the drawn boxes colour it)."""
    colours = pascal_palette(256)
    return [{"id": i, "name": name, "color": hex_colour(colours[i % 256])} for i, name in enumerate(names)]


def write_picture(path: str, picture: Image.Image) -> None:
    """Write ``picture`` atomically, as a JPEG if ``path`` ends in ``.jpg``, else as a PNG."""
    kind = "JPEG" if path.endswith(".jpg") else "PNG"
    atomic_write(path, lambda f: picture.save(f, format=kind), durable=False)


def augmentation(config: TrainConfig) -> Compose | None:
    """The random rescaling, flips and crops ``config`` asks for, in that order; None for none."""
    transforms = []
    if config.scale_range is not None:
        transforms.append(RandomScale(config.scale_range))
    if config.flip:
        transforms.append(RandomHorizontalFlip())
    if config.crop is not None:
        transforms.append(RandomCrop(config.crop))
    return Compose(transforms) if transforms else None


class TaskBase:
    """The parts of a task that most tasks share; each task module overrides what differs and
    brings :meth:`measure`, the metrics of a net on a data set."""

    name: str
    datasets_known: tuple[str, ...]
    """The data sets ``fcnseg evaluate --dataset`` scores this task's nets on."""
    takes: tuple[str, ...] = ()
    """Which of :data:`REFINEMENTS` this task's nets take."""
    serves = True
    """Whether ``fcnseg serve``'s page has a view of this task's results."""
    runtimes = False
    """Whether this task's nets run on the runtime backends and in int8 (FCNs)."""

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, context: Context, progress: bool
    ) -> dict[str, Any]:
        """The training loop's validation: :meth:`measure` in batches of the run's validation size."""
        options = InferenceOptions(batch_size=config.val_batch_size, edge_output=config.edge_output)
        return self.measure(model, dataset, options, context, progress)

    def check_options(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        """Refuse, before any work, the refinements ``options`` asks for that this task's nets cannot give."""
        if not self.runtimes and (options.backend != "torch" or options.precision == "int8"):
            asked = f"--backend {options.backend}" if options.backend != "torch" else "--precision int8"
            raise ValueError(
                f"{asked}: the runtime backends and int8 run FCN segmentation nets; "
                f"{source} is a net of the {self.name} task (it runs on torch)"
            )
        refused = [name for name in options.refinements() if name not in self.takes]
        if refused:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in refused)
            raise ValueError(
                f"{flags}: only for segmentation nets of one output; {source} is a net of the {self.name} task"
            )
        if options.edge_output != "fuse" and getattr(model, "config", {}).get("arch") != "hed":
            raise ValueError(
                f"--edge-output {options.edge_output}: only for HED nets (its fused and side outputs); "
                f"{source} is not one"
            )

    def check_prediction(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        """Refuse, before any work, what of ``options`` (or of the net) cannot be predicted and written."""
        self.check_options(model, options, source)

    def check_dataset(self, name: str, source: str) -> None:
        """Refuse a data set this task's nets are not scored on, naming those they are."""
        if name not in self.datasets_known:
            raise ValueError(
                f"{source} is a net of the {self.name} task: give --dataset, one of "
                f"{', '.join(self.datasets_known)}, not {name}"
            )

    def class_names(self, model: nn.Module, dataset: Dataset | None = None) -> list[str]:
        """The net's class names: its metadata's, else ``dataset``'s, numbered where neither has one."""
        names = list(
            getattr(model, "meta", {}).get("class_names") or getattr(dataset, "class_names", None) or []
        )
        return names + [str(i) for i in range(len(names), model.num_classes)]

    def predicts(self, model: nn.Module) -> str:
        """What the net predicts, for people: ``21 classes``."""
        return f"{model.num_classes} classes"

    def default_class_names(self, model: nn.Module) -> list[str] | None:
        """The class names a converted net without any gets (none)."""
        return None

    def page_info(self, model: nn.Module) -> dict[str, Any]:
        """The task's part of ``GET /info``: its classes with their colours."""
        return {"classes": class_legend(self.class_names(model))}
