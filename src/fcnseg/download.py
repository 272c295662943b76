"""Fetching files: download with a progress bar, verify checksums and sizes, extract safely, and,
where there is no network, say exactly what to fetch by hand and where to put it; also the list of
the paper's data-set archives. ``FCNSEG_MIRROR`` redirects every download to a mirror."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_write

__all__ = [
    "ARCHIVES",
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "download",
    "extract",
    "fetch",
    "mirrored",
    "verify",
]

_CHUNK = 1 << 20
_ALGORITHMS = ("md5", "sha1", "sha256")


class DownloadError(OSError):
    """A download that failed (no network, a dropped connection), with instructions to fetch the file by hand."""


class ChecksumError(FcnsegError):
    """A file whose checksum or size differs from the published (or recorded) one."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives, its checksums and size when known, and what else to know."""

    url: str
    md5: str | None = None
    sha256: str | None = None  # or its start, as torchvision's file names give it (8 hex digits)
    sha1: str | None = None
    size: int | None = None  # bytes, exact: checked
    extract: bool = True
    note: str = ""
    name: str = ""  # the file's name where the URL's path does not end in it (a Google Drive link)
    stated_size: str = ""  # the size as its source states it, rounded ("56MB"): shown, not checked

    @property
    def filename(self) -> str:
        return self.name or PurePosixPath(urllib.parse.urlsplit(self.url).path).name


_FCN_DATA = "https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data"

# Checksums are the published ones where known; None means unknown, and verification is then
# skipped with a warning (NYUD, SIFT Flow and PASCAL-Context publish none).
ARCHIVES: dict[str, RemoteFile] = {
    "voc2012": RemoteFile(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
    ),
    "voc2007": RemoteFile(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
        md5="c52e279531787c972589f7e41ab4ae64",
        note="Detection (SSD): with 'voc2007-test' and 'voc2012' under one folder, VOC07+12.",
    ),
    "voc2007-test": RemoteFile(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
        md5="b6e924de25625d8de591ea690078ad9f",
        note="VOC2007 test, where detectors are scored.",
    ),
    "voc2011": RemoteFile(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
        md5="6c3384ef61512963050cb5d687e5bf1e",
    ),
    "voc2010": RemoteFile(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        md5="da459979d0c395079b5c75ee67908abb",
        note="PASCAL-Context labels these images.",
    ),
    "sbd": RemoteFile(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
    ),
    "nyud": RemoteFile(
        "http://dl.caffe.berkeleyvision.org/nyud.tar.gz",
        note=f"The split lists train.txt, val.txt, test.txt are in {_FCN_DATA}/nyud; "
        "put them in the extracted nyud/ folder.",
    ),
    "siftflow": RemoteFile(
        "http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
        note=f"The split lists trainval.txt and test.txt are in {_FCN_DATA}/sift-flow; "
        "put them next to the extracted Images/ folder.",
    ),
    "pascal-context": RemoteFile(
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        note="Also needs 'pascal-context-59' and the VOC2010 images ('voc2010').",
    ),
    "pascal-context-59": RemoteFile(
        "https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt", extract=False
    ),
    # Edges and skeletons (HED, FSDS). HED's README states HED-BSDS's size; no source publishes a
    # checksum of any of them.
    "bsds500": RemoteFile(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
        note="BSR/BSDS500/data: HED is scored on its test split (--dataset bsds500, or the recipe's "
        "test_data).",
    ),
    "hed-bsds": RemoteFile(
        "https://vcl.ucsd.edu/hed/HED-BSDS.tar",
        stated_size="1.2GB",
        note="HED's training pairs: BSDS500's train and val images augmented offline, listed in "
        "HED-BSDS/train_pair.lst (--dataset hed-bsds).",
    ),
    "sk-large": RemoteFile(
        "http://kaiz.xyz/sk-large",
        name="SK-LARGE.zip",
        note="zeakey/skeleton's README links this address for SK-LARGE; where it answers with a page, "
        "take the archive it offers. Then 'fcnseg data prepare sk-large' makes FSDS's augmented "
        "training set.",
    ),
    "sk506": RemoteFile(
        "http://kaiz.xyz/deepsk",
        name="SK506.zip",
        note="DeepSkeleton's README links this project page for SK506 (also 'sk-large'): take the archive "
        "it offers.",
    ),
}


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$FCNSEG_MIRROR`` when that is set.

    ``FCNSEG_MIRROR=http://mirror.lan/fcn`` turns ``http://dl.caffe.berkeleyvision.org/x.caffemodel``
    into ``http://mirror.lan/fcn/x.caffemodel``: one copy of the original paths serves offline
    machines and tests.
    """
    prefix = os.environ.get("FCNSEG_MIRROR", "").strip()
    if not prefix:
        return url
    parts = urllib.parse.urlsplit(url)
    return prefix.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def verify(
    path: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    *,
    sha1: str | None = None,
    size: int | None = None,
) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the given size and digests; warn if none is given."""
    path = Path(path)
    expected = _expected(md5, sha1, sha256)
    if not expected and size is None:
        warnings.warn(f"no checksum known for {path}; not verified", stacklevel=2)
    _check_file(path, expected, size)


def _check_file(path: Path, expected: dict[str, str], size: int | None, origin: str = "") -> None:
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(_size_message(path, path.stat().st_size, size))
    hashes = {name: hashlib.new(name) for name in expected}
    if hashes:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                for h in hashes.values():
                    h.update(chunk)
    _compare(hashes, expected, path, origin)


def _expected(md5: str | None, sha1: str | None, sha256: str | None) -> dict[str, str]:
    given = dict(zip(_ALGORITHMS, (md5, sha1, sha256), strict=True))
    short = [f"{name} {digest!r}" for name, digest in given.items() if digest and len(digest) < 8]
    if short:
        raise ValueError(f"a checksum needs 8 hex digits at least: {', '.join(short)}")
    return {name: digest.lower() for name, digest in given.items() if digest}


def _compare(hashes: dict[str, Any], expected: dict[str, str], path: Path, origin: str = "") -> None:
    """A digest may be given by its start: torchvision names its files with the first 8 hex digits of
    their SHA-256 and checks those (torch.hub's ``check_hash``)."""
    for name, h in hashes.items():
        if not h.hexdigest().startswith(expected[name]):
            raise ChecksumError(
                f"{path}: {name} is {h.hexdigest()}, expected {expected[name]}{origin} "
                "(a corrupt or incomplete download, or a different release)"
            )


def _size_message(path: Path, actual: int, expected: int) -> str:
    return f"{path}: size is {actual:,} bytes, expected {expected:,} (an incomplete download, or a different release)"


def _read_record(record: Path) -> str | None:
    """The SHA-256 kept in a ``sha256sum``-style record file, or None if there is none yet."""
    if not record.is_file():
        return None
    fields = record.read_text().split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ChecksumError(f"{record}: not a SHA-256 record (expected '<64 hex digits>  <file name>')")
    return digest


def _write_record(record: Path, name: str, digest: str) -> None:
    atomic_write(record, lambda out: out.write(f"{digest}  {name}\n".encode()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    hint: str = "",
    *,
    sha1: str | None = None,
    size: int | None = None,
    record: str | Path | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; an existing ``dest`` is only verified.

    ``size`` (bytes) is checked against the server's Content-Length before anything is fetched,
    and against the bytes received. ``record`` names a ``sha256sum``-style file for a file that
    has no published checksum: the SHA-256 of the first download is written there, and later
    copies must match it. The bytes go through :func:`~fcnseg.weights.checkpoint.atomic_write`
    and are renamed only once complete and verified, so an interrupted, short or corrupt download
    never passes for the real file and leaves nothing behind. Without network a
    ``DownloadError`` says what to fetch by hand and where to put it (``hint`` is appended).
    ``$FCNSEG_MIRROR`` replaces the scheme and host of ``url`` (see :func:`mirrored`).
    """
    dest = Path(dest)
    record = Path(record) if record is not None else None
    recorded = _read_record(record) if record is not None else None
    if recorded is not None and sha256 is None:
        sha256, origin = recorded, f" (recorded at its first download in {record})"
    else:
        origin = ""
    expected = _expected(md5, sha1, sha256)
    if dest.exists():
        if not expected and size is None and record is None:
            warnings.warn(f"no checksum known for {dest}; not verified", stacklevel=2)
        _check_file(dest, expected, size, origin)
        if record is not None and recorded is None:  # placed by hand: its digest becomes the record
            _write_record(record, dest.name, _sha256(dest))
        return dest
    url = mirrored(url)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(_by_hand(url, dest, expected, reason, hint)) from exc
    with response:
        kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind == "text/html" and dest.suffix.lower() not in (".html", ".htm"):
            reason = "the server answered with a web page (a landing or confirmation page), not the file"
            raise DownloadError(_by_hand(url, dest, expected, reason, hint))
        total = int(response.headers.get("Content-Length") or 0) or None
        if size is not None and total is not None and total != size:
            raise ChecksumError(
                f"{url}: the server offers {total:,} bytes for {dest.name}, expected {size:,} "
                "(a different release, or a wrong mirror); nothing was downloaded"
            )

        to_record = record is not None and recorded is None
        digests: dict[str, str] = {}

        def receive(out: BinaryIO) -> None:
            hashes = {name: hashlib.new(name) for name in (*expected, *(["sha256"] if to_record else []))}
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            ) as bar:
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        for h in hashes.values():
                            h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (http.client.HTTPException, OSError) as exc:
                    raise DownloadError(_by_hand(url, dest, expected, exc, hint)) from exc
            if total is not None and received != total:
                reason = f"the connection closed after {received:,} of {total:,} bytes"
                raise DownloadError(_by_hand(url, dest, expected, reason, hint))
            if size is not None and received != size:
                raise ChecksumError(_size_message(dest, received, size))
            _compare({name: hashes[name] for name in expected}, expected, dest, origin)
            digests.update((name, h.hexdigest()) for name, h in hashes.items())

        atomic_write(dest, receive)
    if to_record:
        _write_record(record, dest.name, digests["sha256"])
        warnings.warn(
            f"no checksum is published for {dest.name}; its SHA-256 {digests['sha256']} is recorded in "
            f"{record} and later downloads are checked against it",
            stacklevel=2,
        )
    elif not expected and size is None:
        warnings.warn(f"no checksum known for {url}; {dest} not verified", stacklevel=2)
    return dest


def _by_hand(url: str, dest: Path, expected: dict[str, str], reason: object, hint: str) -> str:
    checksum = next((f" ({name} {digest})" for name, digest in expected.items()), "")
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
        sha1=archive.sha1,
        size=archive.size,
        progress=progress,
        hint=archive.note,
    )
    done = root / f".{archive.filename}.extracted"
    if archive.extract and not done.exists():
        extract(path, root)
        done.touch()
    return root
