"""Each data set read from a tiny copy of its real on-disk layout written into tmp_path."""

import numpy as np
import pytest
import torch
from mat_writer import Sparse, Stored, write_mat
from PIL import Image
from tiny_datasets import SCENES, write_image, write_lines, write_mask

from fcnseg.data.context import PascalContextSegmentation
from fcnseg.data.datasets import InMemory
from fcnseg.data.folder import FolderSegmentation
from fcnseg.data.matlab import MatReadError
from fcnseg.data.nyud import NYUDSegmentation
from fcnseg.data.palette import pascal_palette
from fcnseg.data.registry import open_dataset
from fcnseg.data.siftflow import SiftFlowSegmentation
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.data.voc import VOC_CLASSES, SBDSegmentation, VOCSegmentation, pascal_split

H, W = 5, 7
RNG = np.random.default_rng(0)


def _image(path, h=H, w=W):
    return write_image(path, RNG, h, w)


_mask, _lines = write_mask, write_lines


def _ids(num_classes, h=H, w=W, void=True):
    ids = RNG.integers(0, num_classes, size=(h, w))
    if void:
        ids[0, 0] = 255
    return ids


# --- PASCAL VOC and SBD -------------------------------------------------------------------

VOC_VAL = ["2007_000033", "2008_000002", "2011_000005", "2012_000010"]
VOC_TRAIN = ["2009_000001"]
SBD_TRAIN = ["2008_000002", "2009_000001", "2010_000123"]
SBD_VAL = ["2011_000005"]


@pytest.fixture
def pascal(tmp_path):
    """VOC2012 and SBD extracted side by side into one folder, as fetch() leaves them."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    labels = {}
    for i in VOC_VAL + VOC_TRAIN:
        _image(voc / "JPEGImages" / f"{i}.jpg")
        labels[i] = _ids(21)
        _mask(voc / "SegmentationClass" / f"{i}.png", labels[i])
    _lines(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    _lines(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    for i in SBD_TRAIN + SBD_VAL:
        _image(sbd / "img" / f"{i}.jpg")
        labels["sbd", i] = _ids(21).astype(np.uint8)
        boundaries = [Sparse(labels["sbd", i] == c) for c in (1, 2)]
        gt = {"Boundaries": boundaries, "Segmentation": labels["sbd", i], "CategoriesPresent": 1.0}
        (sbd / "cls").mkdir(exist_ok=True)
        write_mat(sbd / "cls" / f"{i}.mat", {"GTcls": gt}, compress=True)
    _lines(sbd / "train.txt", SBD_TRAIN)
    _lines(sbd / "val.txt", SBD_VAL)
    return tmp_path, labels


def test_voc_reads_palette_masks_as_class_ids(pascal):
    root, labels = pascal
    ds = VOCSegmentation(root, "val")
    assert len(ds) == 4 and ds.num_classes == 21 and ds.class_names == VOC_CLASSES
    assert ds.class_names[0] == "background" and ds.ignore_index == 255
    assert ds.files[0][0].name == "2007_000033.jpg"
    image, label = ds[1]
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, labels["2008_000002"])


def test_seg11valid_is_voc2011_val_minus_sbd_train(pascal):
    root, _ = pascal
    ds = VOCSegmentation(root, "seg11valid")
    assert [p.stem for p, _ in ds.files] == ["2007_000033", "2011_000005"]
    assert [p.stem for p, _ in pascal_split("seg11valid", root).files] == [
        "2007_000033",
        "2011_000005",
    ]


def test_seg11valid_list_on_disk_wins(pascal):
    root, _ = pascal
    _lines(root / "VOCdevkit/VOC2012/ImageSets/Segmentation/seg11valid.txt", ["2007_000033"])
    assert len(VOCSegmentation(root, "seg11valid")) == 1


def test_seg11valid_without_sbd_says_so(pascal, tmp_path_factory):
    root, _ = pascal
    with pytest.raises(FileNotFoundError, match="SBD"):
        VOCSegmentation(root, "seg11valid", sbd_root=tmp_path_factory.mktemp("empty"))


def test_sbd_reads_gtcls_segmentation(pascal):
    root, labels = pascal
    ds = SBDSegmentation(root, "train")
    assert len(ds) == 3 and ds.num_classes == 21
    image, label = ds[2]
    assert image.shape == (H, W, 3) and label.dtype == np.int64
    np.testing.assert_array_equal(label, labels["sbd", "2010_000123"])
    assert len(pascal_split("sbd-val", root)) == 1
    assert len(pascal_split("voc-train", root)) == 1
    with pytest.raises(ValueError, match="unknown PASCAL split"):
        pascal_split("coco", root)


def test_missing_split_lists_the_available_ones(pascal):
    root, _ = pascal
    with pytest.raises(FileNotFoundError, match=r"trainval\.txt.*train, val"):
        VOCSegmentation(root, "trainval")


def test_missing_listed_file_fails_at_construction(pascal):
    root, _ = pascal
    (root / "VOCdevkit/VOC2012/SegmentationClass/2011_000005.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 file.*2011_000005\.png"):
        VOCSegmentation(root, "val")


def test_out_of_range_label_names_file_values_and_classes(pascal):
    root, _ = pascal
    bad = _ids(21)
    bad[1, 1], bad[2, 2] = 30, 22
    _mask(root / "VOCdevkit/VOC2012/SegmentationClass/2009_000001.png", bad)
    with pytest.raises(ValueError, match=r"2009_000001\.png.*22, 30.*num_classes=21"):
        VOCSegmentation(root, "train")[0]


def test_size_mismatch_names_both_files(pascal):
    root, _ = pascal
    _image(root / "VOCdevkit/VOC2012/JPEGImages/2009_000001.jpg", h=6)
    with pytest.raises(ValueError, match=r"2009_000001\.jpg is 7x6.*2009_000001\.png is 7x5"):
        VOCSegmentation(root, "train")[0]


def test_works_with_a_dataloader(pascal):
    root, _ = pascal
    images, labels = next(iter(torch.utils.data.DataLoader(VOCSegmentation(root, "val"), 2)))
    assert images.shape == (2, H, W, 3) and labels.dtype == torch.int64


# --- a folder of one's own ----------------------------------------------------------------


def test_folder_pairs_by_name_including_subfolders(tmp_path):
    a = _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "sub" / "b.jpg")
    _mask(tmp_path / "masks" / "a.png", np.tile([0, 1, 2, 255, 0, 1, 2], (H, 1)))
    (tmp_path / "masks" / "sub").mkdir()
    Image.fromarray(pascal_palette(256)[np.ones((H, W), int)]).save(tmp_path / "masks/sub/b.png")
    _lines(tmp_path / "classes.txt", ["background", "digit", "needle"])
    (tmp_path / "images" / "notes.txt").write_text("ignored")

    ds = FolderSegmentation(tmp_path)
    assert ds.class_names == ("background", "digit", "needle") and ds.num_classes == 3
    assert [(i.name, m.name) for i, m in ds.files] == [("a.png", "a.png"), ("b.jpg", "b.png")]
    image, label = ds[0]
    np.testing.assert_array_equal(image, a)
    np.testing.assert_array_equal(label[0], [0, 1, 2, 255, 0, 1, 2])
    np.testing.assert_array_equal(ds[1][1], np.ones((H, W)))  # RGB colour mask


def test_folder_lists_unpaired_files_once(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "a.png", _ids(2, void=False))
    for n in range(25):
        _image(tmp_path / "images" / f"lonely{n:02d}.jpg", 1, 1)
    _mask(tmp_path / "masks" / "orphan.png", [[0]])
    with pytest.raises(ValueError) as info:
        FolderSegmentation(tmp_path, num_classes=2)
    message = str(info.value)
    assert "26 file(s)" in message and "lonely00.jpg" in message and "and 6 more" in message
    assert "orphan.png" not in message  # sorted after the 20 listed


def test_folder_errors_for_empty_and_jpeg_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="no images"):
        FolderSegmentation(tmp_path, num_classes=2)
    _image(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "a.png", _ids(2, void=False))
    assert FolderSegmentation(tmp_path).class_names == ("class0", "class1")  # counted in the mask
    assert FolderSegmentation(tmp_path, num_classes=2).class_names == ("class0", "class1")
    _image(tmp_path / "masks" / "b.jpg")
    with pytest.raises(ValueError, match=r"lossless.*b\.jpg"):
        FolderSegmentation(tmp_path, num_classes=2)


def test_folder_missing_dir_and_class_count_disagreement(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        FolderSegmentation(tmp_path, num_classes=2)
    _image(tmp_path / "images" / "a.jpg")
    _mask(tmp_path / "masks" / "a.png", _ids(2, void=False))
    _lines(tmp_path / "classes.txt", ["bg", "fg"])
    with pytest.raises(ValueError, match="num_classes=3"):
        FolderSegmentation(tmp_path, num_classes=3)


# --- NYUDv2 --------------------------------------------------------------------------------


@pytest.fixture
def nyud(tmp_path):
    rgb = _image(tmp_path / "data" / "images" / "img_5001.png")
    hha = _image(tmp_path / "data" / "hha" / "img_5001.png")
    depth = RNG.integers(500, 10000, size=(H, W)).astype(np.uint16)
    (tmp_path / "data" / "depth").mkdir()
    Image.fromarray(depth).save(tmp_path / "data" / "depth" / "img_5001.png")
    raw = RNG.integers(0, 41, size=(H, W)).astype(np.uint8)
    raw[0, :3] = [0, 1, 40]
    (tmp_path / "segmentation").mkdir()
    write_mat(tmp_path / "segmentation" / "img_5001.mat", {"segmentation": raw}, compress=True)
    _lines(tmp_path / "val.txt", ["5001"])
    return tmp_path, rgb, hha, depth, raw


def test_nyud_shifts_labels_like_the_fcn_layer(nyud):
    root, rgb, _, _, raw = nyud
    ds = NYUDSegmentation(root, "val")
    assert ds.num_classes == 40 and ds.class_names[0] == "wall"
    image, label = ds[0]
    np.testing.assert_array_equal(image, rgb)
    np.testing.assert_array_equal(label[0, :3], [255, 0, 39])
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0].astype(np.int64) - 1)


def test_nyud_modalities(nyud):
    root, rgb, hha, depth, _ = nyud
    np.testing.assert_array_equal(NYUDSegmentation(root, "val", "hha")[0][0], hha)
    both = NYUDSegmentation(root, "val", "rgbhha")[0][0]
    assert both.shape == (H, W, 6) and both.dtype == np.uint8
    np.testing.assert_array_equal(both, np.concatenate([rgb, hha], axis=2))
    d = NYUDSegmentation(root, "val", "depth")[0][0]
    assert d.shape == (H, W, 1) and d.dtype == np.uint16
    np.testing.assert_array_equal(d[:, :, 0], depth)
    rgbd = NYUDSegmentation(root, "val", "rgbd")[0][0]
    assert rgbd.shape == (H, W, 4) and rgbd.dtype == np.uint16
    np.testing.assert_array_equal(rgbd, np.concatenate([rgb, depth[:, :, None]], axis=2))
    with pytest.raises(ValueError, match="modality"):
        NYUDSegmentation(root, "val", "lidar")


def test_nyud_trains_on_trainval_and_scores_on_test_as_the_original(nyud):
    root = nyud[0]
    _lines(root / "train.txt", ["5001"])
    with pytest.raises(FileNotFoundError, match="test.txt not found"):
        open_dataset("nyud", str(root))  # the default split is test
    _lines(root / "test.txt", ["5001"])
    assert open_dataset("nyud", str(root), modality="hha").modality == "hha"
    both = NYUDSegmentation(root, "trainval")  # without trainval.txt: train then val
    assert len(both) == 2
    _lines(root / "trainval.txt", ["5001"])
    assert len(NYUDSegmentation(root, "trainval")) == 1
    with pytest.raises(ValueError, match="only RGB"):
        open_dataset("context", str(root), "train", modality="hha")


def test_nyud_v73_label_file_says_how_to_resave(nyud):
    root = nyud[0]
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" ")
    (root / "segmentation" / "img_5001.mat").write_bytes(header + b"\x89HDF\r\n\x1a\n")
    with pytest.raises(MatReadError, match=r"img_5001\.mat.*v7\.3.*-v7"):
        NYUDSegmentation(root, "val")[0]


# --- SIFT Flow -----------------------------------------------------------------------------


@pytest.fixture
def siftflow(tmp_path):
    _image(tmp_path / "Images" / SCENES / "coast_natu975.jpg")
    semantic = RNG.integers(0, 34, size=(H, W)).astype(np.float64)
    semantic[0, :3] = [0, 1, 33]
    geometric = RNG.integers(-1, 4, size=(H, W)).astype(np.float64)
    geometric[0, :4] = [-1, 0, 1, 3]
    for kind, s in (("SemanticLabels", semantic), ("GeoLabels", geometric)):
        (tmp_path / kind / SCENES).mkdir(parents=True)
        names = ["awning", "balcony"]
        write_mat(tmp_path / kind / SCENES / "coast_natu975.mat", {"S": Stored(s, "i1"), "names": names})
    _lines(tmp_path / "test.txt", ["coast_natu975"])
    return tmp_path


def test_siftflow_semantic_and_geometric(siftflow):
    ds = SiftFlowSegmentation(siftflow, "test")
    assert ds.num_classes == 33 and ds.class_names[-1] == "window"
    image, label = ds[0]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label[0, :3], [255, 0, 32])
    geo = SiftFlowSegmentation(siftflow, "test", task="geometric")
    assert geo.class_names == ("sky", "horizontal", "vertical")
    np.testing.assert_array_equal(geo[0][1][0, :4], [255, 255, 0, 2])


def test_siftflow_both_stacks_two_labels(siftflow):
    ds = SiftFlowSegmentation(siftflow, "test", task="both")
    assert ds.num_classes == (33, 3) and len(ds.class_names[1]) == 3
    _, label = ds[0]
    assert label.shape == (2, H, W)
    np.testing.assert_array_equal(label[0, 0, :3], [255, 0, 32])
    np.testing.assert_array_equal(label[1, 0, :4], [255, 255, 0, 2])


# --- PASCAL-Context ------------------------------------------------------------------------


@pytest.fixture
def context(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    _image(voc / "JPEGImages" / "2008_000002.jpg")
    _lines(voc / "ImageSets" / "Main" / "train.txt", ["2008_000002"])
    _lines(
        tmp_path / "labels.txt",
        ["1: accordion", "2: aeroplane", "3: table", "4: cloth", "5: bedclothes", "6: sky"],
    )
    _lines(
        tmp_path / "59_labels.txt", ["1: aeroplane", "2: diningtable", "3: clothes", "4: bedcloth", "5: sky"]
    )
    label_map = np.array([[0, 1, 2, 3, 4, 5, 6]] * H, dtype=np.uint16)
    label_map[1, 0] = 999
    (tmp_path / "trainval").mkdir()
    write_mat(tmp_path / "trainval" / "2008_000002.mat", {"LabelMap": label_map}, compress=True)
    return tmp_path


def test_context_maps_full_labels_to_the_task_like_fcn(context):
    ds = PascalContextSegmentation(context, "train")
    names = ("background", "aeroplane", "diningtable", "clothes", "bedcloth", "sky")
    assert ds.class_names == names and ds.num_classes == 6
    image, label = ds[0]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label[0], [0, 0, 1, 2, 3, 4, 5])  # accordion -> background
    assert label[1, 0] == 0  # an id beyond labels.txt is background too


def test_context_opens_by_name_as_training_does(context):
    ds = open_dataset("context", str(context), "train")
    assert isinstance(ds, PascalContextSegmentation) and len(ds) == 1 and ds.num_classes == 6


def test_context_accepts_fcn_class_list_with_background(context):
    (context / "59_labels.txt").unlink()
    _lines(context / "classes-59.txt", ["0: background", "1: aeroplane", "2: sky"])
    ds = PascalContextSegmentation(context, "train")
    assert ds.class_names == ("background", "aeroplane", "sky")
    np.testing.assert_array_equal(ds[0][1][0], [0, 0, 1, 0, 0, 0, 2])


def test_context_class_missing_from_full_list_is_an_error(context):
    _lines(context / "59_labels.txt", ["1: aeroplane", "2: unicorn"])
    with pytest.raises(ValueError, match=r"unicorn.*labels\.txt"):
        PascalContextSegmentation(context, "train")


def test_in_memory_reads_each_pair_once_and_keeps_the_class_list():
    reads = []

    class Counting(SyntheticSegmentation):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    source = Counting(3, seed=5, size_range=(16, 20))
    cached = InMemory(source)
    assert reads == [0, 1, 2]
    for _ in range(2):
        for i in range(len(cached)):
            image, label = cached[i]
            np.testing.assert_array_equal(label, SyntheticSegmentation(3, seed=5, size_range=(16, 20))[i][1])
    assert reads == [0, 1, 2]
    assert cached.class_names == source.class_names and cached.num_classes == source.num_classes
