"""``fcnseg predict`` over files, folders and globs: outputs, naming, and every kind of bad input."""

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.cli import main
from fcnseg.cli import predict as cli_predict
from fcnseg.data.palette import pascal_palette
from fcnseg.infer import predict as predict_module
from fcnseg.infer.predict import predict


def tiny(num_classes: int = 4) -> fcnseg.FCN:
    model = tiny_fcn(num_classes=num_classes)
    model.meta = {"class_names": ["bg", "a", "b", "c"][:num_classes], "preprocess": "caffe"}
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    fcnseg.save_checkpoint(tiny(), path)
    return path


def write(path: Path, height: int, width: int, seed: int = 0, **save) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path, **save)
    return image


def test_segments_files_folders_and_globs(weights, tmp_path, capsys):
    a = write(tmp_path / "in" / "a.png", 30, 40, 1)
    b = write(tmp_path / "in" / "b.png", 30, 40, 2)
    c = write(tmp_path / "more" / "c.png", 17, 23, 3)
    write(tmp_path / "more" / "d.bmp", 17, 23, 4)
    (tmp_path / "in" / "notes.txt").write_text("not an image, and not picked up from a folder")
    out = tmp_path / "out"
    rc = main(["predict", str(weights), str(tmp_path / "in"), str(tmp_path / "more" / "c.png"),
               str(tmp_path / "more" / "*.bmp"), "--out", str(out), "--overlay", "--probs"])  # fmt: skip
    assert rc == 0
    assert "segmented 4 of 4 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}{x}" for s in "abcd" for x in (".png", "_overlay.jpg", "_probs.npy")
    )
    model = tiny()
    for stem, image in (("a", a), ("b", b), ("c", c)):
        label_png = Image.open(out / f"{stem}.png")
        assert label_png.mode == "P"
        np.testing.assert_array_equal(np.asarray(label_png.getpalette()[:12]), pascal_palette(4).reshape(-1))
        labels, probs = predict(model, image, return_probs=True)
        np.testing.assert_array_equal(np.asarray(label_png), labels)
        saved = np.load(out / f"{stem}_probs.npy")
        assert saved.dtype == np.float16 and saved.shape == (4, *image.shape[:2])
        np.testing.assert_allclose(saved, probs, atol=1e-3)
        assert Image.open(out / f"{stem}_overlay.jpg").size == label_png.size


def test_options_reach_the_api(weights, tmp_path):
    image = write(tmp_path / "x.png", 21, 26)
    rc = main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--probs",
               "--probs-dtype", "float32", "--tta-flip", "--tta-scales", "0.75,1.25", "--device", "cpu",
               "--max-memory", "1G", "--overlay", "--overlay-format", "png"])  # fmt: skip
    assert rc == 0
    labels, probs = predict(tiny(), image, return_probs=True, tta_flip=True, tta_scales=(0.75, 1.25))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), labels)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x_probs.npy"), probs)
    assert (tmp_path / "out" / "x_overlay.png").is_file()


def test_precision_reaches_the_api(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module, "cpu_has_native_bf16", lambda: True)
    image = write(tmp_path / "x.png", 21, 26)
    assert main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(tmp_path / "out"),
                 "--probs", "--probs-dtype", "float32", "--precision", "bf16"]) == 0  # fmt: skip
    labels, probs = predict(tiny(), image, return_probs=True, precision="bf16")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), labels)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x_probs.npy"), probs)
    assert not np.array_equal(probs, predict(tiny(), image, return_probs=True)[1])


def test_same_stems_never_clobber(weights, tmp_path):
    write(tmp_path / "a" / "x.png", 12, 12, 1)
    write(tmp_path / "b" / "x.png", 12, 12, 2)
    write(tmp_path / "a" / "x.jpg", 12, 12, 3)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a__x_jpg.png", "a__x_png.png", "b__x.png"]


def test_output_stems():
    files = [Path("/d/a/x.jpg"), Path("/d/b/x.jpg"), Path("/d/y.png"), Path("/d/y_overlay.png")]
    assert cli_predict.output_stems(files, [".png"]) == ["a__x", "b__x", "y", "y_overlay"]
    # y's overlay and the label of the input y_overlay would both be y_overlay.png
    assert cli_predict.output_stems(files, [".png", "_overlay.png"]) == ["a__x", "b__x", "y", "y_overlay-2"]


def test_bad_and_unusual_images(weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "text.jpg").write_text("this is not a JPEG")
    write(folder / "full.jpg", 64, 64, quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:300])
    (folder / "full.jpg").unlink()
    write(folder / "tiny.png", 1, 1)
    Image.fromarray(np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).save(folder / "deep.png")
    Image.fromarray(write(tmp_path / "rgb.png", 16, 18)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(write(tmp_path / "rgb2.png", 15, 19)).convert("P").save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # a viewer rotates it 90 degrees counter-clockwise
    write(folder / "rotated.jpg", 10, 25, exif=exif)
    out = tmp_path / "out"
    rc = main(["predict", str(weights), str(folder), str(tmp_path / "missing.png"), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "segmented 5 of 7 images" in captured.out
    assert "3 input(s) failed" in captured.err
    for name in ("text.jpg", "truncated.jpg", "missing.png"):
        assert name in captured.err
    sizes = {p.stem: Image.open(p).size for p in out.iterdir()}
    assert sizes == {
        "tiny": (1, 1),
        "deep": (30, 20),
        "cmyk": (18, 16),
        "palette": (19, 15),
        "rotated": (10, 25),
    }


def test_refuses_an_out_folder_that_is_an_input_folder(weights, tmp_path, capsys):
    data = tmp_path / "data"
    write(data / "x.jpg", 12, 12)
    (tmp_path / "link").symlink_to(data)
    for inputs, out, named in [
        ([data], data, f"--out {data} is the input folder {data}:"),
        ([data / "x.jpg"], data, f"--out {data} is the input folder {data}:"),  # the folder of a file
        ([str(data / "*.jpg")], tmp_path / "link", f"--out {tmp_path / 'link'} is the input folder {data} "),
        (
            [tmp_path / "link"],
            data / ".." / "data",
            f"is the input folder {tmp_path / 'link'} (both are {data})",
        ),
    ]:
        assert main(["predict", str(weights), *map(str, inputs), "--out", str(out)]) == 2
        assert named in capsys.readouterr().err
        assert sorted(p.name for p in data.iterdir()) == ["x.jpg"]  # nothing written


def test_refuses_an_out_folder_that_would_overwrite_the_weights(weights, tmp_path, capsys):
    write(tmp_path / "in" / "x.png", 12, 12)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_bytes(weights.read_bytes())  # a checkpoint is known by its content
    before = (tmp_path / "out" / "x.png").read_bytes()
    args = ["predict", str(tmp_path / "out" / "x.png"), str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "would overwrite input file(s)" in capsys.readouterr().err
    assert (tmp_path / "out" / "x.png").read_bytes() == before


def test_unwritable_output_folder(weights, tmp_path, capsys):
    write(tmp_path / "x.png", 12, 12)
    (tmp_path / "file").write_text("a file where the folder should go")
    assert (
        main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(tmp_path / "file" / "out")]) == 2
    )
    assert f"output folder {tmp_path / 'file' / 'out'} cannot be written" in capsys.readouterr().err


def test_unreadable_folder_is_reported_and_others_still_run(tmp_path, monkeypatch):
    write(tmp_path / "ok" / "x.png", 8, 8)
    (tmp_path / "locked").mkdir()
    iterdir = Path.iterdir

    def guarded(self):
        if self.name == "locked":  # chmod cannot stop root, who runs CI
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", guarded)
    files, problems = cli_predict.collect_inputs(
        [str(tmp_path / "locked"), str(tmp_path / "ok"), "nope*.png"]
    )
    assert files == [tmp_path / "ok" / "x.png"]
    assert problems == [
        f"{tmp_path / 'locked'}: cannot read folder (Permission denied)",
        "nope*.png: no file matches",
    ]


def test_too_many_classes_for_a_palette(tmp_path, capsys):
    weights = fcnseg.save_checkpoint(tiny(300), tmp_path / "many.pt")
    write(tmp_path / "x.png", 8, 8)
    assert main(["predict", str(weights), str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]) == 2
    assert "has 300 classes but a palette PNG holds at most 256" in capsys.readouterr().err


def test_bad_options(weights, tmp_path, capsys):
    write(tmp_path / "x.png", 8, 8)
    with pytest.raises(SystemExit):
        main(["predict", str(weights), str(tmp_path / "x.png"), "--out", "o", "--tta-scales", "1,zero"])
    assert "expected numbers like 0.75,1,1.25" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(weights), str(tmp_path / "x.png"), "--out", "o", "--max-memory", "lots"])
    assert "cannot read memory size" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["predict", str(weights), str(tmp_path / "x.png"), "--out", "o", "--device", "cuda"])
        assert "device 'cuda' is not available here: torch finds no CUDA device" in capsys.readouterr().err


def test_max_megapixels_refuses_larger_images_and_zero_lifts_the_limit(weights, tmp_path, capsys):
    write(tmp_path / "in" / "big.png", 40, 50)
    write(tmp_path / "in" / "small.png", 8, 8)
    args = ["predict", str(weights), str(tmp_path / "in"), "--max-megapixels", "0.001"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    captured = capsys.readouterr()
    assert "big.png: 50x40 = 0.002 MP is over the 0.001 MP limit" in captured.err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["small.png"]
    assert main([*args[:-1], "0", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["big.png", "small.png"]


def test_a_full_disk_stops_saying_so_and_keeps_what_was_written(weights, tmp_path, monkeypatch, capsys):
    """The disk fills while the third image's label map is flushed: two images' files stay, whole."""
    images = {name: write(tmp_path / "in" / f"{name}.png", 20, 24 + i, i) for i, name in enumerate("abcde")}
    out = tmp_path / "out"
    real_fsync, flushed = os.fsync, {"files": 0}

    def fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            flushed["files"] += 1
            if flushed["files"] == 5:  # a.png, a_overlay.jpg, b.png, b_overlay.jpg, then c.png
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc = main(
        ["predict", str(weights), str(tmp_path / "in"), "--out", str(out), "--overlay", "--batch-size", "1"]
    )
    monkeypatch.undo()
    assert rc == 2
    captured = capsys.readouterr()
    assert "segmented 2 of 5 images" in captured.out
    error = captured.err.strip()
    assert error.startswith(f"fcnseg predict: error: cannot write {out / 'c.png'}: No space left on device (")
    assert f"free on the disk of {out}): stopped after 2 of 5 images; what is in {out} is whole" in error
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg"]
    for name in "ab":
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{name}.png")), predict(tiny(), images[name])
        )
        assert Image.open(out / f"{name}_overlay.jpg").size == (images[name].shape[1], 20)
