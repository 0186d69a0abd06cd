"""CIFAR-10 / CIFAR-100 from the official python layout, loaded once as uint8 tensors.

Batches are cut from tensors that already live on the training device: shuffling is a
``randperm``, normalisation and augmentation happen per batch on the device. There is no
per-sample Python transform anywhere.
"""

import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from latentprobe.data.download import (
    DataError,
    download_dataset,
    file_digest,
    one_line,
    released_digest,
    remember_digest,
    stat_key,
)


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    archive_url: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]  # per channel, 0..255
    std: tuple[float, float, float]
    coarse_label_key: str | None = None
    coarse_names_key: str | None = None


DATASETS = {
    "cifar10": DatasetSpec(
        folder="cifar-10-batches-py",
        archive_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta", label_key="labels", names_key="label_names",
        mean=(125.307, 122.950, 113.865), std=(62.993, 62.089, 66.705),
    ),
    "cifar100": DatasetSpec(
        folder="cifar-100-python",
        archive_url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",), test_files=("test",),
        meta_file="meta", label_key="fine_labels", names_key="fine_label_names",
        mean=(129.304, 124.070, 112.434), std=(68.170, 65.392, 70.418),
        coarse_label_key="coarse_labels", coarse_names_key="coarse_label_names",
    ),
}


@dataclass
class Split:
    """One split: ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,), class names.

    CIFAR-100 also carries ``coarse_labels`` / ``coarse_names`` (20 superclasses).
    """
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    dataset: str
    coarse_labels: torch.Tensor | None = None
    coarse_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "Split":
        coarse = None if self.coarse_labels is None else self.coarse_labels[indices]
        return replace(self, images=self.images[indices], labels=self.labels[indices], coarse_labels=coarse)

    def with_label_type(self, label_type: str) -> "Split":
        """``"fine"`` (default labels) or ``"coarse"`` (CIFAR-100's 20 superclasses)."""
        if label_type == "fine":
            return self
        if label_type != "coarse" or self.coarse_labels is None:
            raise DataError(f"label type {label_type!r} is not available for {self.dataset}; use 'fine'")
        return replace(self, labels=self.coarse_labels, class_names=self.coarse_names)

    def to(self, device) -> "Split":
        coarse = None if self.coarse_labels is None else self.coarse_labels.to(device)
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), coarse_labels=coarse)


# ---------------------------------------------------------------- reading the batch files

class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


MAX_ARRAY_BYTES = 60_000 * 3 * 32 * 32 * 8  # the largest array CIFAR's layout allows (all images, int64 labels)


class _RestrictedUnpickler(pickle._Unpickler):
    """Admits only what CIFAR batch files contain: dicts, lists, strings, numbers and numpy
    arrays. Any other global (``os.system``, ``builtins.eval``, …) is refused, so a planted
    file cannot run code. The pure-Python unpickler over the file's bytes, not the C one over
    the file: its memo is a dict and its reads stop at the end of the bytes, so a mangled file
    claiming a memo slot or a frame of 2**50 cannot make it allocate gigabytes."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 pickles (the official files)
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2 pickles
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles: an array over bytes of the file
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def __init__(self, data: bytes, **kwargs):
        super().__init__(io.BytesIO(data), **kwargs)
        self.limit = len(data)  # an array holds no more bytes than the file it came from

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"refusing to load global {module}.{name}")

    def load_build(self):
        """An array's state is checked before numpy allocates it: its declared size must fit in
        the file (a 127-byte file cannot declare a 460 MB array) and in CIFAR's layout."""
        state, instance = self.stack[-1], self.stack[-2]
        if isinstance(instance, np.ndarray) and isinstance(state, tuple) and len(state) == 5:
            shape, dtype = state[1], state[2]
            if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
                    and isinstance(dtype, np.dtype)):
                raise _ForbiddenGlobal(f"an array state of shape {shape!r} and dtype {dtype!r}")
            size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if size > min(self.limit, MAX_ARRAY_BYTES):
                raise _ForbiddenGlobal(f"an array of shape {shape} ({size:,} bytes) in a file of {self.limit:,} "
                                       f"bytes")
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def dataset_files(dataset: str, folder: Path) -> dict[str, str | None]:
    """Each file of a CIFAR folder with the digest of its bytes: what a run records on its first
    read and checks on every resume, so a file that changed under it is named."""
    spec = DATASETS[dataset]
    return {name: file_digest(Path(folder) / name) for name in (spec.meta_file, *spec.train_files, *spec.test_files)}


def read_batch_file(path: Path) -> dict:
    """Unpickle one CIFAR file with the restricted unpickler; str keys, any protocol. The digest of
    the bytes read is kept (``file_digest``)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; re-download the data set (drop --no-download) "
                        f"or point --data-dir / LATENTPROBE_DATA at a complete copy")
    key = stat_key(path)
    content = path.read_bytes()
    digest = remember_digest(path, key, content)
    released = released_digest(path)
    if released is not None and digest != released:
        raise DataError(f"{path} is not the file unpacked from the md5-checked archive (its bytes changed since); "
                        f"delete {path.parent} and re-download")
    try:
        loaded = _RestrictedUnpickler(content, encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise DataError(f"{path} is not a plain CIFAR batch file ({err}); delete it and re-download")
    except Exception as err:  # any failure to unpickle a data file (a frame claiming 2**50 bytes
        # is a MemoryError or OverflowError, a mangled opcode anything at all) means a corrupt file
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {one_line(err)}); "
                        f"delete it and re-download") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} does not hold a CIFAR batch dict; delete it and re-download")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in loaded.items()}


def _field(record: dict, key: str, path: Path):
    if key not in record:
        raise DataError(f"{path} has no {key!r} entry; it is not a CIFAR file of this layout")
    return record[key]


def _images_and_labels(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    record = read_batch_file(path)
    data = np.asarray(_field(record, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} "
                        f"{data.shape}; delete it and re-download")
    labels = {}
    for key in filter(None, (spec.label_key, spec.coarse_label_key)):
        try:
            values = np.asarray(_field(record, key, path))
        except (ValueError, TypeError) as err:  # ragged or mixed lists
            raise DataError(f"{path}: {key} is not a list of integers ({one_line(err)}); delete it and re-download")
        if values.size and values.dtype.kind not in "iu":  # 1.7 is no class; "3" is text, not a label
            raise DataError(f"{path}: {key} must be integers, got {values.dtype} values such as "
                            f"{values.flat[0]!r}; delete it and re-download")
        values = values.astype(np.int64)
        if values.shape != (len(data),):
            raise DataError(f"{path}: {len(data)} images but {values.size} {key}; "
                            f"delete it and re-download")
        labels[key] = values
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta: dict, key: str, path: Path) -> list[str]:
    names = _field(meta, key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: {key} must be a list of class names, got {type(names).__name__} "
                        f"{str(names)[:60]}; delete it and re-download")
    names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    expected = {"label_names": 10, "fine_label_names": 100, "coarse_label_names": 20}.get(key)
    if (expected and len(names) != expected) or len(set(names)) != len(names) or \
            not all(n and n.isprintable() for n in names):
        raise DataError(f"{path}: {key} must be {expected or 'the'} distinct printable class names, got "
                        f"{len(names)} such as {names[:3]!r}; delete it and re-download")
    return names


_SPLITS: OrderedDict[tuple, Split] = OrderedDict()  # the last splits read, while their files stay the same
_KEEP_SPLITS = 4


def load_split(dataset: str = "cifar10", split: str = "train", root: Path | None = None,
               download: bool = True) -> Split:
    """Read ``split`` ("train" or "test") of ``dataset`` from ``root`` (see ``data_root``). The last
    few splits read stay in memory while their files are unchanged: a study of six runs reads the
    files once (treat a split's tensors as read-only)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    spec = DATASETS[dataset]
    folder = data_root(root) / spec.folder
    if not folder.is_dir():
        if not download:
            raise DataError(f"{folder} not found; download it (drop --no-download) or point "
                            f"--data-dir / LATENTPROBE_DATA at the folder that contains {spec.folder}/")
        download_dataset(spec, folder.parent)

    meta_path = folder / spec.meta_file
    files = spec.train_files if split == "train" else spec.test_files
    try:
        key = (dataset, split, folder.resolve(), *(stat_key(folder / name) for name in (spec.meta_file, *files)))
    except OSError:  # a missing file: read_batch_file says so below
        key = None
    if key in _SPLITS:
        _SPLITS.move_to_end(key)
        return _SPLITS[key]
    meta = read_batch_file(meta_path)
    parts = [_images_and_labels(folder / name, spec) for name in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = {k: torch.from_numpy(np.concatenate([p[1][k] for p in parts])) for k in parts[0][1]}
    names = _names(meta, spec.names_key, meta_path)
    if int(labels[spec.label_key].max()) >= len(names) or int(labels[spec.label_key].min()) < 0:
        raise DataError(f"{folder}: labels outside 0..{len(names) - 1}; delete the folder and re-download")
    coarse = labels.get(spec.coarse_label_key) if spec.coarse_label_key else None
    coarse_names = _names(meta, spec.coarse_names_key, meta_path) if spec.coarse_names_key else None
    loaded = Split(images=images, labels=labels[spec.label_key], class_names=names, dataset=dataset,
                   coarse_labels=coarse, coarse_names=coarse_names)
    if key is not None:
        _SPLITS[key] = loaded
        while len(_SPLITS) > _KEEP_SPLITS:
            _SPLITS.popitem(last=False)
    return loaded


def data_root(root: Path | str | None = None) -> Path:
    """``--data-dir``, else ``$LATENTPROBE_DATA``, else a per-user cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("LATENTPROBE_DATA"):
        return Path(os.environ["LATENTPROBE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "latentprobe"


def train_val_split(train: Split, val_size: int, seed: int = 0) -> tuple[Split, Split]:
    """Carve a seeded validation split out of the training set (for every model choice)."""
    if not 0 <= val_size < len(train):
        raise DataError(f"val_size must be in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])


def take(split: Split, limit: int | None, seed: int = 0) -> Split:
    """A seeded random subset of at most ``limit`` images (None: all), for quick runs."""
    if limit is None or limit >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:limit])


# ---------------------------------------------------------------- batches on the device

class Normalizer:
    """uint8 (B, 3, H, W) on any device → float, normalised per channel; and back."""

    def __init__(self, dataset: str, device: torch.device | str = "cpu", stats=None):
        """CIFAR's published per-channel statistics, or ``stats`` = (mean, std) given."""
        mean, std = stats if stats is not None else (DATASETS[dataset].mean, DATASETS[dataset].std)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def of(cls, train: Split, device: torch.device | str = "cpu") -> "Normalizer":
        """The normaliser of a training split: CIFAR's own statistics, else the mean and standard
        deviation per channel of these training images."""
        if train.dataset in DATASETS:
            return cls(train.dataset, device)
        sums = torch.zeros(2, 3, dtype=torch.float64)
        step = max(1, (1 << 22) // train.images[0].numel())  # chunks of 4 M values: never a whole copy
        for start in range(0, len(train), step):
            chunk = train.images[start:start + step].double()
            sums += torch.stack([chunk.sum((0, 2, 3)), chunk.pow(2).sum((0, 2, 3))])
        count = train.images[:, 0].numel()
        mean = sums[0] / count
        std = (sums[1] / count - mean ** 2).clamp_min(1e-6).sqrt()
        return cls(train.dataset, device, (mean.tolist(), std.tolist()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def to_unit(self, normalised: torch.Tensor) -> torch.Tensor:
        """Back to pixels in [0, 1] (clamped), for pictures, MSE and PSNR."""
        return ((normalised.float() * self.std + self.mean) / 255.0).clamp(0.0, 1.0)


def batch_indices(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                  drop_last: bool = False, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = "cpu"):
    """Index tensors of each batch. With ``world_size > 1`` each rank gets its own share of
    one shared permutation (same generator seed on every rank), all shares equally long."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        per_rank = n // world_size
        order = order[rank * per_rank:(rank + 1) * per_rank]
    order = order.to(device)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def augment(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop (reflect-padded by ``pad``) and horizontal flip of a whole batch, on its device."""
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad,) * 4, mode="reflect")  # (B, C, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(device)
    flip = torch.randint(0, 2, (b,), generator=generator).to(device).bool()
    rows = (dy.view(b, 1, 1, 1) + torch.arange(h, device=device).view(1, 1, h, 1))
    padded = padded.gather(2, rows.expand(b, c, h, w + 2 * pad))  # (B, C, H, W+2p)
    cols = (dx.view(b, 1, 1, 1) + torch.arange(w, device=device).view(1, 1, 1, w))
    cropped = padded.gather(3, cols.expand(b, c, h, w))  # (B, C, H, W)
    return torch.where(flip.view(b, 1, 1, 1), cropped.flip(3), cropped)
