"""The faces ask the task: ``fcnseg predict``, ``evaluate``, ``info`` and ``serve`` write, score and
describe each task's nets by the task's own methods, and a task refuses what it cannot give."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.cli import main
from fcnseg.cli.demo import DEMOS
from fcnseg.infer.detect import detect_images, detection_records
from fcnseg.tasks import TASKS, Task, get_task, task_of
from fcnseg.tasks.common import InferenceOptions
from fcnseg.tasks.edges import grey_map, predict_map

TINY_SIDES = (4, 8, 8, 8, 8)
TINY_SSD = (4, 8, 8, 16, 16, 16)
ARCHS = {"fcn8s": (4, 8, 8, 16, 16, 32), "hed": TINY_SIDES, "ssd300": TINY_SSD}
NAMES = ["background", "disc", "square", "triangle", "ring", "bar"]


def write_image(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


@pytest.fixture(scope="module")
def nets():
    """A seeded net of each task the page shows (random weights), with class names where it has classes."""
    torch.manual_seed(0)
    segmentation = tiny_fcn(num_classes=len(NAMES))
    segmentation.meta = {"class_names": NAMES, "preprocess": "caffe"}
    ssd = fcnseg.build_model("ssd300", len(NAMES), widths=TINY_SSD).eval()
    ssd.meta = {"class_names": NAMES, "preprocess": "caffe"}
    return {
        "segmentation": segmentation,
        "edges": fcnseg.build_model("hed", widths=TINY_SIDES).eval(),
        "skeleton": fcnseg.build_model("fsds", widths=TINY_SIDES).eval(),
        "detection": ssd,
    }


@pytest.mark.parametrize("name", TASKS)
def test_every_task_answers_all_the_protocol_asks(name):
    task = get_task(name)
    members = [m for m in (*vars(Task), *Task.__annotations__) if not m.startswith("_")]
    assert {"predict_images", "write_prediction", "page_view", "describe_net", "measure"} <= set(members)
    assert [m for m in members if not hasattr(task, m)] == []
    assert task.name == name
    if name in DEMOS:
        assert callable(task.synthetic) and callable(task.sample_figure)


@pytest.mark.parametrize("name", ["edges", "skeleton", "detection"])
def test_a_net_without_refinements_refuses_them_all_at_once(nets, name):
    options = InferenceOptions(probs=True, tta_scales=(1.0, 1.5), crf=True)
    with pytest.raises(ValueError) as refused:
        task_of(nets[name]).check_options(nets[name], options, "net.pt")
    assert str(refused.value) == (
        f"--probs, --tta-scales, --crf: only for segmentation nets of one output; net.pt is a net of the {name} task"
    )
    task_of(nets[name]).check_options(nets[name], InferenceOptions(overlay=True, min_score=0.1), "net.pt")


def test_each_task_says_what_its_nets_predict_and_write(nets):
    options = InferenceOptions(overlay=True, overlay_format="png")
    said = {
        name: (task.predicts(net), task.prediction_suffixes(net, options), task.predicted(net))
        for name, net in nets.items()
        for task in [task_of(net)]
    }
    assert said == {
        "segmentation": ("6 classes", [".png", "_overlay.png"], "segmented"),
        "edges": ("edges", [".png", "_overlay.png"], "drew edge maps of"),
        "skeleton": ("skeleton", [".png", "_overlay.png"], "drew skeleton maps of"),
        "detection": ("6 classes", [".json", "_boxes.png"], "found boxes in"),
    }


def test_info_describes_each_net_at_its_design_size():
    with torch.device("meta"):  # as fcnseg info builds them: shapes only
        nets = {arch: fcnseg.build_model(arch, widths=widths) for arch, widths in ARCHS.items()}
    sizes = {arch: task_of(net).describe_net(net).cost.input_shape for arch, net in nets.items()}
    assert sizes == {"fcn8s": (3, 500, 500), "hed": (3, 500, 500), "ssd300": (3, 300, 300)}
    described = task_of(nets["hed"]).describe_net(nets["hed"], (64, 48))
    assert described.predicts == "edges, 6 outputs" and described.outputs == [
        ("(output)", "sides, then fused", "6x64x48")
    ]


@pytest.mark.parametrize("name", ["edges", "skeleton"])
def test_predict_batches_edge_maps_and_writes_what_the_net_draws(nets, name, tmp_path, capsys):
    weights = fcnseg.save_checkpoint(nets[name], tmp_path / f"{name}.pt")
    images = [write_image(tmp_path / "in" / f"{stem}.png", 26, 31, seed) for seed, stem in enumerate("ab")]
    out = tmp_path / "out"
    args = [
        "predict",
        str(weights),
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--overlay",
    ]
    assert main(args) == 0
    assert f"drew {get_task(name).noun} maps of 2 of 2 images into {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg"]
    for stem, image in zip("ab", images, strict=True):
        written = np.asarray(Image.open(out / f"{stem}.png"), dtype=int)
        alone = grey_map(predict_map(nets[name], image)).astype(int)  # one image per forward pass
        assert written.shape == (26, 31) and np.abs(written - alone).max() <= 1


def test_predict_writes_a_detectors_boxes_as_detect_images_finds_them(nets, tmp_path, capsys):
    weights = fcnseg.save_checkpoint(nets["detection"], tmp_path / "ssd.pt")
    image = write_image(tmp_path / "in" / "shapes.png", 40, 52, 3)
    out = tmp_path / "out"
    args = ["predict", str(weights), str(tmp_path / "in"), "--out", str(out), "--overlay-format", "png"]
    assert main([*args, "--min-score", "0"]) == 0
    assert "found boxes in 1 of 1 images" in capsys.readouterr().out
    written = json.loads((out / "shapes.json").read_text())
    found = detect_images(nets["detection"], [image])[0]
    assert (written["width"], written["height"]) == (52, 40) and len(written["detections"]) > 0
    assert written["detections"] == detection_records(found, NAMES)
    assert Image.open(out / "shapes_boxes.png").size == (52, 40)


def test_test_time_augmentation_alone_writes_no_probabilities(tmp_path):
    model = tiny_fcn(num_classes=4)
    weights = fcnseg.save_checkpoint(model, tmp_path / "tiny.pt")
    image = write_image(tmp_path / "x.png", 21, 26, 0)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(out), "--tta-flip"]) == 0
    assert [p.name for p in out.iterdir()] == ["x.png"]
    labels = fcnseg.predict(model, image, tta_flip=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), labels)


def test_evaluate_names_the_task_and_the_data_sets_it_scores(nets, tmp_path, capsys):
    segmentation = fcnseg.save_checkpoint(nets["segmentation"], tmp_path / "seg.pt")
    assert main(["evaluate", str(segmentation), "synthetic", "--images", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{segmentation} (segmentation) on synthetic (2 images)\npixel acc. |")
    assert main(["evaluate", str(segmentation), str(tmp_path), "--dataset", "bsds500"]) == 2
    assert capsys.readouterr().err == (
        f"fcnseg evaluate: error: {segmentation} is a net of the segmentation task: give --dataset, one of "
        "synthetic, folder, voc, sbd, nyud, siftflow, context, not bsds500\n"
    )
    detector = fcnseg.save_checkpoint(nets["detection"], tmp_path / "ssd.pt")
    assert main(["evaluate", str(detector), str(tmp_path)]) == 2
    assert "ssd.pt is a net of the detection task: give --dataset, one of synthetic, voc, not folder" in (
        capsys.readouterr().err
    )
    hed = fcnseg.save_checkpoint(nets["edges"], tmp_path / "hed.pt")
    assert main(["evaluate", str(hed), "synthetic", "--crf"]) == 2
    assert capsys.readouterr().err == (
        f"fcnseg evaluate: error: --crf: only for segmentation nets of one output; {hed} is a net of the "
        "edges task\n"
    )


def test_a_detector_scored_on_synthetic_data_lists_each_class_AP(nets, tmp_path, capsys):
    detector = fcnseg.save_checkpoint(nets["detection"], tmp_path / "ssd.pt")
    assert main(["evaluate", str(detector), "synthetic", "--images", "2", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["class_names"] == NAMES and len(metrics["ap07"]) == len(NAMES)
    assert 0 <= metrics["map07"] <= 1
