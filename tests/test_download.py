"""Download, verify and extract on local archives through file:// URLs and a local server; never the network."""

import hashlib
import io
import logging
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

import pytest
from http_server import FileServer

from fcnseg import FcnsegError
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


def test_unknown_checksum_is_logged_and_verify_warns(archive, tmp_path, caplog):
    path, _, _ = archive
    with caplog.at_level(logging.WARNING, logger="fcnseg.download"):
        download(path.as_uri(), tmp_path / "t.tgz", progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"no checksum known for {path.as_uri()}; {tmp_path / 't.tgz'} not verified"
    ]
    with pytest.warns(UserWarning, match="no checksum"):  # the caller's own call: a warning to them
        verify(tmp_path / "t.tgz")


def test_download_is_silent_without_progress_and_shows_no_bar_off_a_terminal(
    archive, tmp_path, capsys, caplog
):
    path, md5, _ = archive
    caplog.set_level(logging.DEBUG, logger="fcnseg")
    download(path.as_uri(), tmp_path / "a.tgz", md5=md5, progress=False)
    assert caplog.records == [] and capsys.readouterr() == ("", "")
    download(path.as_uri(), tmp_path / "b.tgz", md5=md5)  # progress: messages, but stderr is no terminal
    assert [r.getMessage() for r in caplog.records] == [
        f"downloading {path.as_uri()} -> {tmp_path / 'b.tgz'}"
    ]
    assert capsys.readouterr() == ("", "")


def test_existing_corrupt_file_is_reported(archive, tmp_path):
    path, md5, _ = archive
    dest = tmp_path / "tiny.tgz"
    dest.write_bytes(b"half a download")
    with pytest.raises(ChecksumError, match=md5):
        download(path.as_uri(), dest, md5=md5, progress=False)


def test_no_network_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv("FCNSEG_MIRROR", raising=False)
    dest = tmp_path / "x.tar"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download("http://127.0.0.1:9/data/x.tar", dest, md5="ab" * 16, timeout=5, hint="Lists: see README")
    message = str(info.value)
    assert message.startswith("could not download x.tar: http://127.0.0.1:9/data/x.tar (")
    assert f"by hand from http://127.0.0.1:9/data/x.tar (md5 {'ab' * 16}) and place it at {dest}" in message
    assert f"{dest}, then run again.\n" in message and message.endswith("\nLists: see README")
    assert (
        "FCNSEG_MIRROR=http://mirror.lan/fcn fetches this file from http://mirror.lan/fcn/data/x.tar"
        in message
    )
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert time.monotonic() - start < 5
    assert isinstance(info.value, FcnsegError) and isinstance(info.value, OSError)  # caught either way
    assert issubclass(DownloadError, ValueError) and issubclass(ChecksumError, FcnsegError)


def test_mirrors_are_tried_https_first_until_one_gives_the_file(archive, tmp_path, monkeypatch):
    monkeypatch.delenv("FCNSEG_MIRROR", raising=False)
    path, md5, _ = archive
    server = FileServer()
    try:
        server.files["/copy/tiny.tgz"] = path.read_bytes()
        remote = RemoteFile(
            f"{server.url}/gone/tiny.tgz",
            md5=md5,
            mirrors=("https://127.0.0.1:9/tiny.tgz", f"{server.url}/copy/tiny.tgz"),
        )
        assert remote.sources == (
            "https://127.0.0.1:9/tiny.tgz",
            f"{server.url}/gone/tiny.tgz",
            remote.mirrors[1],
        )
        dest = tmp_path / "tiny.tgz"
        got = download(remote.url, dest, md5=md5, mirrors=remote.mirrors, progress=False, timeout=5)
        assert got.read_bytes() == path.read_bytes()
        assert server.hits["/gone/tiny.tgz"] == 1 and server.hits["/copy/tiny.tgz"] == 1
        dest.unlink()
        del server.files["/copy/tiny.tgz"]
        with pytest.raises(DownloadError) as info:
            download(remote.url, dest, md5=md5, mirrors=remote.mirrors, progress=False, timeout=5)
        message = str(info.value)
        for source in remote.sources:  # each address with its reason, and each offered to fetch by hand
            assert f"{source} (" in message.splitlines()[0], source
        assert f"by hand from {' or '.join(remote.sources)} (md5 {md5})" in message
    finally:
        server.close()


def test_a_check_refuses_a_download_before_it_is_kept_or_recorded(archive, tmp_path):
    path, md5, _ = archive
    dest, record, seen = tmp_path / "tiny.tgz", tmp_path / "tiny.tgz.sha256", []

    def refuse(file, placed):
        seen.append((file.read_bytes() == path.read_bytes(), placed))
        raise FcnsegError("not the file")

    with pytest.raises(FcnsegError, match="not the file"):
        download(path.as_uri(), dest, progress=False, record=record, check=refuse)
    assert seen == [(True, False)] and list(tmp_path.iterdir()) == [path.parent]
    dest.write_bytes(path.read_bytes())  # placed by hand: checked before its digest is recorded
    with pytest.raises(FcnsegError, match="not the file"):
        download(path.as_uri(), dest, progress=False, record=record, check=refuse)
    assert seen[-1] == (True, True) and not record.exists()
    assert download(path.as_uri(), dest, md5=md5, progress=False, record=record) == dest
    assert record.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  tiny.tgz\n"


def test_remote_files_say_how_they_are_verified():
    with pytest.raises(ValueError, match="published checksum or size, or say unverified=True"):
        RemoteFile("https://example.org/a.bin")
    with pytest.raises(ValueError, match="not both"):
        RemoteFile("https://example.org/a.bin", md5="ab" * 16, unverified=True)
    cases = {
        RemoteFile("https://a.org/x", sha256="0676ba61"): "sha256 (8 digits)",
        RemoteFile("https://a.org/x", sha256="ab" * 32, size=5): "sha256+size",
        RemoteFile("http://a.org/x", sha1="ab" * 20, md5="ab" * 16): "sha1+md5, http",
        RemoteFile("http://a.org/x", md5="ab" * 16, mirrors=("https://b.org/x",)): "md5",
        RemoteFile("http://a.org/x", unverified=True): "no published checksum, http",
        RemoteFile("https://a.org/x", size=3): "size",
    }
    assert [remote.verified_by for remote in cases] == list(cases.values())


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
    assert ARCHIVES["nyud"].unverified and ARCHIVES["nyud"].verified_by == "no published checksum, http"


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
            dl.ARCHIVES, "tiny", RemoteFile("http://voc.invalid/pascal/VOC/tiny.tgz", md5=md5)
        )
        fetch("tiny", tmp_path / "data", progress=False)
        assert (tmp_path / "data/tiny/a.txt").read_bytes() == b"alpha"
        assert server.hits["/pascal/VOC/tiny.tgz"] == 1
        del server.files["/pascal/VOC/tiny.tgz"]
        with pytest.raises(DownloadError) as info:
            download("http://voc.invalid/pascal/VOC/tiny.tgz", tmp_path / "again.tgz", progress=False)
        message = str(info.value)  # the original to fetch by hand, and where the mirror must hold it
        assert message.startswith(f"could not download again.tgz: {server.url}/pascal/VOC/tiny.tgz (")
        assert "by hand from http://voc.invalid/pascal/VOC/tiny.tgz and place it at" in message
        assert (
            f"FCNSEG_MIRROR is {server.url}: the mirror must hold the file at {server.url}/pascal/VOC/tiny.tgz"
            in message
        )
        assert not (tmp_path / "again.tgz").exists()
    finally:
        server.close()


# Addresses that reach nothing even without conftest's guard: a name under .invalid never resolves
# (RFC 6761) and 192.0.2.0/24 is for documentation only (RFC 5737).
NO_SUCH_HOST_URL = "http://fcnseg.invalid/models/vgg16.pth"
DOCUMENTATION_ADDRESS = ("192.0.2.1", 80)


def test_tests_stay_offline():
    """conftest's guard: a download that a test did not point at the local server fails at once,
    before any name is looked up or any packet leaves."""
    with pytest.raises(urllib.error.URLError, match="tests stay offline"):
        urllib.request.urlopen(NO_SUCH_HOST_URL, timeout=5)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="tests stay offline"):
        sock.connect(DOCUMENTATION_ADDRESS)


def test_commands_tests_run_stay_offline():
    """A subprocess's download goes to a proxy nothing listens on, at once; the loopback's does not."""
    server = FileServer()
    server.files["/here.txt"] = b"local"
    script = (
        "import sys, urllib.error, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
        "try:\n"
        "    urllib.request.urlopen(sys.argv[2], timeout=5)\n"
        "except urllib.error.URLError as error:\n"
        "    print('refused', error.reason)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, f"{server.url}/here.txt", NO_SUCH_HOST_URL],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        server.close()
    assert done.stdout.splitlines()[0] == "local"
    assert done.stdout.splitlines()[1].startswith("refused [Errno 111]"), done.stdout
