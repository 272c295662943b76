"""Caffe .caffemodel reading and writing, checked against files written by the real Caffe."""

import struct

import numpy as np
import pytest

from fcnseg.weights.caffe_format import (
    CaffeFormatError,
    CaffeLayer,
    read_blob_shapes,
    read_caffemodel,
    write_caffemodel,
)

VGG_TRUNK = {
    "conv1_1": (4, 3, 3, 3),
    "conv1_2": (4, 4, 3, 3),
    "conv2_1": (8, 4, 3, 3),
    "conv2_2": (8, 8, 3, 3),
    "conv3_1": (16, 8, 3, 3),
    "conv3_2": (16, 16, 3, 3),
    "conv3_3": (16, 16, 3, 3),
    "conv4_1": (32, 16, 3, 3),
    "conv4_2": (32, 32, 3, 3),
    "conv4_3": (32, 32, 3, 3),
    "conv5_1": (32, 32, 3, 3),
    "conv5_2": (32, 32, 3, 3),
    "conv5_3": (32, 32, 3, 3),
    "fc6": (64, 32, 7, 7),
    "fc7": (64, 64, 1, 1),
    "score_fr": (21, 64, 1, 1),
}
# Learnable layers of each fixture in file order: weight shape, and whether there is a bias.
LEARNABLE = {
    "fcn32s": {**VGG_TRUNK, "upscore": (21, 21, 64, 64)},
    "fcn16s": {
        **VGG_TRUNK,
        "upscore2": (21, 21, 4, 4),
        "score_pool4": (21, 32, 1, 1),
        "upscore16": (21, 21, 32, 32),
    },
    "fcn8s": {
        **VGG_TRUNK,
        "upscore2": (21, 21, 4, 4),
        "score_pool4": (21, 32, 1, 1),
        "upscore_pool4": (21, 21, 4, 4),
        "score_pool3": (21, 16, 1, 1),
        "upscore8": (21, 21, 16, 16),
    },
    "fcn_alexnet": {
        "conv1": (8, 3, 11, 11),
        "conv2": (16, 4, 5, 5),
        "conv3": (24, 16, 3, 3),
        "conv4": (24, 12, 3, 3),
        "conv5": (16, 12, 3, 3),
        "fc6": (64, 16, 6, 6),
        "fc7": (64, 64, 1, 1),
        "score_fr": (21, 64, 1, 1),
        "upscore": (21, 21, 63, 63),
    },
}
SEEDS = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8, "fcn_alexnet": 100}


def _read(caffe_fixtures, net):
    return read_caffemodel(caffe_fixtures / f"{net}.caffemodel")


def _by_name(layers):
    return {layer.name: layer for layer in layers}


@pytest.mark.parametrize("net", sorted(LEARNABLE))
def test_learnable_layers_match_readme_table(caffe_fixtures, net):
    layers = _read(caffe_fixtures, net)
    learnable = [layer for layer in layers if layer.blobs]
    assert [layer.name for layer in learnable] == list(LEARNABLE[net])
    for layer in learnable:
        weight_shape = LEARNABLE[net][layer.name]
        is_deconv = layer.name.startswith("upscore")
        assert layer.type == ("Deconvolution" if is_deconv else "Convolution")
        expected = [weight_shape] if is_deconv else [weight_shape, weight_shape[:1]]
        assert [b.shape for b in layer.blobs] == expected
        assert all(b.dtype == np.float32 for b in layer.blobs)
    # Caffe saves the whole net, Input and the Split layers it inserts included.
    assert layers[0].name == "input" and layers[0].type == "Input"
    assert layers[-1].name == "score" and layers[-1].type == "Crop"


@pytest.mark.parametrize("net", sorted(SEEDS))
def test_values_equal_the_readme_generator(caffe_fixtures, net):
    """Bit-exact values: the README's seeded draws, in layer order, weight before bias."""
    rs = np.random.RandomState(SEEDS[net])
    for layer in _read(caffe_fixtures, net):
        for i, blob in enumerate(layer.blobs):
            if i == 1:
                expected = rs.uniform(-0.1, 0.1, size=blob.shape)
            elif layer.type == "Deconvolution":
                c_in, _, k, _ = blob.shape
                expected = rs.normal(
                    0, np.sqrt(1 / (c_in * (k / layer.params["stride"][0]) ** 2)), blob.shape
                )
            else:
                expected = rs.normal(0, np.sqrt(2 / np.prod(blob.shape[1:])), blob.shape)
            np.testing.assert_array_equal(blob, expected.astype(np.float32), err_msg=layer.name)


def test_vgg_params(caffe_fixtures):
    layers = _by_name(_read(caffe_fixtures, "fcn32s"))
    assert layers["conv1_1"].params == {
        "num_output": 4,
        "kernel_size": (3, 3),
        "stride": (1, 1),
        "pad": (100, 100),
        "dilation": (1, 1),
        "group": 1,
        "bias_term": True,
    }
    assert layers["conv3_2"].params["pad"] == (1, 1)
    assert layers["fc6"].params["kernel_size"] == (7, 7) and layers["fc6"].params["pad"] == (0, 0)
    up = layers["upscore"].params
    assert (up["num_output"], up["kernel_size"], up["stride"]) == (21, (64, 64), (32, 32))
    assert (up["bias_term"], up["group"], up["pad"]) == (False, 1, (0, 0))
    assert layers["pool1"].params == {
        "pool": "MAX",
        "kernel_size": (2, 2),
        "stride": (2, 2),
        "pad": (0, 0),
    }
    assert layers["score"].params == {"axis": 2, "offset": (19,)}
    assert layers["relu1_1"].params == {} and layers["drop6"].type == "Dropout"


@pytest.mark.parametrize(
    ("net", "crops"),
    [
        ("fcn16s", {"score_pool4c": 5, "score": 27}),
        ("fcn8s", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    ],
)
def test_skip_net_params(caffe_fixtures, net, crops):
    layers = _by_name(_read(caffe_fixtures, net))
    for name, offset in crops.items():
        assert layers[name].params == {"axis": 2, "offset": (offset,)}
    assert layers["fuse_pool4"].params == {"operation": "SUM", "coeff": ()}
    assert layers["upscore2"].params["stride"] == (2, 2)


def test_alexnet_params(caffe_fixtures):
    layers = _by_name(_read(caffe_fixtures, "fcn_alexnet"))
    conv1 = layers["conv1"].params
    assert (conv1["kernel_size"], conv1["stride"], conv1["pad"]) == ((11, 11), (4, 4), (100, 100))
    groups = {name: layers[name].params["group"] for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert layers["conv2"].params["pad"] == (2, 2) and layers["fc6"].params["kernel_size"] == (6, 6)
    assert layers["pool5"].params["kernel_size"] == (3, 3) and layers["pool5"].params["stride"] == (2, 2)
    norm = layers["norm1"].params
    assert layers["norm1"].type == "LRN"
    assert norm == {
        "local_size": 5,
        "alpha": pytest.approx(1e-4),
        "beta": 0.75,
        "k": 1.0,
        "norm_region": "ACROSS_CHANNELS",
    }
    assert layers["upscore"].params["kernel_size"] == (63, 63) and layers["score"].params["offset"] == (18,)


def test_v1_layers_equal_v2_file(caffe_fixtures):
    v1 = _read(caffe_fixtures, "fcn8s_v1layers")
    v2 = [layer for layer in _read(caffe_fixtures, "fcn8s") if layer.blobs]
    assert [(a.name, a.type, a.params) for a in v1] == [(b.name, b.type, b.params) for b in v2]
    for a, b in zip(v1, v2, strict=True):
        assert all(x.ndim == 4 for x in a.blobs)  # legacy dims are kept as stored
        if len(a.blobs) == 2:
            assert a.blobs[1].shape == (1, 1, 1, b.blobs[1].size)
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(x.reshape(y.shape), y)


@pytest.mark.parametrize("net", ["fcn8s", "fcn_alexnet", "fcn8s_v1layers"])
def test_round_trip(caffe_fixtures, tmp_path, net):
    layers = _read(caffe_fixtures, net)
    out = tmp_path / "copy.caffemodel"
    write_caffemodel(out, layers, legacy_v1=net.endswith("v1layers"))
    again = read_caffemodel(out)
    assert [(a.name, a.type, a.params) for a in again] == [(b.name, b.type, b.params) for b in layers]
    for a, b in zip(again, layers, strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            assert x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_write_v1_from_v2_layers(caffe_fixtures, tmp_path):
    """V2 learnable layers written as V1 read back like the V1 fixture (biases become 1x1x1xN)."""
    learnable = [layer for layer in _read(caffe_fixtures, "fcn8s") if layer.blobs]
    out = tmp_path / "v1.caffemodel"
    write_caffemodel(out, learnable, legacy_v1=True)
    fixture = _read(caffe_fixtures, "fcn8s_v1layers")
    again = read_caffemodel(out)
    assert [(a.name, a.type, a.params) for a in again] == [(b.name, b.type, b.params) for b in fixture]
    for a, b in zip(again, fixture, strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            assert x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_non_square_params_round_trip(tmp_path):
    conv = {"num_output": 2, "kernel_size": (3, 5), "pad": (1, 2), "stride": 2, "bias_term": False}
    pool = {"pool": "AVE", "kernel_size": (2, 3), "stride": (1, 2), "pad": 1}
    layers = [
        CaffeLayer("c", "Convolution", [np.ones((2, 1, 3, 5), np.float32)], conv),
        CaffeLayer("p", "Pooling", [], pool),
        CaffeLayer("e", "Eltwise", [], {"operation": "SUM", "coeff": (1.0, 1.0)}),
        CaffeLayer("s", "Scale", [np.full((), 0.5, np.float32)], {"axis": 0, "num_axes": 0}),
    ]
    write_caffemodel(tmp_path / "x.caffemodel", layers)
    c, p, e, s = read_caffemodel(tmp_path / "x.caffemodel")
    assert c.params["kernel_size"] == (3, 5) and c.params["pad"] == (1, 2)
    assert c.params["stride"] == (2, 2) and c.params["bias_term"] is False
    assert p.params == {"pool": "AVE", "kernel_size": (2, 3), "stride": (1, 2), "pad": (1, 1)}
    assert e.params == {"operation": "SUM", "coeff": (1.0, 1.0)}
    assert s.params == {"axis": 0, "num_axes": 0, "bias_term": False}
    assert s.blobs[0].shape == () and s.blobs[0] == 0.5


# Hand-made protobuf wire data, for the encodings that our writer never produces.
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _net(*layers: bytes) -> bytes:
    return _len(1, b"hand") + b"".join(_len(100, layer) for layer in layers)


def _layer(name: str, blob: bytes, type_: bytes = b"Convolution") -> bytes:
    return _len(1, name.encode()) + _len(2, type_) + _len(7, blob)


def test_unpacked_double_and_legacy_blobs(tmp_path):
    unpacked = b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in (1.5, -2.0))
    shape = _len(7, _int(1, 2))  # shape { dim: 2 }, dim unpacked
    doubles = _len(8, struct.pack("<3d", 0.1, 0.2, 0.3)) + _len(7, _len(1, _varint(3)))
    legacy = _int(1, 1) + _int(2, 1) + _int(3, 1) + _int(4, 2) + _len(5, struct.pack("<2f", 3, 4))
    # Undeclared fields are skipped: an unknown number, and LayerParameter.loss_weight.
    unknown = _len(999, b"skipped") + _varint(5 << 3 | 5) + struct.pack("<f", 1.0)
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(
        _net(_layer("a", shape + unpacked) + unknown, _layer("b", doubles), _layer("c", legacy + shape))
    )
    a, b, c = read_caffemodel(path)
    np.testing.assert_array_equal(a.blobs[0], np.array([1.5, -2.0], np.float32))
    assert b.blobs[0].dtype == np.float32
    np.testing.assert_array_equal(b.blobs[0], np.array([0.1, 0.2, 0.3], np.float32))
    assert c.blobs[0].shape == (1, 1, 1, 2)  # legacy dims win over shape, as in Blob::FromProto
    np.testing.assert_array_equal(c.blobs[0].ravel(), [3, 4])


def _assert_error(path, *fragments):
    with pytest.raises(CaffeFormatError) as info:
        read_caffemodel(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(info.value)
    return info


def test_missing_file(tmp_path):
    _assert_error(tmp_path / "nope.caffemodel")


def test_truncated_file(caffe_fixtures, tmp_path):
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
    path = tmp_path / "half.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    _assert_error(path, "truncated or corrupt")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.RandomState(0).bytes(4096))
    _assert_error(path)


def test_net_without_layers(tmp_path):
    path = tmp_path / "named.caffemodel"
    path.write_bytes(_len(1, b"empty"))
    _assert_error(path, "no layers")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    _assert_error(path, "is empty (0 bytes)")


def test_blob_length_mismatch(tmp_path):
    shape = _len(7, _len(1, _varint(2) + _varint(3)))
    path = tmp_path / "short.caffemodel"
    path.write_bytes(_net(_layer("conv_bad", shape + _len(5, struct.pack("<5f", *range(5))))))
    _assert_error(path, "'conv_bad'", "(2, 3)", "needs 6 values", "holds 5")


def test_both_layer_and_layers(caffe_fixtures, tmp_path):
    """Concatenated messages merge: Caffe refuses a net holding both V2 and V1 layers, so do we."""
    path = tmp_path / "both.caffemodel"
    path.write_bytes(
        (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
        + (caffe_fixtures / "fcn8s_v1layers.caffemodel").read_bytes()
    )
    _assert_error(path, "'layer'", "'layers'")


def test_write_errors(tmp_path):
    with pytest.raises(CaffeFormatError, match="no V1 code"):
        write_caffemodel(tmp_path / "x", [CaffeLayer("score", "Crop", [], {})], legacy_v1=True)
    with pytest.raises(CaffeFormatError, match="no field 'kernel'"):
        write_caffemodel(tmp_path / "x", [CaffeLayer("c", "Convolution", [], {"kernel": 3})])
    with pytest.raises(CaffeFormatError, match="at most 4 dims"):
        write_caffemodel(
            tmp_path / "x", [CaffeLayer("c", "Convolution", [np.zeros((1,) * 5)], {})], legacy_v1=True
        )


@pytest.mark.parametrize("net", ["fcn8s", "fcn_alexnet", "fcn8s_v1layers"])
def test_blob_shapes_without_decoding_equal_the_full_reader(caffe_fixtures, net):
    """What a file is checked against before it is trusted (fcnseg.weights.hub.check_layout): the
    shapes read off the wire format are those the full reader decodes, V1 legacy dims included."""
    path = caffe_fixtures / f"{net}.caffemodel"
    decoded = {layer.name: [b.shape for b in layer.blobs] for layer in read_caffemodel(path) if layer.blobs}
    assert read_blob_shapes(path) == decoded
    assert read_blob_shapes("member.caffemodel", path.read_bytes()) == decoded  # bytes at hand


def test_blob_shapes_of_hand_made_encodings(tmp_path):
    unpacked = b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in (1.5, -2.0))
    shape = _len(7, _int(1, 2))  # shape { dim: 2 }, dim unpacked
    legacy = _int(1, 1) + _int(2, 1) + _int(3, 1) + _int(4, 2) + _len(5, struct.pack("<2f", 3, 4))
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(_net(_layer("a", shape + unpacked), _layer("c", legacy + shape), _len(1, b"no blobs")))
    assert read_blob_shapes(path) == {"a": [(2,)], "c": [(1, 1, 1, 2)]}  # legacy dims win, as in Caffe


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "is empty (0 bytes)"),
        (_len(1, b"empty"), "no layers"),
        (b"<html>Service unavailable</html>", "not a binary Caffe NetParameter"),
    ],
    ids=["empty", "no layers", "a web page"],
)
def test_blob_shapes_refuse_what_is_no_caffe_model(tmp_path, content, fragment):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError) as info:
        read_blob_shapes(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_blob_shapes_of_a_truncated_or_doubled_file(caffe_fixtures, tmp_path):
    data = (caffe_fixtures / "fcn8s.caffemodel").read_bytes()
    path = tmp_path / "half.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeFormatError, match="truncated or corrupt"):
        read_blob_shapes(path)
    path.write_bytes(data + (caffe_fixtures / "fcn8s_v1layers.caffemodel").read_bytes())
    with pytest.raises(CaffeFormatError, match="'layer' and V1 'layers'"):
        read_blob_shapes(path)
