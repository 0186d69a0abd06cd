"""The MAE through `latentprobe train`: resume, pictures, and 2 CPU ranks under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_finetune import TINY_MAE, _pretrain, interrupt_after_first_epoch

from latentprobe.checkpoint import load_checkpoint
from latentprobe.runs import Run, read_jsonl


def test_mae_run_resumes_to_the_same_result_and_keeps_grids(cifar10_root, tmp_path, monkeypatch):
    import latentprobe.training.pretrain
    straight = _pretrain(cifar10_root, tmp_path / "straight", epochs=2, grid_every=2)
    interrupt_after_first_epoch(monkeypatch, latentprobe.training.pretrain)  # cosine lr: same schedule length
    with pytest.raises(KeyboardInterrupt):
        _pretrain(cifar10_root, tmp_path / "resumed", epochs=2, grid_every=2)
    resumed = _pretrain(cifar10_root, tmp_path / "resumed", epochs=2, grid_every=2)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in read_jsonl(straight / "metrics.jsonl")] == \
           [r["train_loss"] for r in read_jsonl(resumed / "metrics.jsonl")]
    assert sorted(p.name for p in (straight / "grids").iterdir()) == ["epoch_0002.png"]
    rows = torch.load(straight / "reconstructions.pt", weights_only=True)
    assert list(rows) == ["original", "masked", "reconstruction"]


def test_two_cpu_ranks_under_torchrun(cifar10_root, tmp_path):
    """torchrun, 2 processes, gloo: one set of files, a checkpoint that loads in one process."""
    run = tmp_path / "ddp"
    model_args = " ".join(f"{k}={v}" for k, v in TINY_MAE.items())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(Path(__file__).with_name("ddp_job.py"))]
    common = ["--device", "cpu", "--data-dir", str(cifar10_root)]
    pretrain = ["train", "--model", "mae_vit_micro_patch4", "--model-args", model_args, "--latent-dim", "none",
                "--optimizer", "adamw", "--val-size", "40", "--epochs", "2", "--batch-size", "16",
                "--out", str(run), *common]
    tune = ["finetune", str(run), "--epochs", "1", "--batch-size", "16", *common]
    done = subprocess.run([*launch, *pretrain, "--then", *tune], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks" in done.stdout and done.stdout.count("fine-tuned classifier") == 1  # rank 0 reports
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes
    model, checkpoint = Run(run).model("cpu"), Run(run).checkpoint  # N-rank checkpoint, one process
    assert checkpoint["epoch"] == 2 and not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["model"])
    assert model.encode(torch.zeros(2, 3, 32, 32)).shape == (2, 32)

    assert len(read_jsonl(run / "finetune" / "metrics.jsonl")) == 1
    assert (run / "finetune.json").is_file() and (run / "mae_report.md").is_file()
