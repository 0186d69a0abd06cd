"""Shared fixtures: tiny CIFAR folders in the official python layouts, and the real data."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, record: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(record, f, protocol=2)


def _images(rng, labels: np.ndarray) -> np.ndarray:
    """Class-dependent colour plus noise, so tiny models can learn something."""
    base = (labels[:, None] * 23 % 256).astype(np.int64)
    return np.clip(base + rng.integers(0, 60, (len(labels), 3072)), 0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 40, test: int = 50, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch})
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        _dump(folder / name, {"batch_label": name, "labels": labels.tolist(), "data": _images(rng, labels)})
    return root


def write_cifar100(root: Path, train: int = 200, test: int = 50, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"fine_{i}" for i in range(100)]
    coarse_names = [f"coarse_{i}" for i in range(20)]
    _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    for name, n in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, n)
        _dump(folder / name, {"data": _images(rng, fine), "fine_labels": fine.tolist(),
                              "coarse_labels": (fine // 5).tolist(), "filenames": [b"x.png"] * n})
    return root


@pytest.fixture
def cifar10_root(tmp_path) -> Path:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def cifar100_root(tmp_path) -> Path:
    return write_cifar100(tmp_path / "data")


@pytest.fixture
def real_data_root() -> Path:
    """The real CIFAR-10 (LATENTPROBE_DATA). Skipped locally when absent; an error in CI."""
    root = Path(os.environ.get("LATENTPROBE_DATA", Path(__file__).parents[2] / "shared" / "data"))
    if not (root / "cifar-10-batches-py").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real CIFAR-10 not found under {root}; CI must set LATENTPROBE_DATA")
        pytest.skip("real CIFAR-10 not available (set LATENTPROBE_DATA)")
    return root


@pytest.fixture
def one_thread():
    """Tiny models and probe steps run faster on one thread, far faster on a shared CPU."""
    from latentprobe.probe.evaluate import cpu_threads
    with cpu_threads(1):
        yield
