"""``fcnseg data``: the edge and skeleton data sets fetched from a local mirror, and FSDS's offline
augmentation of SK-LARGE (36 copies of each training image, scales computed anew)."""

from __future__ import annotations

import io
import logging
import re
import shlex
import tarfile
import zipfile

import numpy as np
import pytest
from http_server import FileServer
from tiny_datasets import write_bsds500, write_hed_bsds, write_sk_large

from fcnseg.cli import main
from fcnseg.data.edges import BSDS500, HEDPairs, SkeletonDataset
from fcnseg.data.skeleton_augment import AUGMENTED_SPLIT, augment_skeletons, augmented
from fcnseg.download import ARCHIVES


def _tgz(folder) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


@pytest.fixture
def mirror(monkeypatch):
    files = FileServer()
    monkeypatch.setenv("FCNSEG_MIRROR", files.url)
    yield files
    files.close()


def test_edge_and_skeleton_archives_are_named():
    assert ARCHIVES["bsds500"].url.endswith("/grouping/BSR/BSR_bsds500.tgz")
    assert ARCHIVES["hed-bsds"].url == "https://vcl.ucsd.edu/hed/HED-BSDS.tar"
    assert ARCHIVES["hed-bsds"].stated_size == "1.2GB"
    assert ARCHIVES["sk-large"].filename == "SK-LARGE.zip" and ARCHIVES["sk506"].filename == "SK506.zip"


def test_fetch_bsds500_and_hed_bsds_from_a_mirror(mirror, tmp_path, capsys, caplog):
    mirror.files["/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"] = _tgz(
        write_bsds500(tmp_path / "bsr")
    )
    write_hed_bsds(tmp_path / "hed" / "HED-BSDS")
    mirror.files["/hed/HED-BSDS.tar"] = _tgz(tmp_path / "hed")
    with caplog.at_level(logging.WARNING, logger="fcnseg.download"):
        assert main(["data", "fetch", "bsds500", str(tmp_path / "data"), "--quiet"]) == 0
        assert main(["data", "fetch", "hed-bsds", str(tmp_path / "data"), "--quiet"]) == 0
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "no checksum known for http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
        "no checksum known for https://vcl.ucsd.edu/hed/HED-BSDS.tar",
    ]
    assert len(BSDS500(tmp_path / "data" / "BSR", "test")) == 2
    assert len(HEDPairs(tmp_path / "data" / "HED-BSDS")) == 2
    assert "bsds500: " in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fcnseg.download"):  # the second time: not fetched
        assert main(["data", "fetch", "bsds500", str(tmp_path / "data"), "--quiet"]) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"no checksum known for {tmp_path / 'data' / 'BSR_bsds500.tgz'}; not verified"
    ]
    assert mirror.hits["/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"] == 1


def test_a_page_where_an_archive_should_be_says_what_to_fetch_by_hand(mirror, tmp_path, capsys):
    """The advice works when followed: the archive placed where it says, the two commands it names."""
    root = tmp_path / "data"
    mirror.files["/sk-large"] = b"<html>SK-LARGE: download</html>"
    mirror.content_types["/sk-large"] = "text/html"
    assert main(["data", "fetch", "sk-large", str(root), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "web page" in error and "by hand" in error
    assert not any(root.iterdir())
    place, fetch_again = re.search(r"place it at (\S+), then run `fcnseg ([^`]+)` again", error).groups()
    (prepare,) = re.findall(r"Then `fcnseg ([^`]+)` makes FSDS", error)
    assert place == str(root / "SK-LARGE.zip") and fetch_again == f"data fetch sk-large {root}"
    write_sk_large(tmp_path / "by-hand" / "SK-LARGE", h=40, w=60)
    with zipfile.ZipFile(place, "w") as archive:  # the archive, fetched by hand
        for path in sorted((tmp_path / "by-hand").rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "by-hand").as_posix())
    assert main([*shlex.split(fetch_again), "--quiet"]) == 0
    assert main([*shlex.split(prepare), "--quiet"]) == 0
    assert "72 copies written, 0 already there" in capsys.readouterr().out
    assert len(SkeletonDataset(root, AUGMENTED_SPLIT, "sk-large")) == 2 * 36


def test_a_copy_is_the_resized_turned_and_flipped_image_and_maps():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    skeleton = np.zeros((10, 20), np.uint8)
    skeleton[5, 3:17] = 1
    copy, (turned,) = augmented(image, [skeleton], 1.0, 90, "none")
    np.testing.assert_array_equal(copy, np.rot90(image))
    np.testing.assert_array_equal(turned, np.rot90(skeleton))
    copy, (flipped,) = augmented(image, [skeleton], 1.0, 180, "up-down")
    np.testing.assert_array_equal(copy, image[:, ::-1])  # half a turn then upside down: mirrored
    copy, (larger,) = augmented(image, [skeleton], 1.2, 0, "left-right")
    assert copy.shape == (12, 24, 3) and larger.shape == (12, 24)
    assert set(np.unique(larger)) == {0, 1} and larger[6, 4:20].all()  # still a line, still 0/1


def test_prepare_sk_large_writes_36_copies_once_with_scales_of_the_copy(tmp_path, capsys):
    root = write_sk_large(tmp_path / "SK-LARGE", h=40, w=60)
    assert main(["data", "prepare", "sk-large", str(root), "--quiet"]) == 0
    assert "72 copies written, 0 already there" in capsys.readouterr().out
    copies = SkeletonDataset(root, AUGMENTED_SPLIT, "sk-large")
    assert len(copies) == 2 * 36
    original = SkeletonDataset(root, "train", "sk-large")
    stem = original.pairs[0][0].stem
    index = {p[0].name: i for i, p in enumerate(copies.pairs)}
    _, scales = original[0]
    _, larger = copies[index[f"{stem}_s1.2_r0_none.jpg"]]
    _, turned = copies[index[f"{stem}_s1_r90_none.jpg"]]
    np.testing.assert_array_equal(turned, np.rot90(scales))
    # the skeleton (row 20) lies 17 rows from the nearer edge (row 37): its scale grows with the image
    assert scales.max() == 2 * 17 and larger.max() == pytest.approx(1.2 * 2 * 17, abs=2)
    assert not list(root.rglob("*.tmp"))
    (root / "images" / AUGMENTED_SPLIT / f"{stem}_s0.8_r270_up-down.jpg").unlink()  # as if interrupted
    assert augment_skeletons(root, progress=False) == (1, 71)
