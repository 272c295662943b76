"""Fetching files: download with a progress bar, verify checksums and sizes, extract safely, and,
where there is no network, say exactly what to fetch by hand and where to put it; also the list of
the paper's data-set archives. ``FCNSEG_MIRROR`` redirects every download to a mirror.

Messages go to the ``fcnseg.download`` logger (nothing is configured here); progress bars are shown
on a terminal only."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shlex
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_write_path
from fcnseg.logs import show_bars

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
_MIRROR_EXAMPLE = "http://mirror.lan/fcn"

log = logging.getLogger("fcnseg.download")


class DownloadError(FcnsegError, OSError):
    """A download that failed (no network, a dropped connection, a web page where the file should be),
    with instructions to fetch the file by hand or through ``FCNSEG_MIRROR``. An :class:`FcnsegError`
    like every refusal of fcnseg's, and still the ``OSError`` it used to be, so that code catching
    either catches it."""


class _Unreachable(Exception):
    """One address that did not give the file; the next one may (the reason is the message)."""


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
    mirrors: tuple[str, ...] = ()  # other addresses of the same file, tried in turn, HTTPS first
    unverified: bool = False  # no checksum or size is published: said so, never assumed

    def __post_init__(self) -> None:
        known = self.has_checksum or self.size is not None
        if known == self.unverified:
            raise ValueError(
                f"{self.url}: give its published checksum or size, or say unverified=True "
                f"({'not both' if known else 'one of them'})"
            )

    @property
    def has_checksum(self) -> bool:
        """Whether a checksum of the file is published (md5, sha1 or sha256)."""
        return bool(self.md5 or self.sha1 or self.sha256)

    @property
    def filename(self) -> str:
        return self.name or PurePosixPath(urllib.parse.urlsplit(self.url).path).name

    @property
    def sources(self) -> tuple[str, ...]:
        """Every address of the file, HTTPS ones first, in the order given otherwise."""
        return _sources(self.url, self.mirrors)

    @property
    def verified_by(self) -> str:
        """What a download must match: ``sha1+md5``, ``sha256 (8 digits)`` (a prefix, as torchvision's
        file names give it), ``md5+size``, ``size`` or ``no published checksum``; ``, http`` where no source is HTTPS."""
        checks = [
            name if len(digest) >= hashlib.new(name).digest_size * 2 else f"{name} ({len(digest)} digits)"
            for name in ("sha256", "sha1", "md5")
            if (digest := getattr(self, name))
        ]
        text = "+".join(checks + (["size"] if self.size is not None else [])) or "no published checksum"
        return text if any(url.startswith("https://") for url in self.sources) else f"{text}, http"


_FCN_DATA = "https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data"

# Checksums are the published ones where known; unverified=True says that none is, and verification
# is then skipped with a warning (NYUD, SIFT Flow and PASCAL-Context publish none).
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
        unverified=True,
        note=f"The split lists train.txt, val.txt, test.txt are in {_FCN_DATA}/nyud; "
        "put them in the extracted nyud/ folder.",
    ),
    "siftflow": RemoteFile(
        "http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
        unverified=True,
        note=f"The split lists trainval.txt and test.txt are in {_FCN_DATA}/sift-flow; "
        "put them next to the extracted Images/ folder.",
    ),
    "pascal-context": RemoteFile(
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        unverified=True,
        note="Also needs 'pascal-context-59' and the VOC2010 images ('voc2010').",
    ),
    "pascal-context-59": RemoteFile(
        "https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt", extract=False, unverified=True
    ),
    # Edges and skeletons (HED, FSDS). HED's README states HED-BSDS's size; no source publishes a
    # checksum of any of them.
    "bsds500": RemoteFile(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
        unverified=True,
        note="BSR/BSDS500/data: HED is scored on its test split (--dataset bsds500, or the recipe's "
        "test_data).",
    ),
    "hed-bsds": RemoteFile(
        "https://vcl.ucsd.edu/hed/HED-BSDS.tar",
        unverified=True,
        stated_size="1.2GB",
        note="HED's training pairs: BSDS500's train and val images augmented offline, listed in "
        "HED-BSDS/train_pair.lst (--dataset hed-bsds).",
    ),
    "sk-large": RemoteFile(
        "http://kaiz.xyz/sk-large",
        unverified=True,
        name="SK-LARGE.zip",
        note="zeakey/skeleton's README links this address for SK-LARGE; where it answers with a page, "
        "take the archive it offers. Then `fcnseg data prepare sk-large {root}` makes FSDS's "
        "augmented training set.",
    ),
    "sk506": RemoteFile(
        "http://kaiz.xyz/deepsk",
        unverified=True,
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


def _sources(url: str, mirrors: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(sorted((url, *mirrors), key=lambda source: not source.startswith("https://")))


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


def _check_file(
    path: Path, expected: dict[str, str], size: int | None, origin: str = "", also: tuple[str, ...] = ()
) -> dict[str, str]:
    """Check ``path`` against ``expected`` digests and ``size``; returns its digests, ``also`` included."""
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(_size_message(path, path.stat().st_size, size))
    hashes = {name: hashlib.new(name) for name in (*expected, *also)}
    if hashes:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                for h in hashes.values():
                    h.update(chunk)
    _compare({name: hashes[name] for name in expected}, expected, path, origin)
    return {name: h.hexdigest() for name, h in hashes.items()}


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
    atomic_write_path(record, lambda tmp: tmp.write_text(f"{digest}  {name}\n"))


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
    mirrors: tuple[str, ...] = (),
    check: Callable[[Path, bool], None] | None = None,
    then: str = "run again",
) -> Path:
    """Download ``url`` to ``dest`` and verify it; an existing ``dest`` is only verified.

    ``size`` (bytes) is checked against the server's Content-Length before anything is fetched,
    and against the bytes received. ``record`` names a ``sha256sum``-style file, written once the
    file is verified, so that its presence says so; for a file with no published checksum the
    SHA-256 recorded there is the one later copies must match. ``check(path, placed)`` may refuse
    a file before its digest is first recorded: one found at ``dest`` (``placed``, by hand) or one
    just received, which is then not kept. The bytes go through
    :func:`~fcnseg.files.atomic_write_path` and are renamed only once complete and verified, so an
    interrupted, short or corrupt download never passes for the real file and leaves nothing behind.

    ``mirrors`` are other addresses of the file, tried in turn, HTTPS ones first. ``$FCNSEG_MIRROR``
    replaces the scheme and host of ``url`` and is then the only address (see :func:`mirrored`).
    Where none answers, a ``DownloadError`` says what to fetch by hand, where to put it and what to
    do then (``then``; ``hint`` is appended). ``progress``: a progress bar (on a terminal) and
    INFO messages on the ``fcnseg.download`` logger; warnings are logged either way.
    """
    dest = Path(dest)
    record = Path(record) if record is not None else None
    recorded = _read_record(record) if record is not None else None
    published = _expected(md5, sha1, sha256)
    expected, origin = dict(published), ""
    if recorded is not None and "sha256" not in expected:
        expected["sha256"], origin = recorded, f" (recorded at its first download in {record})"
    if dest.exists():
        if not expected and size is None and record is None:
            log.warning("no checksum known for %s; not verified", dest)
        try:
            digests = _check_file(dest, expected, size, origin, also=("sha256",) if record else ())
        except ChecksumError as error:
            raise ChecksumError(
                f"{error}; remove it to download it again, or put the file from {url} there"
            ) from None
        if recorded is None:  # placed by hand (or kept from before records were written): first check
            if check is not None:
                check(dest, True)
            if record is not None:
                _write_record(record, dest.name, digests["sha256"])
        return dest
    mirror = os.environ.get("FCNSEG_MIRROR", "").strip()
    failures: list[tuple[str, object]] = []
    for source in (mirrored(url),) if mirror else _sources(url, mirrors):
        try:
            first = check if recorded is None else None  # a recorded digest vouches for later copies
            digest = _receive(source, dest, expected, size, origin, timeout, progress, first)
            break
        except _Unreachable as error:
            failures.append((source, error))
            if progress:
                log.info("could not download %s (%s)", source, error)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)  # where the message says to put the file
        raise DownloadError(_by_hand(url, mirrors, dest, expected, failures, hint, then))
    if record is not None:
        _write_record(record, dest.name, digest)
        if not published:
            log.warning(
                "no checksum is published for %s; its SHA-256 %s is recorded in %s and later downloads "
                "are checked against it",
                dest.name,
                digest,
                record,
            )
    elif not expected and size is None:
        log.warning("no checksum known for %s; %s not verified", url, dest)
    return dest


def _receive(
    source: str,
    dest: Path,
    expected: dict[str, str],
    size: int | None,
    origin: str,
    timeout: float,
    progress: bool,
    check: Callable[[Path, bool], None] | None,
) -> str:
    """Download ``source`` to ``dest``, verified (and ``check``-ed) before it is renamed into place;
    returns its SHA-256. ``_Unreachable`` where the address does not give the file."""
    if progress:
        log.info("downloading %s -> %s", source, dest)
    try:
        response = urllib.request.urlopen(source, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # its body (a 404 page) is not read
        raise _Unreachable(getattr(exc, "reason", exc)) from exc
    with response:
        kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind == "text/html" and dest.suffix.lower() not in (".html", ".htm"):
            raise _Unreachable(
                "the server answered with a web page (a landing or confirmation page), not the file"
            )
        total = int(response.headers.get("Content-Length") or 0) or None
        if size is not None and total is not None and total != size:
            raise ChecksumError(
                f"{source}: the server offers {total:,} bytes for {dest.name}, expected {size:,} "
                "(a different release, or a wrong mirror); nothing was downloaded"
            )
        digest: list[str] = []

        def receive(tmp: Path) -> None:
            hashes = {name: hashlib.new(name) for name in {*expected, "sha256"}}
            received = 0
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not show_bars(progress),
            )
            with bar, tmp.open("wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        raise _Unreachable(exc) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _Unreachable(f"the connection closed after {received:,} of {total:,} bytes")
            if size is not None and received != size:
                raise ChecksumError(_size_message(dest, received, size))
            _compare({name: hashes[name] for name in expected}, expected, dest, origin)
            if check is not None:
                check(tmp, False)
            digest.append(hashes["sha256"].hexdigest())

        atomic_write_path(dest, receive)
    return digest[0]


def _by_hand(
    url: str,
    mirrors: tuple[str, ...],
    dest: Path,
    expected: dict[str, str],
    failures: list[tuple[str, object]],
    hint: str,
    then: str,
) -> str:
    """Where each address failed, how to put the file in place by hand, and how a mirror would serve it."""
    checksum = next((f" ({name} {digest})" for name, digest in expected.items()), "")
    tried = "; ".join(f"{source} ({reason})" for source, reason in failures)
    mirror = os.environ.get("FCNSEG_MIRROR", "").strip()
    path = urllib.parse.urlsplit(url).path
    if mirror:
        where = f"FCNSEG_MIRROR is {mirror}: the mirror must hold the file at {mirrored(url)}."
    else:
        where = (
            "Or set FCNSEG_MIRROR to a server that holds copies under their original paths: "
            f"FCNSEG_MIRROR={_MIRROR_EXAMPLE} fetches this file from {_MIRROR_EXAMPLE}{path}."
        )
    return (
        f"could not download {dest.name}: {tried}.\n"
        f"Download it by hand from {' or '.join(_sources(url, mirrors))}{checksum} and place it at "
        f"{dest.resolve()}, then {then}.\n{where}" + (f"\n{hint}" if hint else "")
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
        hint=archive.note.replace("{root}", shlex.quote(str(root))),
        mirrors=archive.mirrors,
        then=f"run `fcnseg data fetch {name} {shlex.quote(str(root))}` again",
    )
    done = root / f".{archive.filename}.extracted"
    if archive.extract and not done.exists():
        extract(path, root)
        done.touch()
    return root
