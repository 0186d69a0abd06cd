"""Fetch the official CIFAR archive, verify its md5, unpack it safely; the digests of data files.

The archive is written to a temporary file and only unpacked once its checksum matches;
a failed or interrupted download leaves nothing behind but a clear message. The unpacked folder
gets a list of its files' digests (``RELEASED``), so a file whose bytes change after the download
is refused on its next read.
"""

import hashlib
import json
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm


class DataError(Exception):
    """Missing, truncated or malformed data; the message says which file and what to do."""


def one_line(err: Exception) -> str:
    """The first line of an exception's message (tarfile and numpy write several), at most 200 characters."""
    return (str(err).splitlines() or [""])[0][:200]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


RELEASED = ".released-digests.json"  # beside the data files: their digests as unpacked from the checked archive
_DIGESTS: dict[Path, tuple[tuple, str]] = {}  # path → (stat key, digest of its bytes), as last read


def stat_key(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def remember_digest(path: Path, key: tuple, content: bytes) -> str:
    """The digest of ``content``, the bytes of ``path`` read when it had ``stat_key`` ``key``."""
    digest = hashlib.sha256(content).hexdigest()[:16]
    _DIGESTS[Path(path).resolve()] = key, digest
    return digest


def file_digest(path: Path) -> str | None:
    """The digest of a data file's bytes (None: no such file). A file is hashed when it is read
    (or here, once a process while its inode, size and times stay the same): an edit that keeps a
    file's size and time is still another digest in the next process."""
    path = Path(path)
    if not path.is_file():
        return None
    key = stat_key(path)
    known = _DIGESTS.get(path.resolve())
    return known[1] if known and known[0] == key else remember_digest(path, key, path.read_bytes())


def released_digest(path: Path) -> str | None:
    """The digest ``path`` had when it was unpacked from the md5-checked archive; None for a
    folder that was not downloaded here (or a file the archive did not hold)."""
    listing = Path(path).parent / RELEASED
    try:
        digests = json.loads(listing.read_text())
    except (OSError, ValueError):
        return None
    return digests.get(Path(path).name) if isinstance(digests, dict) else None


def fetch(url: str, destination: Path) -> None:
    """Stream ``url`` (http(s) or file://) into ``destination`` with a progress bar."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=None) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:  # URLError, timeouts and disk errors are all OSErrors
        raise DataError(f"could not download {url} ({one_line(err)}); check the network, or download it "
                        f"yourself and point --data-dir / LATENTPROBE_DATA at the unpacked folder")


def download_dataset(spec, root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download and unpack the archive of ``spec`` (a ``data.DatasetSpec``: its ``archive_url``,
    ``archive_md5`` and ``folder``) into ``root``; returns the data folder."""
    url = url or spec.archive_url
    md5 = md5 or spec.archive_md5
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(spec, root, url, md5)
    except BaseException:
        for folder in created:  # a mistyped --data-dir leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _download_into(spec, root: Path, url: str, md5: str) -> Path:
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        fetch(url, archive)
        actual = md5sum(archive)
        if actual != md5:
            raise DataError(f"checksum mismatch for {url}: md5 {actual}, expected {md5}; "
                            f"the download is corrupt or not the official archive, try again")
        unpacked = Path(tmp) / "unpacked"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")  # refuses absolute paths and links out
        except (tarfile.TarError, OSError) as err:
            raise DataError(f"could not unpack {url} ({one_line(err)}); nothing was kept in {root}: free disk space "
                            f"if it is full and try again")
        source = unpacked / spec.folder
        if not source.is_dir():
            raise DataError(f"{url} does not contain {spec.folder}/; it is not the CIFAR archive")
        released = {f.name: file_digest(f) for f in sorted(source.iterdir()) if f.is_file()}
        (source / RELEASED).write_text(json.dumps(released, indent=1) + "\n")
        target = root / spec.folder
        shutil.move(str(source), str(target))
    return target
