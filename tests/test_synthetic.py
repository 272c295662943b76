"""Tests for the synthetic data set, its folder writer and the PASCAL palette."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.palette import pascal_palette
from fcnseg.data.synthetic import (
    CLASS_LOOKS,
    CLASS_NAMES,
    SyntheticSegmentation,
    make_sample,
    sample_seed,
    write_synthetic_folder,
)


def test_pascal_palette_known_colours():
    palette = pascal_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[4].tolist() == [0, 0, 128]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void
    assert len({tuple(c) for c in palette.tolist()}) == 256
    np.testing.assert_array_equal(pascal_palette(21), palette[:21])


def test_sample_types_shapes_and_label_range():
    image, label = make_sample(0, size=(70, 90))
    assert image.shape == (70, 90, 3) and image.dtype == np.uint8
    assert label.shape == (70, 90) and label.dtype == np.int64
    assert label.min() >= 0 and label.max() < len(CLASS_NAMES)


def test_same_seed_is_byte_identical_and_seeds_differ():
    image_a, label_a = make_sample(123)
    image_b, label_b = make_sample(123)
    assert image_a.tobytes() == image_b.tobytes()
    assert label_a.tobytes() == label_b.tobytes()
    image_c, _ = make_sample(124)
    assert image_a.shape != image_c.shape or image_a.tobytes() != image_c.tobytes()


def test_sizes_follow_the_range():
    shapes = {make_sample(seed, size_range=(40, 48))[1].shape for seed in range(20)}
    assert all(40 <= h <= 48 and 40 <= w <= 48 for h, w in shapes)
    assert len(shapes) > 1


def test_dataset_items_are_seeded_samples():
    dataset = SyntheticSegmentation(4, seed=7, size_range=(64, 80))
    assert len(dataset) == 4
    assert dataset.num_classes == 6 and dataset.class_names == CLASS_NAMES
    assert CLASS_NAMES[0] == "background"
    image, label = dataset[2]
    expected_image, expected_label = make_sample(sample_seed(7, 2), size_range=(64, 80))
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_array_equal(dataset[-1][1], dataset[3][1])
    assert not np.array_equal(dataset[0][0][:64, :64], SyntheticSegmentation(1, seed=8)[0][0][:64, :64])
    with pytest.raises(IndexError):
        dataset[4]


def test_every_class_appears_and_background_dominates():
    dataset = SyntheticSegmentation(12, seed=0)
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(dataset[i][1].ravel(), minlength=len(CLASS_NAMES))
    assert (counts > 0).all()
    assert 0.5 < counts[0] / counts.sum() < 0.95


def _hues(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and saturation of (N, 3) RGB pixels."""
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels / 255.0])
    return hsv[:, 0] * 360, hsv[:, 1]


def test_each_class_has_its_own_look_and_the_clutter_borrows_it():
    dataset = SyntheticSegmentation(40, seed=1)
    near, far = {c: 0 for c in CLASS_LOOKS}, {c: 0 for c in CLASS_LOOKS}
    saturated_background = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        for c in np.unique(label[label > 0]):
            hue, _ = _hues(np.median(image[label == c], axis=0, keepdims=True))
            distance = abs((hue[0] - CLASS_LOOKS[int(c)][0] + 180) % 360 - 180)
            if distance <= 50:
                near[int(c)] += 1
            else:
                far[int(c)] += 1
        _, saturation = _hues(image[label == 0][::25].astype(np.float64))
        saturated_background.append((saturation > 0.45).mean())
    for c in CLASS_LOOKS:  # mostly in its own hue family (occlusion and noise move some)
        assert near[c] >= 4 * far[c], (CLASS_NAMES[c], near[c], far[c])
    # Clutter painted in the classes' looks: colour alone does not say "object".
    assert np.mean(saturated_background) > 0.05


def test_write_folder_pairs_images_and_palette_masks(tmp_path):
    root = write_synthetic_folder(tmp_path / "synth", num_images=3, seed=5, size_range=(32, 40))
    images = sorted(p.name for p in (root / "images").glob("*.png"))
    masks = sorted(p.name for p in (root / "masks").glob("*.png"))
    assert images == masks == ["00000.png", "00001.png", "00002.png"]
    dataset = SyntheticSegmentation(3, seed=5, size_range=(32, 40))
    for i, name in enumerate(images):
        expected_image, expected_label = dataset[i]
        with Image.open(root / "images" / name) as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected_image)
        with Image.open(root / "masks" / name) as mask:
            assert mask.mode == "P"
            palette = np.array(mask.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(palette, pascal_palette())
            np.testing.assert_array_equal(np.asarray(mask).astype(np.int64), expected_label)
