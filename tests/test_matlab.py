"""The MAT v5 reader against files from the test-side writer: each class, both byte orders, zlib."""

import numpy as np
import pytest
from mat_writer import Sparse, Stored, write_mat

from fcnseg.data.matlab import MatReadError, load_label_map, load_mat


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_round_trip_of_every_supported_class(tmp_path, compress, endian):
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 21, size=(5, 7)).astype(np.uint8)
    boundary = np.zeros((5, 7), dtype=bool)
    boundary[1, 2] = boundary[4, 6] = True
    variables = {
        "GTcls": {"Segmentation": seg, "Boundaries": [Sparse(boundary), None], "Name": "cat"},
        "S": Stored(np.array([[0.0, 1.0, 33.0], [2.0, 5.0, 0.0]]), "u1"),
        "depth": rng.integers(0, 65535, size=(3, 4)).astype(np.uint16),
        "f": np.array([[1.5, -2.25]], dtype=np.float32),
        "z": np.array([[1 + 2j, -3j]]),
        "i64": np.array([[-(2**40)]], dtype=np.int64),
        "mask": np.array([[True, False], [False, True]]),
        "volume": np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        "names": ["sky", "tree", None],
        "weights": Sparse(np.array([[0.0, 2.5], [0.0, 0.0], [-1.0, 0.0]])),
    }
    path = tmp_path / "all.mat"
    write_mat(path, variables, compress=compress, endian=endian)

    mat = load_mat(path)

    gt = mat["GTcls"]
    assert gt["Segmentation"].dtype == np.uint8
    np.testing.assert_array_equal(gt["Segmentation"], seg)
    assert gt["Name"] == "cat"
    cells = gt["Boundaries"]
    assert cells.shape == (1, 2) and cells.dtype == object
    assert cells[0, 0].dtype == bool
    np.testing.assert_array_equal(cells[0, 0], boundary)
    assert cells[0, 1].shape == (0, 0)
    assert mat["S"].dtype == np.float64  # class double though stored as uint8
    np.testing.assert_array_equal(mat["S"], [[0, 1, 33], [2, 5, 0]])
    np.testing.assert_array_equal(mat["depth"], variables["depth"])
    assert mat["f"].dtype == np.float32
    np.testing.assert_array_equal(mat["f"], [[1.5, -2.25]])
    np.testing.assert_array_equal(mat["z"], [[1 + 2j, -3j]])
    assert mat["i64"][0, 0] == -(2**40)
    np.testing.assert_array_equal(mat["mask"], [[True, False], [False, True]])
    np.testing.assert_array_equal(mat["volume"], variables["volume"])
    assert list(mat["names"][0, :2]) == ["sky", "tree"]
    np.testing.assert_array_equal(mat["weights"], [[0, 2.5], [0, 0], [-1, 0]])


def test_only_the_requested_variables_are_decoded(tmp_path):
    path = tmp_path / "a.mat"
    write_mat(path, {"LabelMap": np.ones((2, 2), dtype=np.uint16), "other": "x"}, compress=True)
    assert list(load_mat(path, ["LabelMap"])) == ["LabelMap"]


def test_v73_file_gets_a_resave_hint(tmp_path):
    path = tmp_path / "seg.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 2024 HDF5 schema"
    path.write_bytes(header.ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(MatReadError, match=r"v7\.3.*seg\.mat.*-v7"):
        load_mat(path)


def test_not_a_mat_file_and_truncated_file_name_the_file(tmp_path):
    bogus = tmp_path / "bogus.mat"
    bogus.write_bytes(b"hello")
    with pytest.raises(MatReadError, match="bogus.mat"):
        load_mat(bogus)
    good = tmp_path / "cut.mat"
    write_mat(good, {"S": np.zeros((20, 20))})
    good.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(MatReadError, match=r"cut\.mat.*truncated"):
        load_mat(good)


def test_label_map_must_be_a_2d_array_of_whole_numbers(tmp_path):
    path = tmp_path / "labels.mat"
    write_mat(
        path,
        {
            "S": np.array([[1.0, 2.0], [3.0, 4.0]]),
            "cells": ["a", "b"],
            "half": np.array([[0.5, 1.0]]),
            "GTcls": {"Boundaries": np.zeros((2, 2))},
        },
    )
    labels = load_label_map(path, "S")
    assert labels.dtype == np.int64 and labels.tolist() == [[1, 2], [3, 4]]
    for args, message in [
        (("cells",), r"labels\.mat: expected variable 'cells' to be a 2-D numeric array"),
        (("missing",), r"labels\.mat: expected variable 'missing' to be a 2-D numeric array"),
        (("half",), r"labels\.mat: variable 'half' holds values that are not whole numbers"),
        (("GTcls", "Segmentation"), r"labels\.mat: expected a struct GTcls with a field Segmentation"),
    ]:
        with pytest.raises(MatReadError, match=message):
            load_label_map(path, *args)
