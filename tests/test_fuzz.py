"""Every reader loads a damaged file or refuses it with an ``FcnsegError``: never another exception.

Each test feeds seeded mutants of a valid file (``fuzzing.py``: overwritten and flipped bytes,
truncations, deletions, insertions, splices) to one reader. Mutations aim at a file's structure
(headers, field tags, lengths, names) rather than its bulk values, where a change only changes
a weight or a pixel.
"""

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from caffe_reference import _varint
from fuzzing import fuzz
from mat_writer import Sparse, Stored, write_mat
from PIL import Image

import fcnseg
from fcnseg.cli.train import load_recipe
from fcnseg.data.folder import FolderSegmentation
from fcnseg.data.images import read_image, read_label
from fcnseg.data.matlab import load_mat
from fcnseg.train.config import TrainConfig
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


def test_checkpoint_reader(tmp_path):
    model = fcnseg.build_model("fcn8s", 3, widths=(2, 2, 2, 2, 2, 4))
    model.meta = {"preprocess": "imagenet", "class_names": ["a", "b", "c"]}
    path = save_checkpoint(model, tmp_path / "good.pt")
    data = path.read_bytes()
    tensors = []  # the zip entries that hold tensor values
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if "/data/" in entry.filename:
                name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
                start = entry.header_offset + 30 + name_length + extra_length
                tensors.append((start + 4, start + entry.compress_size - 4))
    hot = [i for i in range(len(data)) if not any(a <= i < b for a, b in tensors)]
    assert fuzz(load_checkpoint, tmp_path / "m.pt", data, 3, 250, hot) == []


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
    seg = IDS[:5, :7]
    variables = {
        "GTcls": {"Segmentation": seg, "Boundaries": [Sparse(seg == 1), None], "Name": "cat"},
        "S": Stored(np.array([[0.0, 1.0, 33.0], [2.0, 5.0, 0.0]]), "u1"),
        "z": np.array([[1 + 2j, -3j]]),
        "names": ["sky", "tree", None],
        "weights": Sparse(np.array([[0.0, 2.5], [0.0, 0.0], [-1.0, 0.0]])),
    }
    path = tmp_path / "good.mat"
    write_mat(path, variables, compress=compress, endian=endian)
    data = path.read_bytes()
    hot = list(range(116, len(data)))  # past the descriptive text of the header
    assert fuzz(load_mat, tmp_path / "m.mat", data, 8, 150, hot) == []


@pytest.mark.parametrize(
    "recipe", ["fcn-alexnet_alexnet_voc-sbd_batch20.toml", "fcn8s_vgg16-narrow_synthetic_batch4.toml"]
)
def test_recipe_reader(tmp_path, recipe):
    data = (RECIPES / recipe).read_bytes()
    assert fuzz(lambda p: TrainConfig.from_dict(load_recipe(p)), tmp_path / "r.toml", data, 9, 200) == []
