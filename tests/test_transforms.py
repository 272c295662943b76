"""Tests for the joint image/label transforms and the padding collate."""

import numpy as np
import pytest
import torch

from fcnseg.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    pad_collate,
    resize_image,
    resize_label,
)


def block_pair(height=32, width=48, block=8, num_classes=5):
    """A label of constant blocks and an image whose red channel encodes the label."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, num_classes, size=(height // block, width // block))
    label = np.kron(coarse, np.ones((block, block), dtype=np.int64))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = label * 50
    image[..., 1] = 7
    return image, label


def test_flip_always_and_never():
    image, label = block_pair()
    rng = np.random.default_rng(0)
    flipped_image, flipped_label = RandomHorizontalFlip(p=1.0)(image, label, rng)
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    same_image, same_label = RandomHorizontalFlip(p=0.0)(image, label, rng)
    assert same_image is image and same_label is label


def test_scale_by_two_replicates_pixels():
    label = np.array([[0, 1], [2, 3]], dtype=np.int64)
    image = np.full((2, 2, 3), 90, dtype=np.uint8)
    out_image, out_label = RandomScale((2.0, 2.0))(image, label, np.random.default_rng(0))
    expected = np.kron(label, np.ones((2, 2), dtype=np.int64))
    np.testing.assert_array_equal(out_label, expected)
    assert out_label.dtype == np.int64
    # bilinear interpolation of a constant image is that constant
    np.testing.assert_array_equal(out_image, np.full((4, 4, 3), 90, dtype=np.uint8))


def test_scale_size_keeps_labels_and_alignment():
    image, label = block_pair()
    out_image, out_label = RandomScale((0.5, 0.5))(image, label, np.random.default_rng(0))
    assert out_image.shape == (16, 24, 3) and out_label.shape == (16, 24)
    assert set(np.unique(out_label)) <= set(np.unique(label))
    # each 8x8 block becomes 4x4; its inner 2x2 must still match the red channel
    inner = np.zeros((16, 24), dtype=bool)
    inner[1::4, 1::4] = inner[2::4, 2::4] = True
    np.testing.assert_array_equal(out_image[..., 0][inner], out_label[inner] * 50)


def test_resize_helpers_handle_any_channel_count():
    image = np.zeros((5, 7, 6), dtype=np.uint8)
    assert resize_image(image, (10, 3)).shape == (10, 3, 6)
    assert resize_label(np.full((5, 7), 255, dtype=np.int64), (2, 2)).tolist() == [[255] * 2] * 2


def test_crop_is_a_window_of_the_input():
    label = np.arange(20 * 30, dtype=np.int64).reshape(20, 30)
    image = np.stack([label % 256] * 3, axis=-1).astype(np.uint8)
    out_image, out_label = RandomCrop((8, 11))(image, label, np.random.default_rng(3))
    assert out_label.shape == (8, 11) and out_image.shape == (8, 11, 3)
    top, left = divmod(int(out_label[0, 0]), 30)
    np.testing.assert_array_equal(out_label, label[top : top + 8, left : left + 11])
    np.testing.assert_array_equal(out_image, image[top : top + 8, left : left + 11])


def test_crop_pads_small_images_with_ignore_and_fill():
    label = np.ones((2, 3), dtype=np.int64)
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    out_image, out_label = RandomCrop(4, fill=17)(image, label, np.random.default_rng(0))
    expected_label = np.full((4, 4), 255)
    expected_label[:2, :3] = 1
    np.testing.assert_array_equal(out_label, expected_label)
    assert (out_image[:2, :3] == 200).all()
    assert (out_image[2:] == 17).all() and (out_image[:, 3] == 17).all()


def test_crop_pads_only_the_short_side():
    image, label = block_pair(height=16, width=48)
    out_image, out_label = RandomCrop((24, 24))(image, label, np.random.default_rng(1))
    assert out_label.shape == (24, 24)
    assert (out_label[16:] == 255).all() and (out_label[:16] != 255).all()


def test_compose_is_reproducible_with_a_seed():
    image, label = block_pair()
    pipeline = Compose([RandomScale((0.5, 1.5)), RandomCrop(20), RandomHorizontalFlip()])

    def run(seed):
        rng = np.random.default_rng(seed)
        return [pipeline(image, label, rng) for _ in range(5)]

    first, again, other = run(42), run(42), run(43)
    for (img_a, lab_a), (img_b, lab_b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(lab_a, lab_b)
    assert any(not np.array_equal(lab_a, lab_b) for (_, lab_a), (_, lab_b) in zip(first, other, strict=True))
    # image and label stay aligned through the whole pipeline (label 255 = padding)
    for out_image, out_label in first:
        assert out_label.shape == (20, 20) and out_image.shape == (20, 20, 3)
        valid = out_label != 255
        # bilinear blends class borders; rounding recovers the class away from them
        decoded = np.rint(out_image[..., 0][valid] / 50)
        assert (decoded == out_label[valid]).mean() > 0.85


def test_size_mismatch_names_both_sizes():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    label = np.zeros((4, 6), dtype=np.int64)
    rng = np.random.default_rng(0)
    for transform in (RandomHorizontalFlip(), RandomScale(), RandomCrop(2)):
        with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
            transform(image, label, rng)


def test_pad_collate_pads_images_with_zero_and_labels_with_ignore():
    a = (torch.ones(3, 2, 4), torch.full((2, 4), 1, dtype=torch.int64))
    b = (torch.full((3, 5, 3), 2.0), torch.full((5, 3), 2, dtype=torch.int64))
    images, labels = pad_collate([a, b], ignore_index=254)
    assert images.shape == (2, 3, 5, 4) and images.dtype == torch.float32
    assert labels.shape == (2, 5, 4) and labels.dtype == torch.int64
    assert (images[0, :, :2, :4] == 1).all() and (images[0, :, 2:] == 0).all()
    assert (images[1, :, :, :3] == 2).all() and (images[1, :, :, 3] == 0).all()
    assert (labels[0, :2] == 1).all() and (labels[0, 2:] == 254).all()
    assert (labels[1, :, :3] == 2).all() and (labels[1, :, 3] == 254).all()


def test_pad_collate_rejects_mismatched_pairs():
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\)"):
        pad_collate([(torch.zeros(3, 2, 4), torch.zeros(2, 5, dtype=torch.int64))])
    with pytest.raises(ValueError, match="channels"):
        pad_collate(
            [
                (torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64)),
                (torch.zeros(1, 2, 2), torch.zeros(2, 2, dtype=torch.int64)),
            ]
        )
