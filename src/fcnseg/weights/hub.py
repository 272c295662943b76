"""Weights by name: the FCN authors' published models and the ImageNet classifiers they started from,
downloaded once, verified, converted to fcnseg checkpoints and cached under ``$FCNSEG_HOME``.

Cache layout (``home()``)::

    downloads/<original file>            an ImageNet classifier or a trunk as published, kept to convert
                                         it per net
    downloads/<original file>.sha256     the SHA-256 of the file once verified (its checksum, or what a
                                         file without one must hold: :func:`check_layout`); where none
                                         is published, later downloads must match it
    checkpoints/<name>.pt                a published model as an fcnseg checkpoint (the original
                                         .caffemodel, or the archive holding it, is removed once converted)
    checkpoints/<classifier>.<arch>.pt   an ImageNet classifier as the backbone of <arch>, or a published
                                         trunk (HED's and FSDS's VGG16, SSD's fc_reduced) in <arch>'s

Messages go to the ``fcnseg.weights`` logger (nothing is configured here).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tarfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from fcnseg.data.context import CONTEXT_CLASSES
from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.siftflow import SIFTFLOW_GEOMETRIC_CLASSES, SIFTFLOW_SEMANTIC_CLASSES
from fcnseg.data.voc import VOC_CLASSES
from fcnseg.download import RemoteFile, download
from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_write
from fcnseg.models.alexnet import ALEXNET_WIDTHS
from fcnseg.models.googlenet import GOOGLENET_WIDTHS
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.registry import BUILDERS, DETECTORS, SIDE_OUTPUT_ARCHS, build_model, trunk_family
from fcnseg.models.resnet import RESNET_DEPTHS, RESNET_WIDTHS
from fcnseg.models.ssd import SSD300_WIDTHS
from fcnseg.models.vgg import VGG16_WIDTHS
from fcnseg.weights.checkpoint import save_checkpoint
from fcnseg.weights.transfer import WeightsMismatchError

__all__ = [
    "INIT_NAMES",
    "TRUNKS",
    "WEIGHTS",
    "Layout",
    "UnexpectedFileError",
    "UnknownWeightsError",
    "Weights",
    "cache_state",
    "check_layout",
    "checkpoint",
    "download_size",
    "fetch",
    "get",
    "get_command",
    "home",
    "is_cached",
    "is_name",
    "resolve",
]

log = logging.getLogger("fcnseg.weights")


class UnknownWeightsError(FcnsegError):
    """A name that is neither an existing file nor published weights."""


class UnexpectedFileError(FcnsegError):
    """A file where published weights belong that holds another net (other layers, widths or classes)."""


@dataclass(frozen=True)
class Weights:
    """One set of published weights: the file, what it holds and what fcnseg makes of it."""

    file: RemoteFile
    arch: str  # the fcnseg architecture it loads as; for an ImageNet classifier its trunk ("vgg16", ...)
    num_classes: int
    dataset: str
    preprocess: str
    widths: tuple[int, ...]
    options: tuple[tuple[str, object], ...] = ()  # backbone options besides widths (AlexNet's groups, lrn)
    class_names: tuple[str, ...] | None = None
    score: str = ""  # as published
    heads: tuple[int, ...] = ()  # the class counts of a net of several heads (SIFT Flow's), in channel order
    member: str = ""  # for a file that is an archive: the pattern of the .caffemodel inside it
    source_format: str = (
        "caffe"  # a published net's file: "caffe" (.caffemodel) or "torchvision" (state dict)
    )

    def __post_init__(self) -> None:
        if not (self.is_caffe or self.file.has_checksum):
            raise ValueError(
                f"{self.file.url}: a file that is no Caffe model needs its published checksum: fcnseg reads "
                "the layout of Caffe models only, to check one that has none"
            )

    @property
    def is_classifier(self) -> bool:
        return self.arch in _FAMILY_WIDTHS

    @property
    def is_caffe(self) -> bool:
        """Whether the file (or the archive member converted) is a Caffe model."""
        return self.source_format == "caffe" and (self.member or self.file.filename).endswith(".caffemodel")

    @property
    def model_args(self) -> dict[str, object]:
        """The ``build_model`` arguments of the net a model that predicts loads as (not a classifier's
        or a trunk's, which start the nets they are converted for)."""
        heads = {"heads": self.heads} if self.heads else {}
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "widths": self.widths,
            **dict(self.options),
            **heads,
        }

    @property
    def is_trunk(self) -> bool:
        """A published trunk (``arch`` a key of :data:`TRUNKS`): layers that start the nets it names."""
        return self.arch in TRUNKS

    @property
    def starts(self) -> str | None:
        """The net that a classifier or a published trunk starts (the first it names), else None:
        weights that are a net's own."""
        if self.is_classifier:
            return _FAMILY_FCN[self.arch]
        return TRUNKS[self.arch][0] if self.is_trunk else None

    @property
    def family(self) -> str:
        return self.arch if self.is_classifier else trunk_family(self.arch)


_FAMILY_WIDTHS = {
    "vgg16": VGG16_WIDTHS,
    "alexnet": ALEXNET_WIDTHS,
    "googlenet": GOOGLENET_WIDTHS,
    **{f"resnet{depth}": RESNET_WIDTHS for depth in RESNET_DEPTHS},
}
_FAMILY_FCN = {
    "vgg16": "fcn32s",
    "alexnet": "fcn-alexnet",
    "googlenet": "fcn32s-googlenet",
    **{f"resnet{depth}": f"fcn32s-resnet{depth}" for depth in RESNET_DEPTHS},
}

TRUNKS: dict[str, tuple[str, ...]] = {"vgg16-convs": ("hed", "fsds"), "vgg16-reduced": ("ssd300", "ssd512")}
"""Trunks the family's authors published as their nets' starting weights, and the nets each starts:
VGG16's convolutions (HED's 5stage-vgg, FSDS's vgg16convs) and the fc_reduced VGG16 of SSD (fc6 a
3x3 convolution of dilation 6, fc6 and fc7 1024 wide)."""


def _drive(file_id: str, name: str, **fields) -> RemoteFile:
    """A file on Google Drive by its id, which serves large files behind a confirmation page: when it
    does, the download stops and says where to put the file fetched by hand."""
    return RemoteFile(
        f"https://drive.google.com/uc?export=download&id={file_id}",
        name=name,
        extract=False,
        unverified=True,
        **fields,
    )


_BVLC = "http://dl.caffe.berkeleyvision.org"  # plain HTTP only: no HTTPS address of it is published
_VGG = "www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel"
_VOC = "PASCAL VOC + SBD"
_SIFTFLOW_HEADS = (len(SIFTFLOW_SEMANTIC_CLASSES), len(SIFTFLOW_GEOMETRIC_CLASSES))


def _fcn(
    filename: str,
    arch: str,
    num_classes: int,
    dataset: str,
    class_names: tuple[str, ...] | None,
    score: str = "",
    preprocess: str = "caffe",
    heads: tuple[int, ...] = (),
    **checksums,
) -> Weights:
    widths = _FAMILY_WIDTHS[trunk_family(arch)]
    file = RemoteFile(f"{_BVLC}/{filename}", extract=False, unverified=not checksums, **checksums)
    return Weights(file, arch, num_classes, dataset, preprocess, widths, (), class_names, score, heads=heads)


# The published FCN models: every folder of github.com/shelhamer/fcn.berkeleyvision.org with a
# caffemodel-url (nyud-fcn32s-color-d has none), scores from its README (mean IU). Checksums only
# where a source publishes one; no source gives the others' checksum or size, nor an HTTPS address:
# each is checked to hold its net (check_layout) and its SHA-256 recorded at first download.
WEIGHTS: dict[str, Weights] = {
    "voc-fcn32s": _fcn("fcn32s-heavy-pascal.caffemodel", "fcn32s", 21, _VOC, VOC_CLASSES, "63.6 seg11valid"),
    "voc-fcn16s": _fcn("fcn16s-heavy-pascal.caffemodel", "fcn16s", 21, _VOC, VOC_CLASSES, "65.0 seg11valid"),
    "voc-fcn8s": _fcn(
        "fcn8s-heavy-pascal.caffemodel",
        "fcn8s",
        21,
        _VOC,
        VOC_CLASSES,
        "65.5 seg11valid, 67.2 seg12test",
        # sha1: opencv/opencv_extra testdata/dnn/download_models.py (model 'Fcn');
        # md5: wkentaro/fcn fcn/data.py download_fcn8s_caffemodel (before commit 9421a40)
        sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",
        md5="c03b2953ebd846c270da1a8e8f200c09",
    ),
    "voc-fcn8s-atonce": _fcn(
        "fcn8s-atonce-pascal.caffemodel", "fcn8s-atonce", 21, _VOC, VOC_CLASSES, "65.4 seg11valid"
    ),
    "voc-fcn-alexnet": _fcn(
        "fcn-alexnet-pascal.caffemodel", "fcn-alexnet", 21, _VOC, VOC_CLASSES, "48.0 seg11valid"
    ),
    "nyud-fcn32s-color": _fcn(
        "nyud-fcn32s-color-heavy.caffemodel", "fcn32s", 40, "NYUDv2", NYUD_CLASSES, preprocess="nyud-color"
    ),
    "nyud-fcn32s-hha": _fcn(
        "nyud-fcn32s-hha-heavy.caffemodel", "fcn32s", 40, "NYUDv2 (HHA)", NYUD_CLASSES, preprocess="nyud-hha"
    ),
    "nyud-fcn32s-color-hha": _fcn(
        "nyud-fcn32s-color-hha-heavy.caffemodel",
        "fcn32s-late-fusion",
        40,
        "NYUDv2 (colour + HHA)",
        NYUD_CLASSES,
        preprocess="nyud-color-hha",
    ),
    # two heads on one trunk, semantic then geometric classes (score_fr_sem, score_fr_geo, ...)
    **{
        f"siftflow-{arch}": _fcn(
            f"siftflow-{arch}-heavy.caffemodel",
            arch,
            sum(_SIFTFLOW_HEADS),
            "SIFT Flow",
            (*SIFTFLOW_SEMANTIC_CLASSES, *SIFTFLOW_GEOMETRIC_CLASSES),
            preprocess="siftflow",
            heads=_SIFTFLOW_HEADS,
        )
        for arch in ("fcn32s", "fcn16s", "fcn8s")
    },
    **{
        f"pascalcontext-{arch}": _fcn(
            f"pascalcontext-{arch}-heavy.caffemodel", arch, 60, "PASCAL-Context", CONTEXT_CLASSES
        )
        for arch in ("fcn32s", "fcn16s", "fcn8s")
    },
    # torchvision's FCNs, trained on COCO train2017 for the 20 VOC classes (and background), with
    # the auxiliary head on layer3. URLs and scores (COCO val2017, VOC's classes): torchvision's
    # models/segmentation/fcn.py, FCN_ResNet50_Weights / FCN_ResNet101_Weights. The file names carry
    # the first 8 hex digits of the SHA-256, which torch.hub checks and so does fcnseg.
    **{
        f"tv-fcn-resnet{depth}-coco": Weights(
            RemoteFile(
                f"https://download.pytorch.org/models/fcn_resnet{depth}_coco-{prefix}.pth",
                sha256=prefix,
                extract=False,
            ),
            f"tv-fcn-resnet{depth}",
            21,
            "COCO (VOC's 20 classes)",
            "imagenet",
            RESNET_WIDTHS,
            options=(("aux", True),),
            class_names=VOC_CLASSES,
            score=score,
            source_format="torchvision",
        )
        for depth, prefix, score in (
            (50, "1167a1af", "60.5 mean IU, 91.4 pixel acc. (COCO val2017)"),
            (101, "7ecb50ca", "63.7 mean IU, 91.9 pixel acc. (COCO val2017)"),
        )
    },
    # torchvision's ImageNet ResNets (IMAGENET1K_V1; torchvision's models/resnet.py): SHA-256 prefix as
    # in the file name, acc@1 from the same weights' metadata. For ResNet-18 and -50 the full SHA-256
    # and the size in bytes, as several independent public records of downloads of these files give
    # them (they agree, and begin with the published prefix); for the others only the prefix is known.
    **{
        f"resnet{depth}-torchvision": Weights(
            RemoteFile(
                f"https://download.pytorch.org/models/resnet{depth}-{sha256[:8]}.pth",
                sha256=sha256,
                size=size,
                extract=False,
            ),
            f"resnet{depth}",
            1000,
            "ImageNet",
            "imagenet",
            RESNET_WIDTHS,
            score=f"{top1} top-1",
        )
        for depth, sha256, size, top1 in (
            (18, "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", 46_830_571, "69.758"),
            (34, "b627a593", None, "73.314"),
            (50, "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", 102_530_333, "76.130"),
            (101, "63fe2227", None, "77.374"),
        )
    },
    # ImageNet classifiers. torchvision's file names carry the first 8 hex digits of the SHA-256;
    # the full digests are those of copies of the same files on huggingface.co (Git LFS / Xet
    # pointers: xvjiarui/download_cache torch/hub/checkpoints/vgg16-397923af.pth, which also gives
    # the size; CSWRY/VOSR torch_cache/checkpoints/alexnet-owt-7be5be79.pth), and they begin with
    # those 8 digits. Scores: torchvision's model docs (acc@1), the VGG gist 211839e7 (dense,
    # one scale), models/bvlc_alexnet/readme.md of BVLC/caffe (centre crop).
    "vgg16-torchvision": Weights(
        RemoteFile(
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            size=553433881,
            extract=False,
        ),
        "vgg16",
        1000,
        "ImageNet",
        "imagenet",
        VGG16_WIDTHS,
        score="71.6 top-1",
    ),
    "alexnet-torchvision": Weights(
        RemoteFile(
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            extract=False,
        ),
        "alexnet",
        1000,
        "ImageNet",
        "imagenet",
        (64, 192, 384, 256, 256, 4096),
        options=(("groups", 1), ("lrn", False)),
        score="56.5 top-1",
    ),
    "vgg16-caffe": Weights(
        # md5: the one ry/tensorflow-vgg16's README states for this file, as other public download
        # scripts check it; size: public listings of the file (553,432,081 bytes). Served over HTTPS
        # too, by the same host; plain HTTP is the fallback, checked by the md5 and size alike.
        RemoteFile(
            f"https://{_VGG}",
            md5="441315b0ff6932dbfde97731be7ca852",
            size=553_432_081,
            mirrors=(f"http://{_VGG}",),
            extract=False,
        ),
        "vgg16",
        1000,
        "ImageNet",
        "caffe",
        VGG16_WIDTHS,
        score="8.1% top-5 error",
    ),
    "alexnet-caffe": Weights(
        # sha1: BVLC/caffe models/bvlc_alexnet/readme.md (also opencv_extra's download_models.py). The
        # HTTPS copy: NVIDIA's, as dusty-nv/jetson-inference fetches it; BVLC's plain HTTP address is
        # the fallback, both checked by the sha1.
        RemoteFile(
            f"{_BVLC}/bvlc_alexnet.caffemodel",
            sha1="9116a64c0fbe4459d18f4bb6b56d647b63920377",
            mirrors=("https://nvidia.box.com/shared/static/5j264j7mky11q8emy4q14w3r8hl5v6zh.caffemodel",),
            extract=False,
        ),
        "alexnet",
        1000,
        "ImageNet",
        "caffe",
        ALEXNET_WIDTHS,
        score="57.1 top-1",
    ),
    "googlenet-caffe": Weights(
        # sha1: BVLC/caffe models/bvlc_googlenet/readme.md; score: the same readme (centre crop); size:
        # jetson-inference's troubleshooting notes (53,533,754 bytes). The HTTPS copy: NVIDIA's, as
        # for AlexNet.
        RemoteFile(
            f"{_BVLC}/bvlc_googlenet.caffemodel",
            sha1="405fc5acd08a3bb12de8ee5e23a96bec22f08204",
            size=53_533_754,
            mirrors=("https://nvidia.box.com/shared/static/at8b1105ww1c5h7p30j5ko8qfnxrs0eg.caffemodel",),
            extract=False,
        ),
        "googlenet",
        1000,
        "ImageNet",
        "caffe",
        GOOGLENET_WIDTHS,
        score="68.7 top-1",
    ),
}

# The family on the same trunk: HED (s9xie/hed README), FSDS (zeakey/skeleton, commit "FSDS: reproduce
# performance"), SSD (weiliu89/caffe ssd README: the VOC07+12 models SSD300* and SSD512*), and their
# starting trunks. Sizes as the READMEs state them, rounded; no source publishes a checksum or an
# exact size, so each file is checked to hold its net (check_layout) and its SHA-256 recorded at
# first download. FSDS's files are on plain HTTP only.
WEIGHTS.update(
    {
        "hed-bsds": Weights(
            RemoteFile(
                "https://vcl.ucsd.edu/hed/hed_pretrained_bsds.caffemodel",
                extract=False,
                stated_size="56MB",
                unverified=True,
            ),
            "hed",
            1,
            "BSDS500 (HED-BSDS)",
            "caffe",
            VGG16_WIDTHS,
            score="ODS .790, OIS .808 BSDS500 test",
        ),
        "fsds-sk-large": Weights(
            RemoteFile(
                "http://data.kaiz.xyz/projects/skeleton/fsds-pretrained-skl.zip",
                extract=False,
                unverified=True,
            ),
            "fsds",
            5,
            "SK-LARGE",
            "caffe",
            VGG16_WIDTHS,
            score="F .633 SK-LARGE test (paper)",
            member="*.caffemodel",
        ),
        "ssd300-voc0712": Weights(
            _drive("0BzKzrI_SkD1_WVVTSmQxU0dVRzA", "models_VGGNet_VOC0712_SSD_300x300.tar.gz"),
            "ssd300",
            21,
            "VOC07+12 trainval",
            "ssd",
            SSD300_WIDTHS,
            class_names=VOC_CLASSES,
            score="77.2 mAP VOC2007 test",
            member="VGG_VOC0712_SSD_300x300_iter_120000.caffemodel",
        ),
        "ssd512-voc0712": Weights(
            _drive("0BzKzrI_SkD1_ZDIxVHBEcUNBb2s", "models_VGGNet_VOC0712_SSD_512x512.tar.gz"),
            "ssd512",
            21,
            "VOC07+12 trainval",
            "ssd",
            SSD300_WIDTHS,
            class_names=VOC_CLASSES,
            score="79.8 mAP VOC2007 test",
            member="VGG_VOC0712_SSD_512x512_iter_120000.caffemodel",
        ),
        "vgg16-hed": Weights(
            RemoteFile(
                "https://vcl.ucsd.edu/hed/5stage-vgg.caffemodel",
                extract=False,
                stated_size="248MB",
                unverified=True,
            ),
            "vgg16-convs",
            1000,
            "ImageNet",
            "caffe",
            VGG16_WIDTHS,
        ),
        "vgg16-fsds": Weights(
            # the second address: the same author's, linked by zeakey/hed's README
            RemoteFile(
                "http://data.kaizhao.net/projects/edge/vgg16convs.caffemodel",
                mirrors=("http://zhaok-data.oss-cn-shanghai.aliyuncs.com/caffe-model/vgg16convs.caffemodel",),
                extract=False,
                unverified=True,
            ),
            "vgg16-convs",
            1000,
            "ImageNet",
            "caffe",
            VGG16_WIDTHS,
        ),
        "vgg16-fc-reduced": Weights(
            RemoteFile(
                "http://cs.unc.edu/~wliu/projects/ParseNet/VGG_ILSVRC_16_layers_fc_reduced.caffemodel",
                extract=False,
                unverified=True,
            ),
            "vgg16-reduced",
            1000,
            "ImageNet",
            "ssd",
            SSD300_WIDTHS,
        ),
    }
)

INIT_NAMES: dict[str, dict[str, str]] = {
    # torchvision's VGG16 and ResNets, "imagenet" preprocessing. Its AlexNet is single-tower without
    # LRN and other widths: it cannot fill fcn-alexnet as fcnseg builds it (Caffe's layout).
    "imagenet": {
        "vgg16": "vgg16-torchvision",
        **{f"resnet{d}": f"resnet{d}-torchvision" for d in RESNET_DEPTHS},
    },
    # the Caffe classifiers the paper started from, "caffe" preprocessing
    "imagenet-caffe": {"vgg16": "vgg16-caffe", "alexnet": "alexnet-caffe", "googlenet": "googlenet-caffe"},
}
"""Initialisations by backbone: ``resolve("imagenet", arch=...)`` picks the classifier for the arch."""


def home() -> Path:
    """The cache folder: ``$FCNSEG_HOME``, else ``$XDG_CACHE_HOME/fcnseg``, else ``~/.cache/fcnseg``."""
    if os.environ.get("FCNSEG_HOME"):
        return Path(os.environ["FCNSEG_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "fcnseg"


def get(name: str) -> Weights:
    """The published weights called ``name``; an unknown name is an error that lists the known ones."""
    if name not in WEIGHTS:
        raise UnknownWeightsError(
            f"unknown weights {name!r}: neither a file nor a published name; known names: "
            f"{', '.join(WEIGHTS)} (and for initialisation {', '.join(INIT_NAMES)}); see 'fcnseg weights list'"
        )
    return WEIGHTS[name]


def _original(weights: Weights) -> Path:
    return home() / "downloads" / weights.file.filename


def _record(weights: Weights) -> Path:
    """Where the SHA-256 of the verified original is recorded: its presence says it was checked."""
    original = _original(weights)
    return original.with_name(original.name + ".sha256")


def _checkpoint_path(name: str, arch: str | None = None) -> Path:
    return home() / "checkpoints" / (f"{name}.{arch}.pt" if arch else f"{name}.pt")


def get_command(name: str, arch: str | None = None) -> str:
    """The command that puts ``name`` in the cache (converted for ``arch``, where it starts a net):
    what fcnseg's messages tell a user to run."""
    return f"fcnseg weights get {name}" + (f" --arch {arch}" if arch else "")


def _train_command(name: str, arch: str) -> str:
    """The command that trains ``arch`` from ``name``, with ``--task`` where ``arch`` is not a
    segmentation net (the task a net names, read off the net built on the meta device)."""
    with torch.device("meta"):
        task = getattr(build_model(arch), "task", "segmentation")
    return f"fcnseg train {'' if task == 'segmentation' else f'--task {task} '}--arch {arch} --init {name}"


def fetch(name: str, progress: bool = True) -> Path:
    """The original file of ``name`` in the cache, downloaded and verified if it is not there yet.

    A file is verified by its published checksum (and size) where a source gives them; one without
    a checksum (placed by hand, or downloaded) is first checked to hold what ``name`` publishes
    (:func:`check_layout`), and its SHA-256 is then recorded: later downloads must match it. A
    file that fails is refused with what it holds and what to do; nothing that failed is recorded.
    """
    weights = get(name)
    file, dest = weights.file, _original(weights)
    return download(
        file.url,
        dest,
        md5=file.md5,
        sha256=file.sha256,
        sha1=file.sha1,
        size=file.size,
        record=_record(weights),
        mirrors=file.mirrors,
        check=None if file.has_checksum else partial(check_layout, name),
        then=f"run `{get_command(name)}`, which checks it" + ("" if weights.starts else " and converts it"),
        progress=progress,
    )


@dataclass(frozen=True)
class Layout:
    """What a weights file holds, as far as its name tells: the net, its widths and its classes."""

    net: str  # an architecture, or "vgg16 classifier", "vgg16-convs trunk"
    widths: tuple[int, ...]
    classes: int | None = None  # None: the net's own (HED's, FSDS's) or none (a classifier's trunk, a trunk)
    heads: tuple[int, ...] = ()

    def __str__(self) -> str:
        classes = "+".join(map(str, self.heads)) if self.heads else self.classes
        counted = f", {classes} classes" if classes is not None else ""
        return f"{self.net}{counted}, widths {','.join(map(str, self.widths))}"


def _conv_widths(arch: str, widths: tuple[int, ...]) -> tuple[int, ...]:
    """A net's widths as its file gives them: HED's and FSDS's trunks end at conv5_3, without VGG16's fc."""
    return tuple(widths[:5]) if arch in SIDE_OUTPUT_ARCHS and len(widths) == 6 else tuple(widths)


def _expected_layout(weights: Weights) -> Layout:
    if weights.is_classifier:
        return Layout(f"{weights.arch} classifier", tuple(weights.widths))
    if weights.is_trunk:
        return Layout(f"{weights.arch} trunk", _conv_widths(TRUNKS[weights.arch][0], weights.widths))
    classes = None if weights.arch in SIDE_OUTPUT_ARCHS else weights.num_classes
    return Layout(weights.arch, _conv_widths(weights.arch, weights.widths), classes, tuple(weights.heads))


def _held_layout(weights: Weights, path: Path) -> Layout:
    """The layout of the Caffe model at ``path`` (or of the archive member that ``weights`` converts),
    read off its blob shapes: a net that predicts as its layer names say, or the trunk of the net
    ``weights`` expects (a classifier's, a published trunk's)."""
    from fcnseg.weights.caffe import build_args, infer_build_args, shape_stand_ins
    from fcnseg.weights.caffe_format import read_blob_shapes
    from fcnseg.weights.imagenet import caffe_trunk_blobs

    if weights.member:
        member, data = _member_bytes(path, weights.member)
        blobs = shape_stand_ins(read_blob_shapes(f"{path}:{member}", data))
    else:
        blobs = shape_stand_ins(read_blob_shapes(path))
    try:
        args = build_args(blobs, str(path))
    except WeightsMismatchError:  # a trunk without a net's head: a classifier's, or a published trunk
        if weights.starts is None:
            raise
    else:
        heads = tuple(args.get("heads", ()))
        return Layout(
            args["arch"], _conv_widths(args["arch"], tuple(args["widths"])), args.get("num_classes"), heads
        )
    taker = weights.starts
    args = infer_build_args(caffe_trunk_blobs(blobs), taker, str(path))
    return Layout(_expected_layout(weights).net, _conv_widths(taker, tuple(args["widths"])))


def check_layout(name: str, path: str | os.PathLike, placed: bool = True) -> None:
    """Refuse a file that does not hold what ``name`` publishes, read from its layer shapes alone
    (:func:`~fcnseg.weights.caffe_format.read_blob_shapes`; no net is built, no weight decoded): the
    net, its widths, its classes and heads. :func:`fetch` runs it before it records the digest of a
    file that no published checksum vouches for: one ``placed`` by hand, or one just downloaded.
    """
    weights, path = get(name), Path(path)
    expected = _expected_layout(weights)
    try:
        held: Layout | str = _held_layout(weights, path)
    except ValueError as error:  # what each reader refuses (CaffeFormatError, WeightsMismatchError ...)
        held = f"no {expected.net} ({error})"
    if held == expected:
        return
    dest = _original(weights)
    if placed:
        fix = (
            f"Remove it; then `{get_command(name)}` downloads the published file ({weights.file.url}), "
            "or put that file there by hand"
        )
    else:
        fix = (
            f"The address (or FCNSEG_MIRROR) serves another file, which was not kept; put the published "
            f"file ({weights.file.url}) at {dest} by hand, then run `{get_command(name)}`"
        )
    shown = dest if placed else f"the file downloaded for {dest}"
    raise UnexpectedFileError(f"{shown} is not {name}: {name} is {expected}; this file holds {held}. {fix}.")


def checkpoint(name: str, progress: bool = True) -> Path:
    """The fcnseg checkpoint of the published FCN model ``name``, converted once and cached.

    The checkpoint carries the model's class names and the preprocessing its weights expect.
    The original file (a Caffe model, torchvision's state dict) is removed after conversion (its
    SHA-256 record stays).
    """
    if name in INIT_NAMES:
        raise FcnsegError(
            f"{name} picks the ImageNet classifier that starts a net, not a model that predicts: "
            f"`{get_command(name, 'fcn8s')}` converts it for fcn8s, `{_train_command(name, 'fcn8s')}` trains "
            f"from it (in Python: fcnseg.weights.hub.resolve({name!r}, arch='fcn8s'))"
        )
    weights = get(name)
    if weights.starts:
        kind = "an ImageNet classifier" if weights.is_classifier else "a trunk"
        arch = weights.starts
        raise FcnsegError(
            f"{name} is {kind}, not a model that predicts: it starts a net. `{get_command(name, arch)}` "
            f"converts it for {arch}, `{_train_command(name, arch)}` trains from it (in Python: "
            f"fcnseg.weights.hub.resolve({name!r}, arch={arch!r}))"
        )
    out = _checkpoint_path(name)
    if out.is_file():
        return out
    original = fetch(name, progress)
    converted = _unpacked(original, weights.member) if weights.member else original
    _note(progress, f"converting {converted.name} -> {out}")
    if weights.source_format == "torchvision":
        from fcnseg.weights.checkpoint import safe_load
        from fcnseg.weights.torchvision import torchvision_fcn

        model = torchvision_fcn(safe_load(converted, "cpu", "torch state dict"), weights.arch, str(converted))
    else:
        from fcnseg.weights.caffe import load_caffe  # the protobuf schema, to convert only

        model = load_caffe(converted, weights.arch)
    heads = tuple(model.heads) if isinstance(model, MultiHeadFCN) else ()
    if model.num_classes != weights.num_classes or heads != weights.heads:
        raise UnexpectedFileError(
            f"{original}: holds {model.num_classes} classes (heads: {list(heads) or 'one'}), expected "
            f"{weights.num_classes} (heads: {list(weights.heads) or 'one'}) for {name}"
        )
    model.meta.update(preprocess=weights.preprocess, weights=name)
    if weights.class_names is not None:
        model.meta["class_names"] = list(weights.class_names)
    save_checkpoint(model, out)
    original.unlink()
    converted.unlink(missing_ok=True)
    return out


def _member_bytes(archive: Path, pattern: str) -> tuple[str, bytes]:
    """The name and the bytes of the one member of ``archive`` (tar or zip) whose file name matches
    ``pattern``."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            found = _one_member(archive, pattern, list(members))
            source = tar.extractfile(members[found])
            return found, source.read() if source is not None else b""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            found = _one_member(archive, pattern, [n for n in zf.namelist() if not n.endswith("/")])
            return found, zf.read(found)
    raise UnexpectedFileError(f"{archive} is neither a tar nor a zip archive: not the published file")


def _unpacked(archive: Path, pattern: str) -> Path:
    """The one member of ``archive`` whose file name matches ``pattern``, written beside it."""
    found, data = _member_bytes(archive, pattern)
    out = archive.with_name(Path(found).name)
    atomic_write(out, lambda f: f.write(data))
    return out


def _one_member(archive: Path, pattern: str, names: list[str]) -> str:
    found = [n for n in names if fnmatch.fnmatch(Path(n).name, pattern)]
    if len(found) != 1:
        raise UnexpectedFileError(
            f"{archive}: expected one file {pattern} inside, found {len(found)}: {', '.join(found[:5]) or 'none'}"
        )
    return found[0]


def _note(progress: bool, message: str) -> None:
    if progress:
        log.info(message)


def cache_state(name: str) -> str:
    """``"yes"`` where ``name`` is ready without network (the converted model, or the classifier's or
    trunk's verified file), ``"unchecked"`` where a file placed by hand waits for its first check
    (:func:`fetch`: ``fcnseg weights get NAME``), else ``"no"``."""
    weights = get(name)
    original = _original(weights)
    verified = _record(weights).is_file()
    if weights.starts:
        if original.is_file():
            return "yes" if verified else "unchecked"
        return "no"
    if _checkpoint_path(name).is_file():
        return "yes"
    return "unchecked" if original.is_file() and not verified else "no"


def is_cached(name: str) -> bool:
    """Whether ``name`` is ready without network (:func:`cache_state` is ``"yes"``)."""
    return cache_state(name) == "yes"


def download_size(name: str) -> tuple[int, bool]:
    """The download's size in bytes and whether it is exact (published) rather than estimated
    as 4 bytes per float32 parameter of the net."""
    weights = get(name)
    if weights.file.size is not None:
        return weights.file.size, True
    options = dict(weights.options)
    with torch.device("meta"):  # shapes only: nothing is allocated
        if weights.is_trunk:
            net, fc8 = build_model(weights.starts, widths=weights.widths).backbone, 0
        elif weights.is_classifier:
            net = build_model(weights.starts, widths=weights.widths, **options).backbone
            fc8 = weights.num_classes * (net.output.channels + 1)
        else:
            net, fc8 = build_model(**weights.model_args), 0
    return 4 * (sum(p.numel() for p in net.parameters()) + fc8), False


def resolve(
    name_or_path: str | os.PathLike,
    arch: str | None = None,
    widths: tuple[int, ...] | None = None,
    progress: bool = True,
) -> Path:
    """A checkpoint to initialise ``build_model(arch, widths=widths)`` from: a path as it is, or
    published weights by name, downloaded, verified and converted once (cached).

    Names: a published FCN model (``"voc-fcn32s"``: staged training, fine-tuning), an ImageNet
    classifier (``"vgg16-caffe"``, converted for ``arch``), or ``"imagenet"`` (torchvision's VGG16,
    ``"imagenet"`` preprocessing) / ``"imagenet-caffe"`` (the Caffe VGG16 or AlexNet of the paper,
    ``"caffe"`` preprocessing), which pick the classifier for ``arch``. The weights are checked
    against the net (backbone, widths, layout) before anything is downloaded. The checkpoint's
    ``meta["preprocess"]`` names the preprocessing its weights expect.
    """
    text = os.fspath(name_or_path)
    if not is_name(text):
        return Path(text)
    if text not in INIT_NAMES:
        get(text)  # an unknown name raises, listing the known ones
    if arch is not None and arch not in BUILDERS:
        raise FcnsegError(f"unknown architecture {arch!r}; choose one of {sorted(BUILDERS)}")
    if text in INIT_NAMES:
        if arch is None:
            raise FcnsegError(
                f"{text} picks the ImageNet classifier that fits a net: give the net's arch "
                f"(`{get_command(text, 'fcn8s')}`; in Python resolve({text!r}, arch='fcn8s'))"
            )
        name = INIT_NAMES[text].get(trunk_family(arch), "")
        if not name:
            takers = [alias for alias, by_family in INIT_NAMES.items() if trunk_family(arch) in by_family]
            raise FcnsegError(
                f"{text} has no {trunk_family(arch)} classifier that fits {arch} (torchvision's AlexNet is "
                f"single-tower without LRN; fcnseg builds Caffe's layout); use {' or '.join(takers)}"
            )
    else:
        name = text
    weights = get(name)
    if weights.is_trunk:
        return _trunk_checkpoint(name, weights, arch, widths, progress)
    if arch is not None:
        _check_fits(name, weights, arch, widths)
    if not weights.is_classifier:
        return checkpoint(name, progress)
    if arch is None:
        raise FcnsegError(
            f"{name} is an ImageNet classifier: give the arch to convert it for "
            f"(`{get_command(name, weights.starts)}`)"
        )
    out = _checkpoint_path(name, arch)
    if not out.is_file():
        original = fetch(name, progress)
        _note(progress, f"converting {original.name} for {arch} -> {out}")
        from fcnseg.weights.imagenet import fcn_from_imagenet, ssd_from_imagenet  # protobuf, to convert only

        model = (
            ssd_from_imagenet(original, arch=arch) if arch in DETECTORS else fcn_from_imagenet(arch, original)
        )
        model.meta["weights"] = name
        save_checkpoint(model, out)
    return out


def _trunk_checkpoint(
    name: str, weights: Weights, arch: str | None, widths: tuple[int, ...] | None, progress: bool
) -> Path:
    """A published trunk in ``arch``'s net (its other layers fresh), converted once and cached."""
    takers = TRUNKS[weights.arch]
    if arch not in takers:
        raise FcnsegError(
            f"{name} is the trunk that {' and '.join(takers)} start from, not {arch or 'a net'} "
            f"(`{get_command(name, takers[0])}`)"
        )
    if widths is not None and tuple(widths) != tuple(weights.widths):
        raise FcnsegError(
            f"{name} has widths {tuple(weights.widths)}; a net of widths {tuple(widths)} cannot take its weights"
        )
    out = _checkpoint_path(name, arch)
    if not out.is_file():
        original = fetch(name, progress)
        _note(progress, f"converting {original.name} for {arch} -> {out}")
        from fcnseg.weights.caffe import load_caffe_trunk  # the protobuf schema, to convert only

        model = load_caffe_trunk(original, arch, weights.widths)
        model.meta.update(preprocess=weights.preprocess, weights=name)
        save_checkpoint(model, out)
    return out


def is_name(name_or_path: str | os.PathLike) -> bool:
    """Whether to read ``name_or_path`` as a weights name: a published name, or no existing file
    and no path-like characters (``/``, ``.``), so that a typo meets the list of known names."""
    text = os.fspath(name_or_path)
    if text in WEIGHTS or text in INIT_NAMES:
        return True
    return not Path(text).exists() and not any(c in text for c in ("/", os.sep, "."))


def _check_fits(name: str, weights: Weights, arch: str, widths: tuple[int, ...] | None) -> None:
    """Refuse, before any download, weights that cannot fill the net ``build_model(arch, widths)``."""
    family = trunk_family(arch)
    if weights.family != family:
        raise FcnsegError(f"{name} holds a {weights.family} backbone; {arch} is built on {family}")
    if weights.options and weights.is_classifier:
        layout = ", ".join(f"{k}={v}" for k, v in weights.options)
        raise FcnsegError(
            f"{name} fits {arch} only when built with widths {tuple(weights.widths)} and {layout} "
            "(torchvision's single-tower layout), not the default layout of the net to initialise "
            "(Caffe's two-tower AlexNet with LRN); use imagenet-caffe (the Caffe AlexNet, preprocess caffe)"
        )
    default = SSD300_WIDTHS if arch in DETECTORS else _FAMILY_WIDTHS[family]
    wanted = tuple(widths) if widths is not None else default
    if wanted != tuple(weights.widths):
        raise FcnsegError(
            f"{name} has widths {tuple(weights.widths)}; a net of widths {wanted} cannot take its weights "
            "(narrow nets start from scratch, or from a checkpoint of the same widths)"
        )
