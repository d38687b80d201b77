"""Downloading dataset archives: resumable HTTP, checksums, unpacking into the data root.

A dataset module declares a module-level ``DOWNLOAD = Download(archives=[...],
licence="...")`` (or ``Download(manual="...")`` where no automatic download is possible);
the registry picks it up with the module's datasets, and ``benchbio data download NAME``
runs :meth:`Download.run`, which calls :func:`fetch`. Each archive
is downloaded to ``<root>/.downloads/<filename>.part`` (resumed with an HTTP ``Range``
request after an interruption), checked against its published sha256 (and md5 where
only that is published), renamed, and unpacked into ``<root>/<subdir>``. An archive
with no trustworthy published checksum is refused unless the user accepts it with
``no_verify=True`` (``--no-verify``); its computed sha256 is printed either way.
"""

from __future__ import annotations

import hashlib
import http.client
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import BenchbioError, DataError

__all__ = ["Archive", "Download", "download_file", "file_digests", "unpack", "fetch"]

CHUNK = 1 << 20
TIMEOUT = 60


@dataclass(frozen=True)
class Archive:
    """One downloadable archive of a dataset.

    Attributes:
        url: where the publisher serves it.
        sha256: the expected digest, or None where no trustworthy one is published.
        md5: an expected md5 where that is what the publisher (or everyone) quotes.
        subdir: folder under the data root to unpack into ("" = the root itself).
        filename: local file name (default: the last part of the URL).
    """

    url: str
    sha256: str | None = None
    md5: str | None = None
    subdir: str = ""
    filename: str = ""

    @property
    def name(self) -> str:
        return self.filename or self.url.rstrip("/").rsplit("/", 1)[-1]


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"User-Agent": "benchbio"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the .part file already holds everything
            return None
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot reach {url}: {reason}; check the network, or download it by hand "
            "and unpack it into the data root"
        ) from None


def download_file(url: str, dest: Path, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start)
    if response is not None:
        with response:
            resumed = start > 0 and response.status == 206
            if not resumed:
                start = 0  # server ignored Range: start over
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                try:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        fh.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    raise DataError(
                        f"download of {url} was interrupted ({exc}); run the same command "
                        "again to resume it"
                    ) from None
        if total is not None and part.stat().st_size < total:
            raise DataError(
                f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run "
                "the same command again to resume it"
            )
    part.replace(dest)
    return dest


def verify(path: Path, archive: Archive, no_verify: bool = False,
           echo: Callable[[str], None] = print) -> str:
    """Check ``path`` against the archive's checksums; returns its sha256.

    A mismatch deletes the file and raises. With no published checksum the file is
    kept but refused (raise) unless ``no_verify``.
    """
    sha, md5 = file_digests(path)
    echo(f"{archive.name}: sha256 {sha}")
    expected = [(k, v, got) for k, v, got in (("sha256", archive.sha256, sha),
                                              ("md5", archive.md5, md5)) if v]
    for kind, want, got in expected:
        if want.lower() != got:
            if no_verify:
                echo(f"{archive.name}: {kind} mismatch ignored (--no-verify)")
                return sha
            path.unlink()
            raise DataError(
                f"{kind} mismatch for {archive.name}: expected {want}, got {got}; the file "
                "was corrupt or changed upstream and has been deleted: run the download "
                "again, or pass --no-verify to accept a changed file"
            )
    if not expected and not no_verify:
        raise DataError(
            f"{archive.name} has no published checksum; its sha256 is {sha}: check it "
            "(e.g. against docs/datasets.md) and rerun with --no-verify to accept it"
        )
    return sha


def unpack(path: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into ``dest`` (members outside ``dest`` are refused)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(dest)  # zipfile drops absolute paths and '..'
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(dest, filter="data")
                else:  # older Pythons: refuse members that would land outside dest
                    for member in tf.getmembers():
                        target = (dest / member.name).resolve()
                        if not target.is_relative_to(dest.resolve()):
                            raise DataError(f"{path}: member {member.name} is outside {dest}")
                    tf.extractall(dest)
        else:
            raise DataError(f"{path} is neither a zip nor a tar archive; delete it and retry")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot unpack {path}: {exc}; delete it and download again") from None


def fetch(
    archives: Sequence[Archive],
    root: Path,
    no_verify: bool = False,
    keep_archives: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """Download, verify and unpack each archive under ``root``; skip ones already done.

    A marker file ``<root>/.downloads/<name>.done`` records a finished archive.
    """
    root = Path(root)
    downloads = root / ".downloads"
    for archive in archives:
        marker = downloads / (archive.name + ".done")
        if marker.exists():
            echo(f"{archive.name}: already unpacked in {root / archive.subdir}")
            continue
        path = downloads / archive.name
        if not path.exists():
            echo(f"downloading {archive.url}")
            download_file(archive.url, path, progress=progress)
        verify(path, archive, no_verify=no_verify, echo=echo)
        unpack(path, root / archive.subdir)
        marker.write_text(archive.url + "\n")
        if not keep_archives:
            path.unlink()
        echo(f"{archive.name}: unpacked into {root / archive.subdir}")
    return root


@dataclass(frozen=True)
class Download:
    """How ``benchbio data download NAME`` gets a dataset: a module-level ``DOWNLOAD``.

    Attributes:
        archives: the archives to fetch (each with its published checksums), unpacked
            under the data root.
        licence: the terms the data come under, printed before anything is fetched.
        manual: for data that cannot be fetched automatically (registration, no public
            copy): what to do instead, with ``{root}`` standing for the data root; the
            command prints it as its one-line error.
    """

    archives: tuple[Archive, ...] = ()
    licence: str = ""
    manual: str = ""

    def run(self, root: Path, no_verify: bool = False, keep_archives: bool = False,
            echo: Callable[[str], None] = print) -> Path:
        """Fetch, verify and unpack the archives into ``root``; the manual instructions as
        a :class:`BenchbioError` where there are no archives."""
        if not self.archives:
            raise BenchbioError(self.manual.format(root=root) or "no download is known")
        if self.licence:
            echo(f"licence: {self.licence}")
        return fetch(self.archives, root, no_verify=no_verify, keep_archives=keep_archives,
                     echo=echo)
