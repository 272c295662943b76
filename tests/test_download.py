"""Download, verify and extract on local archives through file:// URLs and a local server; never the network."""

import hashlib
import io
import tarfile
import time
import zipfile

import pytest
from http_server import FileServer

from fcnseg import download as dl
from fcnseg.download import (
    ARCHIVES,
    ChecksumError,
    DownloadError,
    RemoteFile,
    download,
    extract,
    fetch,
    mirrored,
    verify,
)


def _tar(path, members, mode="w:gz"):
    """A tar with the given {name: bytes} files."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = _tar(src / "tiny.tgz", {"tiny/a.txt": b"alpha", "tiny/sub/b.txt": b"beta"})
    data = path.read_bytes()
    return path, hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()


def test_download_verifies_and_renames_atomically(archive, tmp_path):
    path, md5, sha256 = archive
    dest = tmp_path / "out" / "tiny.tgz"
    assert download(path.as_uri(), dest, md5=md5, sha256=sha256, progress=False) == dest
    assert dest.read_bytes() == path.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["tiny.tgz"]  # no .part left behind
    path.unlink()  # an existing, verified file is not fetched again
    assert download(path.as_uri(), dest, md5=md5, progress=False) == dest


def test_checksum_mismatch_leaves_nothing(archive, tmp_path):
    path, _, sha256 = archive
    dest = tmp_path / "out" / "tiny.tgz"
    with pytest.raises(ChecksumError, match=r"tiny\.tgz.*md5.*0{32}"):
        download(path.as_uri(), dest, md5="0" * 32, progress=False)
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(ChecksumError, match="sha256"):
        download(path.as_uri(), dest, sha256=sha256[::-1], progress=False)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError, match=f"sha1 is {sha1}, expected {'1' * 40}"):
        download(path.as_uri(), dest, sha1="1" * 40, progress=False)
    assert list(dest.parent.iterdir()) == []
    assert download(path.as_uri(), dest, sha1=sha1, size=len(path.read_bytes()), progress=False) == dest


def test_unknown_checksum_warns(archive, tmp_path):
    path, _, _ = archive
    with pytest.warns(UserWarning, match="no checksum"):
        download(path.as_uri(), tmp_path / "t.tgz", progress=False)
    with pytest.warns(UserWarning, match="no checksum"):
        verify(tmp_path / "t.tgz")


def test_existing_corrupt_file_is_reported(archive, tmp_path):
    path, md5, _ = archive
    dest = tmp_path / "tiny.tgz"
    dest.write_bytes(b"half a download")
    with pytest.raises(ChecksumError, match=md5):
        download(path.as_uri(), dest, md5=md5, progress=False)


def test_no_network_says_what_to_fetch_and_where(tmp_path):
    dest = tmp_path / "x.tar"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download("http://127.0.0.1:9/x.tar", dest, md5="ab" * 16, timeout=5, hint="Lists: see README")
    message = str(info.value)
    assert "by hand from http://127.0.0.1:9/x.tar" in message and str(dest) in message
    assert "md5 " + "ab" * 16 in message and "Lists: see README" in message
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2"])
def test_extract_tar(tmp_path, mode):
    path = _tar(tmp_path / "a.tar", {"d/x.txt": b"x", "y.txt": b"y"}, mode)
    extract(path, tmp_path / "root")
    assert (tmp_path / "root/d/x.txt").read_bytes() == b"x"
    assert (tmp_path / "root/y.txt").read_bytes() == b"y"


def test_extract_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("Images/a.jpg", b"jpeg")
    extract(tmp_path / "a.zip", tmp_path / "root")
    assert (tmp_path / "root/Images/a.jpg").read_bytes() == b"jpeg"


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_escaping_paths(tmp_path, name):
    path = _tar(tmp_path / "bad.tar", {"fine.txt": b"", name: b"evil"})
    with pytest.raises(ValueError, match="refusing"):
        extract(path, tmp_path / "root")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "fine.txt").exists()
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr(name, b"evil")
    with pytest.raises(ValueError, match="refusing"):
        extract(tmp_path / "bad.zip", tmp_path / "root")


def test_extract_refuses_links_out_of_root(tmp_path):
    with tarfile.open(tmp_path / "link.tar", "w") as tar:
        info = tarfile.TarInfo("data/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="refusing"):
        extract(tmp_path / "link.tar", tmp_path / "root")


def test_extract_rejects_other_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract(tmp_path / "a.txt", tmp_path / "root")


def test_fetch_downloads_and_extracts_once(archive, tmp_path, monkeypatch):
    path, md5, _ = archive
    monkeypatch.setitem(dl.ARCHIVES, "tiny", RemoteFile(path.as_uri(), md5=md5))
    root = tmp_path / "data"
    assert fetch("tiny", root, progress=False) == root
    assert (root / "tiny/a.txt").read_bytes() == b"alpha"
    (root / "tiny/a.txt").unlink()
    fetch("tiny", root, progress=False)
    assert not (root / "tiny/a.txt").exists()  # extracted once, not again
    with pytest.raises(KeyError, match="voc2012"):
        fetch("imagenet", root)


def test_known_archives_carry_published_checksums():
    assert ARCHIVES["voc2012"].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert ARCHIVES["voc2007-test"].filename == "VOCtest_06-Nov-2007.tar"
    assert ARCHIVES["sbd"].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"
    assert ARCHIVES["sbd"].filename == "benchmark.tgz"
    assert ARCHIVES["nyud"].md5 is None and ARCHIVES["nyud"].sha256 is None  # none published


def test_mirror_replaces_scheme_and_host(monkeypatch):
    url = "http://dl.caffe.berkeleyvision.org/models/x.caffemodel?raw=1"
    monkeypatch.delenv("FCNSEG_MIRROR", raising=False)
    assert mirrored(url) == url
    monkeypatch.setenv("FCNSEG_MIRROR", "https://mirror.lan/fcn/")
    assert mirrored(url) == "https://mirror.lan/fcn/models/x.caffemodel?raw=1"


def test_data_archives_download_through_the_mirror(archive, tmp_path, monkeypatch):
    path, md5, _ = archive
    server = FileServer()
    try:
        server.files["/pascal/VOC/tiny.tgz"] = path.read_bytes()
        monkeypatch.setenv("FCNSEG_MIRROR", server.url)
        monkeypatch.setitem(
            dl.ARCHIVES, "tiny", RemoteFile("http://host.robots.ox.ac.uk/pascal/VOC/tiny.tgz", md5=md5)
        )
        fetch("tiny", tmp_path / "data", progress=False)
        assert (tmp_path / "data/tiny/a.txt").read_bytes() == b"alpha"
        assert server.hits["/pascal/VOC/tiny.tgz"] == 1
        del server.files["/pascal/VOC/tiny.tgz"]
        with pytest.raises(DownloadError, match=f"by hand from {server.url}/pascal/VOC/tiny.tgz"):
            download(
                "http://host.robots.ox.ac.uk/pascal/VOC/tiny.tgz", tmp_path / "again.tgz", progress=False
            )
        assert not (tmp_path / "again.tgz").exists()
    finally:
        server.close()
