"""Fetching the paper's data sets: download with progress, verify checksums, extract safely, and,
where there is no network, say exactly what to fetch by hand and where to put it."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from fcnseg.errors import FcnsegError

__all__ = [
    "ARCHIVES",
    "Archive",
    "ChecksumError",
    "DownloadError",
    "download",
    "extract",
    "fetch",
    "verify",
]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed, with instructions to fetch the file by hand."""


class ChecksumError(FcnsegError):
    """A file whose checksum differs from the published one."""


@dataclass(frozen=True)
class Archive:
    """One downloadable file: where it lives, its checksum when known, and what else to know."""

    url: str
    md5: str | None = None
    sha256: str | None = None
    extract: bool = True
    note: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url).name


_FCN_DATA = "https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data"

# Checksums are the published ones where known; None means unknown, and verification is then
# skipped with a warning (NYUD, SIFT Flow and PASCAL-Context publish none).
ARCHIVES: dict[str, Archive] = {
    "voc2012": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
    ),
    "voc2011": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
        md5="6c3384ef61512963050cb5d687e5bf1e",
    ),
    "voc2010": Archive(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        md5="da459979d0c395079b5c75ee67908abb",
        note="PASCAL-Context labels these images.",
    ),
    "sbd": Archive(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
    ),
    "nyud": Archive(
        "http://dl.caffe.berkeleyvision.org/nyud.tar.gz",
        note=f"The split lists train.txt, val.txt, test.txt are in {_FCN_DATA}/nyud; "
        "put them in the extracted nyud/ folder.",
    ),
    "siftflow": Archive(
        "http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
        note=f"The split lists trainval.txt and test.txt are in {_FCN_DATA}/sift-flow; "
        "put them next to the extracted Images/ folder.",
    ),
    "pascal-context": Archive(
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        note="Also needs 'pascal-context-59' and the VOC2010 images ('voc2010').",
    ),
    "pascal-context-59": Archive(
        "https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt", extract=False
    ),
}


def verify(path: str | Path, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the given digests; warn if none is given."""
    path = Path(path)
    if md5 is None and sha256 is None:
        warnings.warn(f"no checksum known for {path}; not verified", stacklevel=2)
        return
    hashes = _hashes(md5, sha256)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashes.values():
                h.update(chunk)
    _compare(hashes, md5, sha256, path)


def _hashes(md5: str | None, sha256: str | None) -> dict[str, Any]:
    wanted = {"md5": md5, "sha256": sha256}
    return {name: hashlib.new(name) for name, digest in wanted.items() if digest}


def _compare(hashes: dict, md5: str | None, sha256: str | None, path: Path) -> None:
    expected = {"md5": md5, "sha256": sha256}
    for name, h in hashes.items():
        if h.hexdigest() != expected[name].lower():
            raise ChecksumError(
                f"{path}: {name} is {h.hexdigest()}, expected {expected[name]} "
                "(a corrupt or incomplete download, or a different release)"
            )


def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` and verify it; an existing ``dest`` is only verified.

    The bytes go to a temporary file beside ``dest``, renamed only once complete and verified,
    so an interrupted or corrupt download never passes for the real file. Without network a
    ``DownloadError`` says what to fetch by hand and where to put it (``hint`` is appended).
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, md5, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashes = _hashes(md5, sha256)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            for h in hashes.values():
                                h.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DownloadError(_by_hand(url, dest, md5, sha256, reason, hint)) from exc
        if hashes:
            _compare(hashes, md5, sha256, dest)
        else:
            warnings.warn(f"no checksum known for {url}; {dest} not verified", stacklevel=2)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _by_hand(url: str, dest: Path, md5: str | None, sha256: str | None, reason: object, hint: str) -> str:
    checksum = f" (md5 {md5})" if md5 else f" (sha256 {sha256})" if sha256 else ""
    return (
        f"could not download {url} ({reason}).\n"
        f"Download it by hand from {url}{checksum} and place it at {dest.resolve()}, "
        "then run again." + (f"\n{hint}" if hint else "")
    )


def extract(archive: str | Path, root: str | Path) -> None:
    """Extract a tar (any compression) or zip archive into ``root``, refusing members that would
    land outside it (absolute paths, ``..``, links pointing out, device files)."""
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, root, m.name)
                if m.issym():
                    _check_member(archive, root, str(PurePosixPath(m.name).parent / m.linkname))
                elif m.islnk():
                    _check_member(archive, root, m.linkname)
                elif not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: refusing special file {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python without extraction filters; every member was checked above
                tar.extractall(root, members=members)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(archive, root, name)
            zf.extractall(root)
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive")


def _check_member(archive: Path, root: Path, name: str) -> None:
    target = (root / name).resolve()
    if os.path.isabs(name) or not target.is_relative_to(root.resolve()):
        raise ValueError(f"{archive}: refusing member {name!r}, which points outside {root}")


def fetch(name: str, root: str | Path, progress: bool = True) -> Path:
    """Download one of ``ARCHIVES`` into ``root`` and extract it there (once); returns ``root``."""
    if name not in ARCHIVES:
        raise KeyError(f"unknown archive {name!r}; known: {', '.join(ARCHIVES)}")
    archive, root = ARCHIVES[name], Path(root)
    path = download(
        archive.url,
        root / archive.filename,
        md5=archive.md5,
        sha256=archive.sha256,
        progress=progress,
        hint=archive.note,
    )
    done = root / f".{archive.filename}.extracted"
    if archive.extract and not done.exists():
        extract(path, root)
        done.touch()
    return root
