"""Tiny copies of the data sets in their real on-disk layouts, for tests that read them by name."""

from pathlib import Path

import numpy as np
from mat_writer import Sparse, Stored, write_mat
from PIL import Image

from fcnseg.data.palette import pascal_palette

SCENES = "spatial_envelope_256x256_static_8outdoorcategories"


def write_image(path: Path, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def write_mask(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="P")
    im.putpalette(pascal_palette(256).reshape(-1).tolist())
    im.save(path)


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_pascal(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """VOC2012 and SBD side by side: SBD train of 3 images, seg11valid of 2 (VOC val less SBD train),
    SBD val of 2, one of them in seg11valid (sbd-heldout: the other)."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    val, sbd_train = (
        ["2007_000033", "2008_000002", "2011_000005"],
        ["2008_000002", "2009_000001", "2010_000123"],
    )
    for i in val:
        write_image(voc / "JPEGImages" / f"{i}.jpg", rng, h, w)
        write_mask(voc / "SegmentationClass" / f"{i}.png", rng.integers(0, 21, size=(h, w)))
    write_lines(voc / "ImageSets" / "Segmentation" / "val.txt", val)
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    for i in sbd_train:
        write_image(sbd / "img" / f"{i}.jpg", rng, h, w + 4)  # sizes differ: batches are padded
        ids = rng.integers(0, 21, size=(h, w + 4)).astype(np.uint8)
        gt = {"Boundaries": [Sparse(ids == 1)], "Segmentation": ids, "CategoriesPresent": 1.0}
        write_mat(sbd / "cls" / f"{i}.mat", {"GTcls": gt}, compress=True)
    write_lines(sbd / "train.txt", sbd_train)
    sbd_val = ["2007_000033", "2011_000010"]
    for i in sbd_val:
        write_image(sbd / "img" / f"{i}.jpg", rng, h, w)
        ids = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
        gt = {"Boundaries": [Sparse(ids == 1)], "Segmentation": ids, "CategoriesPresent": 1.0}
        write_mat(sbd / "cls" / f"{i}.mat", {"GTcls": gt}, compress=True)
    write_lines(sbd / "val.txt", sbd_val)
    return root


def write_nyud(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """nyud.tar.gz's layout: train 2, val 1 (no trainval.txt: train then val), test 1."""
    rng = np.random.default_rng(seed)
    splits = {"train": ["5001", "5002"], "val": ["5003"], "test": ["5004"]}
    (root / "data" / "depth").mkdir(parents=True)
    (root / "segmentation").mkdir()
    for split, ids in splits.items():
        write_lines(root / f"{split}.txt", ids)
        for i in ids:
            write_image(root / "data" / "images" / f"img_{i}.png", rng, h, w)
            write_image(root / "data" / "hha" / f"img_{i}.png", rng, h, w)
            depth = rng.integers(500, 10000, size=(h, w)).astype(np.uint16)
            Image.fromarray(depth).save(root / "data" / "depth" / f"img_{i}.png")
            raw = rng.integers(0, 41, size=(h, w)).astype(np.uint8)
            write_mat(root / "segmentation" / f"img_{i}.mat", {"segmentation": raw}, compress=True)
    return root


def write_siftflow(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """SiftFlowDataset.zip's layout with the FCN split lists: trainval 2, test 1."""
    rng = np.random.default_rng(seed)
    splits = {"trainval": ["coast_natu975", "forest_for15"], "test": ["street_art1"]}
    for split, ids in splits.items():
        write_lines(root / f"{split}.txt", ids)
        for i in ids:
            write_image(root / "Images" / SCENES / f"{i}.jpg", rng, h, w)
            semantic = rng.integers(0, 34, size=(h, w)).astype(np.float64)
            geometric = rng.integers(-1, 4, size=(h, w)).astype(np.float64)
            for kind, s in (("SemanticLabels", semantic), ("GeoLabels", geometric)):
                (root / kind / SCENES).mkdir(parents=True, exist_ok=True)
                write_mat(root / kind / SCENES / f"{i}.mat", {"S": Stored(s, "i1"), "names": ["awning"]})
    return root


def write_context(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """VOC2010 with the PASCAL-Context annotations beside it; a 4-class task (plus background)."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2010"
    splits = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    write_lines(root / "labels.txt", ["1: accordion", "2: aeroplane", "3: table", "4: cloth", "5: sky"])
    write_lines(root / "59_labels.txt", ["1: aeroplane", "2: diningtable", "3: clothes", "4: sky"])
    (root / "trainval").mkdir()
    for split, ids in splits.items():
        write_lines(voc / "ImageSets" / "Main" / f"{split}.txt", ids)
        for i in ids:
            write_image(voc / "JPEGImages" / f"{i}.jpg", rng, h, w)
            label_map = rng.integers(0, 6, size=(h, w)).astype(np.uint16)
            write_mat(root / "trainval" / f"{i}.mat", {"LabelMap": label_map}, compress=True)
    return root


def write_bsds500(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """BSR/BSDS500/data: images and groundTruth .mat files of two annotators, train/val/test."""
    import scipy.io

    rng = np.random.default_rng(seed)
    data = root / "BSR" / "BSDS500" / "data"
    for split in ("train", "val", "test"):
        (data / "groundTruth" / split).mkdir(parents=True)
        for stem in ("100", "101"):
            write_image(data / "images" / split / f"{stem}.jpg", rng, h, w)
            cells = np.empty((1, 2), object)
            for k in range(2):
                boundaries = np.zeros((h, w), np.uint16)
                boundaries[rng.integers(2, h - 2), :] = 1
                cells[0, k] = {"Segmentation": np.ones((h, w), np.uint16), "Boundaries": boundaries}
            scipy.io.savemat(data / "groundTruth" / split / f"{stem}.mat", {"groundTruth": cells})
    return root


def write_hed_bsds(root: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """HED-BSDS: augmented images and the annotators' mean as grey PNGs, listed in train_pair.lst."""
    rng = np.random.default_rng(seed)
    pairs = []
    for stem in ("a", "b"):
        image, truth = f"train/aug_data/0.0_1_0/{stem}.jpg", f"train/aug_gt/0.0_1_0/{stem}.png"
        write_image(root / image, rng, h, w)
        mean = np.zeros((h, w), np.uint8)
        mean[rng.integers(2, h - 2), :] = 255
        (root / truth).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mean).save(root / truth)
        pairs.append(f"{image} {truth}")
    write_lines(root / "train_pair.lst", pairs)
    return root


def write_sk_large(root: Path, h: int = 24, w: int = 40, seed: int = 0) -> Path:
    """SK-LARGE: images and groundTruth .mat files holding the object's edge and symmetry maps."""
    import scipy.io

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (root / "groundTruth" / split).mkdir(parents=True)
        for stem in ("a", "b"):
            write_image(root / "images" / split / f"{stem}.jpg", rng, h, w)
            edge, symmetry = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
            edge[2], edge[h - 3] = 1, 1
            symmetry[h // 2, 5 : w - 5] = 1
            scipy.io.savemat(
                root / "groundTruth" / split / f"{stem}.mat", {"edge": edge, "symmetry": symmetry}
            )
    return root


def _object(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def write_voc(root, year, split, images):
    """A VOCdevkit/VOC<year> folder: ``images`` maps an id to its objects (name, box, difficult)."""
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in images.items():
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{image_id}.jpg"
        )
        body = "".join(_object(*o) for o in objects)
        xml = f"<annotation><size><width>80</width><height>60</height></size>{body}</annotation>"
        (base / "Annotations" / f"{image_id}.xml").write_text(xml)
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")


def write_voc_detection(root: Path) -> Path:
    """VOC2007 trainval and test and VOC2012 trainval with a few boxes, one of them difficult."""
    write_voc(root, "2007", "trainval", {"000005": [("dog", (10, 5, 40, 30)), ("cat", (1, 1, 80, 60), 1)]})
    write_voc(root, "2007", "test", {"000001": [("person", (20, 10, 50, 55))]})
    write_voc(root, "2012", "trainval", {"2008_000002": [("car", (5, 6, 70, 50))]})
    return root
