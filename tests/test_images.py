"""Reading images and masks: every PIL mode to a defined array, EXIF orientation, clear errors."""

import numpy as np
import pytest
from PIL import Image, ImageFile

from fcnseg.data.images import ImageReadError, check_pair, read_depth, read_image, read_label
from fcnseg.data.palette import pascal_palette

RNG = np.random.default_rng(0)


def _rgb(h=4, w=6):
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _palette_png(path, ids):
    im = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="P")
    im.putpalette(pascal_palette(256).reshape(-1).tolist())
    im.save(path)


def test_rgb_png_round_trips(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, rgb)


def test_exif_orientation_is_applied(tmp_path):
    rgb = _rgb(2, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "phone.png"), np.rot90(rgb, k=-1))


def test_gray_palette_rgba_cmyk_become_rgb(tmp_path):
    gray = RNG.integers(0, 256, size=(3, 5), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.stack([gray] * 3, axis=2))

    _palette_png(tmp_path / "pal.png", [[0, 1], [15, 255]])
    expected = pascal_palette(256)[[[0, 1], [15, 255]]]
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), expected)

    rgba = np.dstack([_rgb(), np.zeros((4, 6), np.uint8)])  # fully transparent: alpha dropped
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[:, :, :3])

    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), [[[255] * 3, [0, 255, 255]]])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")  # mode I;16
    expected = np.array([[0, 1], [255, 4]], dtype=np.uint8)  # 1000 / 257 = 3.9
    np.testing.assert_array_equal(read_image(tmp_path / "d16.png")[:, :, 0], expected)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "d32.tif")  # mode I
    np.testing.assert_array_equal(read_image(tmp_path / "d32.tif")[:, :, 1], expected)
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match=r"big\.tif.*70000"):
        read_image(tmp_path / "big.tif")


def test_one_pixel_image_is_fine(tmp_path):
    Image.fromarray(np.full((1, 1, 3), 7, np.uint8)).save(tmp_path / "dot.png")
    assert read_image(tmp_path / "dot.png").shape == (1, 1, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises_naming_it(tmp_path, suffix):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=f"cut\\{suffix}"):
        read_image(path)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.jpg"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "absent.jpg")


def test_palette_label_gives_indices_not_colours(tmp_path):
    ids = np.array([[0, 1, 20], [255, 7, 0]])
    _palette_png(tmp_path / "m.png", ids)
    out = read_label(tmp_path / "m.png")
    assert out.dtype == np.int64 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, ids)


def test_gray_and_sixteen_bit_labels_give_values(tmp_path):
    Image.fromarray(np.array([[0, 3], [255, 1]], dtype=np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), [[0, 3], [255, 1]])
    Image.fromarray(np.array([[300, 2]], dtype=np.uint16)).save(tmp_path / "l16.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l16.png"), [[300, 2]])


def test_rgb_colour_mask_maps_through_the_palette(tmp_path):
    ids = np.array([[0, 15, 255], [1, 1, 20]])
    Image.fromarray(pascal_palette(256)[ids]).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(read_label(tmp_path / "colour.png"), ids)


def test_rgb_mask_with_unknown_colours_lists_them(tmp_path):
    rgb = pascal_palette(256)[np.zeros((2, 2), int)]
    rgb[0, 0] = (1, 2, 3)
    rgb[1, 1] = (250, 250, 250)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(ImageReadError, match=r"odd\.png.*2 colour.*\(1, 2, 3\).*\(250, 250, 250\)"):
        read_label(tmp_path / "odd.png")


def test_label_of_unsupported_mode_names_file_and_mode(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif.*'F'"):
        read_label(tmp_path / "f.tif")


def test_read_depth_keeps_sixteen_bit_values(tmp_path):
    depth = np.array([[0, 2550], [65535, 7]], dtype=np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    out = read_depth(tmp_path / "d.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match=r"rgb\.png.*'RGB'"):
        read_depth(tmp_path / "rgb.png")


def test_check_pair_names_both_files_and_sizes():
    check_pair(np.zeros((4, 6, 3)), np.zeros((4, 6)), "a.jpg", "a.png")
    check_pair(np.zeros((4, 6, 3)), np.zeros((2, 4, 6)), "a.jpg", "a.mat")
    with pytest.raises(ValueError, match=r"a\.jpg is 6x4.*b\.png is 5x4"):
        check_pair(np.zeros((4, 6, 3)), np.zeros((4, 5)), "a.jpg", "b.png")


def test_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(path)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(
        ImageReadError, match=r"big.png: 30x20 = 0.0006 MP is over the 0.000599 MP limit.*--max-megapixels"
    ):
        read_image(path, max_pixels=599)
    assert decoded == []  # refused before any pixel was decoded


def test_pil_guard_is_lifted_only_on_request_and_restored(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((20, 30, 3), 7, dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above 200 pixels
    with pytest.raises(ImageReadError, match=r"big.png.*decompression bomb.*--max-megapixels"):
        read_image(path)
    assert read_image(path, max_pixels=None).shape == (20, 30, 3)
    assert read_image(path, max_pixels=10**12)[0, 0, 0] == 7
    assert Image.MAX_IMAGE_PIXELS == 100
