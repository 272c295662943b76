"""Every reader loads a damaged file or refuses it with an ``FcnsegError``: never another exception.

Each test feeds seeded mutants of a valid file (``fuzzing.py``: overwritten and flipped bytes,
truncations, deletions, insertions, splices) to one reader. Mutations aim at a file's structure
(headers, field tags, lengths, names) rather than its bulk values, where a change only changes
a weight or a pixel. Data folders are fuzzed by their layout (files missing, misnamed, empty,
damaged, of the wrong kind), and ``fcnseg serve`` by the multipart bodies it is sent, which must
never get a 5xx. ``benchmarks/soak_fuzz.py`` runs the same with many more cases.
"""

import io
import json
import random
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_reference import _varint
from fuzzing import check_all, fuzz, mutants, scaled
from mat_writer import every_kind, write_mat
from PIL import Image
from starlette.testclient import TestClient
from tiny_nets import tiny_fcn

import fcnseg
from fcnseg.cli.train import load_recipe
from fcnseg.data.detection import read_voc_annotation
from fcnseg.data.folder import FolderSegmentation
from fcnseg.data.images import read_image, read_label
from fcnseg.data.matlab import load_mat
from fcnseg.errors import FcnsegError
from fcnseg.serve import app as web
from fcnseg.train.config import TrainConfig
from fcnseg.train.optim import make_optimizer
from fcnseg.train.run_folder import RunFolder
from fcnseg.train.trainer import train
from fcnseg.weights.caffe_format import read_caffemodel
from fcnseg.weights.checkpoint import load_checkpoint, save_checkpoint

RECIPES = Path(__file__).parent.parent / "recipes"


def _caffe_structure(model: bytes) -> list[int]:
    """Offsets of a Caffe model outside its blobs' values, and the first and last bytes of those."""
    values = []  # (start, end) of each BlobProto.data payload

    def walk(buf: bytes, base: int, depth: int) -> None:
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(buf, i)
            elif wire == 2:
                length, start = _varint(buf, i)
                i = start + length
                if depth == 2 and number == 5:
                    values.append((base + start, base + i))
                elif (depth, number) in ((0, 100), (0, 2), (1, 7), (1, 6)):  # layers, then blobs (V2, V1)
                    walk(buf[start:i], base + start, depth + 1)
            else:
                i += 8 if wire == 1 else 4

    walk(model, 0, 0)
    offsets, previous = [], 0
    for start, end in values:
        offsets += [*range(previous, start + 8), *range(end - 8, end)]
        previous = end
    return offsets + list(range(previous, len(model)))


@pytest.mark.parametrize(("name", "count"), [("fcn8s", 500), ("fcn8s_v1layers", 200)])
def test_caffe_reader(caffe_fixtures, tmp_path, name, count):
    data = (caffe_fixtures / f"{name}.caffemodel").read_bytes()
    hot = _caffe_structure(data)
    assert fuzz(read_caffemodel, tmp_path / "m.caffemodel", data, 1, count, hot) == []


def test_caffe_model_through_load(caffe_fixtures, tmp_path):
    """Past the reader: architecture and widths inferred from damaged layers, then the weights copied."""
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
    assert fuzz(fcnseg.load, tmp_path / "m.caffemodel", data, 2, 300, _caffe_structure(data)) == []


def _outside_tensors(path: Path) -> list[int]:
    """Offsets of a torch zip outside its tensors' values (but their first and last 4 bytes)."""
    data = path.read_bytes()
    tensors = []  # the zip entries that hold tensor values
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if "/data/" in entry.filename:
                name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
                start = entry.header_offset + 30 + name_length + extra_length
                tensors.append((start + 4, start + entry.compress_size - 4))
    return [i for i in range(len(data)) if not any(a <= i < b for a, b in tensors)]


def test_checkpoint_reader(tmp_path):
    model = fcnseg.build_model("fcn8s", 3, widths=(2, 2, 2, 2, 2, 4))
    model.meta = {"preprocess": "imagenet", "class_names": ["a", "b", "c"]}
    path = save_checkpoint(model, tmp_path / "good.pt")
    assert fuzz(load_checkpoint, tmp_path / "m.pt", path.read_bytes(), 3, 250, _outside_tensors(path)) == []


def test_training_state_reader(tmp_path):
    """A run's last.pt as --resume reads it: the state checked, the settings read, all of it restored."""
    config = TrainConfig(
        arch="fcn32s", widths=(2, 2, 2, 2, 2, 4), train_images=2, val_images=1, image_size=(32, 32),
        optimizer="sgd", momentum=0.9, max_steps=1, init=None, progress=False, out=str(tmp_path / "run"),
    )  # fmt: skip
    train(config)
    good = (tmp_path / "run" / "last.pt").read_bytes()
    model = fcnseg.build_model("fcn32s", 6, widths=(2, 2, 2, 2, 2, 4))
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    folder = RunFolder(tmp_path / "damaged")
    folder.path.mkdir()

    def resume(path: Path) -> None:
        saved = folder.read_last()
        TrainConfig.from_dict(saved["train_config"])
        folder.restore(saved, model, optimizer, scaler)

    assert fuzz(resume, folder.last, good, 10, 250, _outside_tensors(tmp_path / "run" / "last.pt")) == []
    folder.last.write_bytes(good)
    resume(folder.last)  # the fuzzing did not make the good state fail


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
IDS = np.random.default_rng(1).integers(0, 5, (12, 16), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_image_reader(tmp_path, fmt):
    data = _encoded(Image.fromarray(RGB), fmt)
    assert fuzz(read_image, tmp_path / f"m.{fmt.lower()}", data, 4, 80) == []


def test_mask_reader_and_folder_data_set(tmp_path):
    palette = Image.fromarray(IDS, "P")
    palette.putpalette(list(range(256)) * 3)
    colours = fcnseg.data.palette.pascal_palette(256)[IDS]
    assert fuzz(read_label, tmp_path / "m.png", _encoded(palette, "PNG"), 5, 150) == []
    assert fuzz(read_label, tmp_path / "m.png", _encoded(Image.fromarray(colours), "PNG"), 6, 150) == []
    # a data set reads the pair and checks sizes and class ids too
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "masks").mkdir()
    Image.fromarray(RGB).save(tmp_path / "set" / "images" / "a.png")
    mask = tmp_path / "set" / "masks" / "a.png"
    palette.save(mask)
    dataset = FolderSegmentation(tmp_path / "set", num_classes=5)
    assert fuzz(lambda _: dataset[0], mask, _encoded(palette, "PNG"), 7, 150) == []


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_mat_reader(tmp_path, compress, endian):
    path = tmp_path / "good.mat"
    write_mat(path, every_kind(IDS[:5, :7]), compress=compress, endian=endian)
    data = path.read_bytes()
    hot = list(range(116, len(data)))  # past the descriptive text of the header
    assert fuzz(load_mat, tmp_path / "m.mat", data, 8, 150, hot) == []


@pytest.mark.parametrize(
    "recipe", ["fcn-alexnet_alexnet_voc-sbd_batch20.toml", "fcn8s_vgg16-narrow_synthetic_batch4.toml"]
)
def test_recipe_reader(tmp_path, recipe):
    data = (RECIPES / recipe).read_bytes()
    assert fuzz(lambda p: TrainConfig.from_dict(load_recipe(p)), tmp_path / "r.toml", data, 9, 200) == []


VOC_XML = b"""<annotation>
  <folder>VOC2007</folder>
  <filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object>
    <name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
  </object>
  <object>
    <name>person</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>5.5</xmin><ymin>237</ymin><xmax>48</xmax><ymax>375</ymax></bndbox>
  </object>
</annotation>
"""


def test_voc_annotation_reader(tmp_path):
    target = read_voc_annotation(_written(tmp_path / "good.xml", VOC_XML))
    assert target["labels"].tolist() == [9, 15] and target["difficult"].tolist() == [False, True]
    assert fuzz(read_voc_annotation, tmp_path / "m.xml", VOC_XML, 11, 300) == []


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _layout(root: Path, rng: random.Random) -> str:
    """A random data folder in ``root`` (emptied first): images/ and masks/ (or not, or files), a few
    names in each, of good, damaged or empty images and masks of odd suffixes and sizes, a folder or
    a broken link where a file should be, a classes.txt of names, of nothing or not of text. Returns
    what it made."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    made = []
    for folder in ("images", "masks"):
        kind = rng.choices(("folder", "file", "missing"), (18, 1, 1))[0]
        if kind == "folder":
            (root / folder).mkdir()
        elif kind == "file":
            (root / folder).write_bytes(b"")
        made.append(f"{folder}: {kind}")
    for name in rng.sample(["a", "b", "sub/c", ".hidden", "d e", "f"], rng.randint(0, 5)):
        height, width = rng.randint(1, 24), rng.randint(1, 24)
        for folder, suffixes in (
            ("images", (".png", ".jpg", ".PNG", ".bmp", ".txt")),
            ("masks", (".png", ".bmp", ".jpg", ".gif")),
        ):
            if rng.random() < 0.1 or not (root / folder).is_dir():
                continue  # no partner
            path = root / folder / f"{name}{rng.choice(suffixes)}"
            path.parent.mkdir(parents=True, exist_ok=True)
            content = rng.choices(
                ("good", "other size", "damaged", "empty", "folder", "link"), (12, 2, 2, 1, 1, 1)
            )[0]
            if content == "folder":
                path.mkdir(exist_ok=True)
            elif content == "link":
                path.symlink_to(root / "nowhere")
            elif content == "empty":
                path.write_bytes(b"")
            else:
                size = (height + (content == "other size"), width)
                if folder == "images":
                    array = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (*size, 3), np.uint8)
                    picture = Image.fromarray(array)
                else:
                    ids = np.array(rng.choices([0, 1, 2, 3, 7, 255], k=size[0] * size[1]), np.uint8)
                    picture = Image.fromarray(ids.reshape(size), "P" if rng.random() < 0.8 else "L")
                fmt = {".jpg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}.get(path.suffix.lower(), "PNG")
                if fmt == "JPEG" and picture.mode == "P":
                    picture = picture.convert("L")
                data = _encoded(picture, fmt)
                path.write_bytes(data[: len(data) // 2] if content == "damaged" else data)
            made.append(f"{path.relative_to(root)}: {content}")
    classes = rng.choices(("none", "names", "empty", "binary", "folder"), (6, 4, 1, 1, 1))[0]
    if classes == "names":
        (root / "classes.txt").write_text(
            "\n".join(["bg", "one", "two", "three"][: rng.randint(1, 4)]) + "\n\n"
        )
    elif classes == "empty":
        (root / "classes.txt").write_text(" \n")
    elif classes == "binary":
        (root / "classes.txt").write_bytes(b"bg\n\xff\xfeone\n")
    elif classes == "folder":
        (root / "classes.txt").mkdir()
    return ", ".join([*made, f"classes.txt: {classes}"])


def test_data_folder_layouts(tmp_path):
    """A data folder loads, every pair of it, or is refused with an error that names what is wrong."""
    rng = random.Random(12)
    root = tmp_path / "data"

    def open_folder(num_classes: int | None) -> str | None:
        try:
            dataset = FolderSegmentation(root, num_classes=num_classes)
            for index in range(len(dataset)):
                dataset[index]
        except FcnsegError:
            return None
        except FileNotFoundError as error:  # a missing images/ or masks/ folder
            return None if "expected layout" in str(error) else f"FileNotFoundError: {error}"
        return None

    cases = ((f"layout {i} ({_layout(root, rng)})", rng.choice([None, 8])) for i in range(scaled(200)))
    assert check_all(open_folder, cases) == []


def _multipart(image: bytes, boundary: str = "fuzzb0undary") -> tuple[bytes, list[int]]:
    """A form with the image and a text field; the offsets of its structure (all but the image's pixels)."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="shapes.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--{boundary}--\r\n'
    )
    body = head + image + tail.encode()
    hot = [*range(len(head) + 64), *range(len(head) + len(image) - 16, len(body))]
    return body, hot


def test_multipart_bodies_never_get_a_5xx():
    """fcnseg serve on damaged uploads (and content types): a label map of the image's size, or a JSON
    4xx that says why; never a 5xx."""
    image = fcnseg.data.synthetic.make_sample(4, (20, 28))[0]
    body, hot = _multipart(_encoded(Image.fromarray(image), "PNG"))
    client = TestClient(
        web.create_app(web.Predictor(tiny_fcn(num_classes=4)), max_upload_bytes=4000),
        raise_server_exceptions=False,
    )
    rng = random.Random(13)
    types = ["multipart/form-data; boundary=fuzzb0undary"] * 12 + [
        "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "x" * 300,
        "multipart/form-data; boundary=other", "text/plain", "",
    ]  # fmt: skip

    def post(case: tuple[bytes, str]) -> str | None:
        data, content_type = case
        response = client.post("/segment", content=data, headers={"content-type": content_type})
        if response.status_code == 200:
            labels = Image.open(io.BytesIO(response.content))
            return (
                None if labels.mode == "P" and labels.size[0] * labels.size[1] > 0 else f"200 with {labels}"
            )
        if response.status_code not in (400, 413) or response.headers["content-type"] != "application/json":
            return f"{response.status_code} ({response.headers.get('content-type')}): {response.text[:200]}"
        return None if isinstance(json.loads(response.content).get("error"), str) else response.text[:200]

    cases = (
        (f"seed 13 mutant {i} ({how})", (mutant, rng.choice(types)))
        for i, (how, mutant) in enumerate(mutants(body, 13, scaled(300), hot))
    )
    assert check_all(post, cases) == []
    assert (
        post((body, types[0])) is None
        and client.post("/segment", content=body, headers={"content-type": types[0]}).status_code == 200
    )
