"""Cached features on disk: float16 ``.npy`` files, read in row batches, never held whole.

A cache is a folder (``RUN/features/<name>/``) holding, per split, ``<split>.npy`` (N, D)
float16 and ``<split>_labels.npy`` (N,) int64, and ``meta.json``: the key of what made them
(weights digest, data identity, options) and the class names. It is written into a hidden
temporary folder beside it and renamed into place whole, so a kill mid-write never leaves a cache
that is read: the next start sweeps the temporary folder away and extracts again.

Reading goes through ``FeatureMatrix``, which maps the file and copies out the rows asked for as
float32 tensors; it drops its mapped pages after every few hundred megabytes read, so the
process's resident memory stays at a batch's size while the operating system's page cache keeps
the file warm. float16 keeps 11 significant bits, far below what moves a probe (docs/RESULTS.md).
"""

import json
import mmap
import os
import shutil
from pathlib import Path

import numpy as np
import torch

FEATURE_DTYPE = np.float16
RELEASE_EVERY = 256 * 2**20  # bytes read between two drops of the mapped pages


class FeatureMatrix:
    """An (N, D) float16 ``.npy`` file as a read-only matrix: ``matrix[index]`` (a LongTensor, a
    slice or an int) gives float32 rows as a torch tensor; ``len``, ``shape`` as for a tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if fortran or dtype != FEATURE_DTYPE or len(shape) != 2:
            raise ValueError(f"{self.path} is not a float16 (N, D) feature file; delete it to extract again")
        self.shape = tuple(shape)
        self._file = open(self.path, "rb")  # noqa: SIM115 - held open with the mapping
        size = int(np.prod(self.shape))
        # copy-on-write: nothing is ever written, but numpy and torch then take the pages as writable
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self._array = (np.frombuffer(self._map, FEATURE_DTYPE, count=size, offset=offset).reshape(self.shape)
                       if size else np.zeros(self.shape, FEATURE_DTYPE))
        self._read = 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = torch.from_numpy(self._array[index]).float()  # torch converts float16 with SIMD; numpy does not
        self._read += rows.numel() * 2
        if self._read > RELEASE_EVERY and self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)  # unmapped from us; the page cache keeps the file
            self._read = 0
        return rows

    def tensor(self) -> torch.Tensor:
        """All rows as one float32 tensor (for small matrices: kNN banks, t-SNE, PCA)."""
        return self[slice(None)]

    def __repr__(self) -> str:
        return f"FeatureMatrix({str(self.path)!r}, shape={self.shape})"


class ConcatRows:
    """Matrices (tensors or FeatureMatrix files) stacked by rows without a copy: slices, ``len``
    and ``shape``, as a probe reads them (a refit on training + validation features)."""

    def __init__(self, *parts):
        self.parts = parts
        self.shape = (sum(len(p) for p in parts), parts[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> torch.Tensor:
        start, stop, _ = index.indices(len(self))
        pieces, offset = [], 0
        for part in self.parts:
            low, high = max(start - offset, 0), min(stop - offset, len(part))
            if low < high:
                pieces.append(part[low:high].float().cpu())
            offset += len(part)
        return torch.cat(pieces) if pieces else torch.empty(0, self.shape[1])


def shuffled_batches(features, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                     drop_last: bool = False, window_bytes: int = 2**27):
    """(features, labels) batches of an epoch in a shuffled order that reads ``features`` (a
    tensor or a FeatureMatrix) window by window: the rows are cut into windows of consecutive rows
    (a whole number of batches, about ``window_bytes`` as float32), the windows are visited in a
    random order, and each window's rows are shuffled into its batches. Each read is one
    contiguous slice. ``drop_last``: the one short batch (of the last window) is left out."""
    count, dim = len(features), features.shape[1]
    window = max(1, window_bytes // (4 * dim * batch_size)) * batch_size
    for start in (torch.randperm(-(-count // window), generator=generator) * window).tolist():
        rows, row_labels = features[start:start + window].float(), labels[start:start + window]
        order = torch.randperm(len(rows), generator=generator)
        for first in range(0, len(rows), batch_size):
            index = order[first:first + batch_size]
            if drop_last and len(index) < batch_size:
                continue
            yield rows[index.to(rows.device)], row_labels[index.to(row_labels.device)]


class CacheWriter:
    """Writes one cache folder: ``add(split, batches, labels)`` streams float32 batches into
    ``<split>.npy`` as float16, then ``commit(key, class_names)`` renames the folder into place."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tmp = self.folder.with_name(f".{self.folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.shapes: dict[str, list[int]] = {}

    def add(self, split: str, count: int, batches, labels: torch.Tensor) -> None:
        """``count`` rows from ``batches`` (an iterable of (b, D) tensors) and their labels."""
        with open(self.tmp / f"{split}.npy", "wb") as f:
            written, dim = 0, None
            for batch in batches:
                batch = batch.detach().to("cpu", torch.float32).numpy().astype(FEATURE_DTYPE)
                if dim is None:  # the header needs the width: written before the first rows
                    dim = batch.shape[1]
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(
                        np.dtype(FEATURE_DTYPE)), "fortran_order": False, "shape": (count, dim)})
                f.write(batch.tobytes())
                written += len(batch)
            if written != count:
                raise RuntimeError(f"{split}: {written} feature rows written, {count} expected")
        np.save(self.tmp / f"{split}_labels.npy", labels.cpu().numpy().astype(np.int64))
        self.shapes[split] = [count, dim]

    def commit(self, key: dict, class_names: list[str]) -> None:
        (self.tmp / "meta.json").write_text(json.dumps({"key": key, "class_names": class_names,
                                                        "shapes": self.shapes}))
        if self.folder.exists():
            shutil.rmtree(self.folder)  # a stale cache (another key): never read again
        os.replace(self.tmp, self.folder)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_cache(folder: Path, key: dict):
    """``(features, labels, class_names)`` of the cache in ``folder`` if it was made under ``key``,
    else None (missing, unfinished, another key, or unreadable: extracted again, never trusted)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        features = {split: FeatureMatrix(folder / f"{split}.npy") for split in meta["shapes"]}
        labels = {split: torch.from_numpy(np.load(folder / f"{split}_labels.npy", allow_pickle=False))
                  for split in meta["shapes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(list(features[s].shape) != meta["shapes"][s] or len(labels[s]) != meta["shapes"][s][0]
           for s in features):
        return None
    return features, labels, meta["class_names"]


def sweep(parent: Path) -> None:
    """Remove the temporary folders of writers that are gone (killed mid-write)."""
    for tmp in Path(parent).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
