"""The one atomic writer: whole files or none, flushed with their folder, and a full disk named."""

import errno
import os
import stat

import pytest

import fcnseg
from fcnseg import files
from fcnseg.files import WriteError, atomic_write, temporary_files

TINY = (4, 8, 8, 16, 16, 32)


def test_the_file_and_then_its_folder_are_flushed(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def fsync(fd):
        flushed.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"new"))
    assert flushed == [False, True]  # the data before the rename, the rename after it
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    flushed.clear()
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"output"), durable=False)
    assert flushed == [False]  # an output by the thousand: the data, not the folder's journal


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_a_full_disk_leaves_the_old_file_and_names_the_new_one_and_the_room_left(
    tmp_path, monkeypatch, stage
):
    target = tmp_path / "run" / "last.pt"
    fcnseg.save_checkpoint(fcnseg.build_model("fcn32s", 3, widths=TINY), target)
    before = target.read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")

    def write(f):
        f.write(b"partial")
        if stage == "write":
            raise full

    def fail(*args):
        raise full

    if stage != "write":
        monkeypatch.setattr(os, stage, fail)
    with pytest.raises(WriteError) as raised:
        atomic_write(target, write)
    monkeypatch.undo()
    message = str(raised.value)
    assert message.startswith(f"cannot write {target}: No space left on device (")
    assert f"free on the disk of {target.parent})" in message
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert target.read_bytes() == before and fcnseg.load_checkpoint(target).config["arch"] == "fcn32s"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]  # no temporary file left


def test_a_writers_own_error_passes_through(tmp_path):
    """An OSError without an errno is the writer's (PIL's "cannot write mode"), not the disk's."""

    def write(f):
        raise OSError("cannot write mode RGBA as JPEG")

    with pytest.raises(OSError, match="^cannot write mode RGBA as JPEG$") as raised:
        atomic_write(tmp_path / "x.jpg", write)
    assert not isinstance(raised.value, WriteError)
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_told_in_words():
    assert [files._size(n) for n in (0, 999, 1500, 2_500_000, 7_300_000_000)] == [
        "0 bytes",
        "999 bytes",
        "1.5 kB",
        "2.5 MB",
        "7.3 GB",
    ]


def test_temporary_files_are_the_writers_alone(tmp_path):
    for name in (".last.pt.abc123.tmp", ".best.pt.x.tmp", "last.pt", "notes.tmp", ".tmp", ".hidden"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".log.csv.q1.tmp").mkdir()  # a folder is nobody's temporary file
    assert [p.name for p in temporary_files(tmp_path)] == [".best.pt.x.tmp", ".last.pt.abc123.tmp"]
