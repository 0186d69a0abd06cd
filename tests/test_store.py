"""Features on disk (float16, read in row batches) and the one-pass probe grid."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from latentprobe.probe.evaluate import EvalConfig, trained_probe
from latentprobe.probe.heads import fit_head, fit_heads
from latentprobe.probe.store import CacheWriter, FeatureMatrix, read_cache, sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(count: int, dim: int = 24, classes: int = 4, seed: int = 0, spread: float = 2.5):
    """Overlapping Gaussian classes with non-negative, latent-like values."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    return (centres[labels] + spread * torch.randn(count, dim, generator=generator)).relu() * 10, labels


def store(tmp_path, splits: dict, key: dict | None = None):
    writer = CacheWriter(tmp_path / "features" / "encoder")
    for name, (x, y) in splits.items():
        writer.add(name, len(x), x.split(7), y)  # batches of an odd size: rows land where they belong
    writer.commit(key or {"weights": "abc"}, ["a", "b", "c", "d"])
    return read_cache(tmp_path / "features" / "encoder", key or {"weights": "abc"})


def test_a_cache_reads_back_as_float16_rows_and_only_under_its_key(tmp_path):
    x, y = blobs(50)
    features, labels, names = store(tmp_path, {"train": (x, y)})
    matrix = features["train"]
    assert isinstance(matrix, FeatureMatrix) and matrix.shape == (50, 24) and names == ["a", "b", "c", "d"]
    torch.testing.assert_close(matrix[:], x.half().float())  # float16 exactly, no more rounding
    index = torch.tensor([7, 3, 49, 3])
    assert matrix[index].dtype == torch.float32 and torch.equal(matrix[index], x.half().float()[index])
    assert torch.equal(labels["train"], y)
    assert read_cache(tmp_path / "features" / "encoder", {"weights": "other"}) is None  # another model's
    (tmp_path / "features" / "encoder" / "train.npy").write_bytes(b"\x93NUMPY truncated")
    assert read_cache(tmp_path / "features" / "encoder", {"weights": "abc"}) is None  # never trusted


def test_float16_features_give_the_same_probe_choice_as_float32(tmp_path):
    splits = {"train": blobs(600, seed=0), "val": blobs(200, seed=1), "test": blobs(400, seed=2)}
    features, labels, _ = store(tmp_path, splits)
    cfg = EvalConfig(probe_lrs=[1e-3, 1e-2], probe_weight_decays=[0.0, 1e-2], probe_epochs=8, probe_patience=8, probe_seeds=2, probe_batch_size=64)
    full = trained_probe("bn_linear", splits["train"], splits["val"], splits["test"], 4, cfg, "cpu")[0]
    half = trained_probe("bn_linear", (features["train"], labels["train"]), (features["val"], labels["val"]),
                         (features["test"], labels["test"]), 4, cfg, "cpu")[0]
    assert half["chosen"] == full["chosen"]
    assert [g["best_epoch"] for g in half["grid"]] == [g["best_epoch"] for g in full["grid"]]
    assert abs(half["test"]["mean"] - full["test"]["mean"]) < 0.01  # 4 of 400 test images at most


# the logistic probe is solved along its penalty path, each fit started from the last one: it equals
# separate fits at the optimum, not pass by pass (test_probe.py::test_the_penalty_path_reaches_…)
@pytest.mark.parametrize("kind", ["linear", "bn_linear", "mlp"])
def test_the_one_pass_grid_equals_separate_fits(kind):
    train, val = blobs(300, seed=0), blobs(100, seed=1)
    settings = [(1e-3, 0.0), (1e-2, 1e-3), (3e-3, 1e-4)]
    options = dict(epochs=6, batch_size=32, seed=3, patience=2, hidden=16, schedule="cosine")
    together = fit_heads(kind, train, val, 4, settings=settings, **options)
    for fit, (lr, weight_decay) in zip(together, settings):
        alone = fit_head(kind, train, val, 4, lr=lr, weight_decay=weight_decay, **options)
        assert fit.best_epoch == alone.best_epoch and len(fit.history) == len(alone.history)
        assert all(a == pytest.approx(b, rel=1e-4) for a, b in zip(fit.history, alone.history))
        with torch.no_grad():  # the same function (a bias before a BatchNorm has no gradient, only rounding)
            torch.testing.assert_close(fit.head(val[0]), alone.head(val[0]), atol=1e-4, rtol=1e-4)


def test_a_kill_mid_write_leaves_no_cache_and_the_next_writer_sweeps_its_folder(tmp_path):
    """A writer killed (SIGKILL) between two batches: no cache is ever read from its folder, and
    the next start removes it and writes a whole one."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        from latentprobe.probe.store import CacheWriter
        def batches():
            yield torch.ones(10, 4)
            print("half written", flush=True)
            time.sleep(60)
            yield torch.ones(10, 4)
        CacheWriter({str(tmp_path / "features" / "encoder")!r}).add("train", 20, batches(), torch.zeros(20))
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "half written"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    leftovers = list((tmp_path / "features").glob(".encoder.*.tmp"))
    assert len(leftovers) == 1 and (leftovers[0] / "train.npy").exists()  # a half-written file
    assert read_cache(tmp_path / "features" / "encoder", {"weights": "abc"}) is None
    sweep(tmp_path / "features")
    assert not leftovers[0].exists()
    features, _, _ = store(tmp_path, {"train": blobs(20)})
    assert len(features["train"]) == 20
