import pytest
import torch

from latentprobe.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from latentprobe.models import create_model
from latentprobe.models.conv_ae import ConvAutoencoder
from latentprobe.runs import read_jsonl
from latentprobe.training.engine import TrainingError
from latentprobe.training.pretrain import TrainConfig, train


def _config(root, out, **overrides) -> TrainConfig:
    settings = dict(model="conv_ae", latent_dim=8, model_args={"c1": 4, "c2": 8}, data_dir=str(root),
                    download=False, val_size=40, epochs=2, batch_size=32, out=str(out))
    return TrainConfig(**{**settings, **overrides})


def test_checkpoint_round_trip(tmp_path):
    model = create_model("conv_ae", latent_dim=8, c1=4, c2=8)
    save_checkpoint(tmp_path / "c.pt", kind="autoencoder", model_name="conv_ae", model_config=model.config,
                    model=model.state_dict(), epoch=3)
    checkpoint = load_checkpoint(tmp_path / "c.pt", model_name="conv_ae")
    restored = create_model("conv_ae", **checkpoint["model_config"])
    restored.load_state_dict(checkpoint["model"])
    assert checkpoint["epoch"] == 3 and not (tmp_path / "c.pt.tmp").exists()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


def test_run_directory_contents(cifar10_root, tmp_path):
    run = train(_config(cifar10_root, tmp_path / "run"))
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "reconstructions.png", "loss.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_mse", "val_psnr", "images_per_s"} <= set(records[0])
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    best = min(records, key=lambda r: r["val_loss"])
    assert checkpoint["best_epoch"] == best["epoch"] and checkpoint["best_val_loss"] == best["val_loss"]


def test_interrupted_run_resumes_to_the_same_result(cifar10_root, tmp_path):
    straight = train(_config(cifar10_root, tmp_path / "straight", epochs=3))
    train(_config(cifar10_root, tmp_path / "resumed", epochs=1))  # "interrupted" after epoch 1
    resumed = train(_config(cifar10_root, tmp_path / "resumed", epochs=3))
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train_loss"] for r in read_jsonl(straight / "metrics.jsonl")] == \
           [r["train_loss"] for r in read_jsonl(resumed / "metrics.jsonl")]


def test_checkpoint_every_n_epochs_resumes_from_the_last_one_written(cifar10_root, tmp_path, monkeypatch):
    """Epochs after the last checkpoint are trained again on resume, their metrics lines replaced,
    and the result equals a run checkpointed every epoch."""
    import latentprobe.training.pretrain as pretrain

    original, calls = pretrain.evaluate_reconstruction, []

    def killed_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    sparse = _config(cifar10_root, tmp_path / "sparse", epochs=5, checkpoint_every=2)
    monkeypatch.setattr(pretrain, "evaluate_reconstruction", killed_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(sparse)
    assert load_checkpoint(tmp_path / "sparse" / "checkpoint.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(tmp_path / "sparse" / "metrics.jsonl")] == [1, 2, 3]
    monkeypatch.setattr(pretrain, "evaluate_reconstruction", original)
    resumed = load_checkpoint(train(sparse) / "checkpoint.pt")
    assert resumed["epoch"] == 5
    assert [r["epoch"] for r in read_jsonl(tmp_path / "sparse" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    straight = load_checkpoint(train(_config(cifar10_root, tmp_path / "straight", epochs=5)) / "checkpoint.pt")
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_stretching_a_cosine_schedule_on_resume_is_announced(cifar10_root, tmp_path, capsys):
    train(_config(cifar10_root, tmp_path / "cosine", epochs=1, schedule="cosine"))
    train(_config(cifar10_root, tmp_path / "cosine", epochs=2, schedule="cosine"))
    assert "cosine schedule now spans 2 epochs instead of 1" in capsys.readouterr().out
    train(_config(cifar10_root, tmp_path / "constant", epochs=1, schedule="constant"))
    train(_config(cifar10_root, tmp_path / "constant", epochs=2, schedule="constant"))
    assert "schedule now spans" not in capsys.readouterr().out


def test_base_lr_sets_the_learning_rate_from_the_batch(cifar10_root, tmp_path):
    run = train(_config(cifar10_root, tmp_path / "run", epochs=1, base_lr=0.08))  # lr left at its default
    assert read_jsonl(run / "metrics.jsonl")[0]["lr"] == pytest.approx(0.08 * 32 / 256)


def test_finished_run_is_not_redone(cifar10_root, tmp_path, capsys):
    run = train(_config(cifar10_root, tmp_path / "run", epochs=1))
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    train(_config(cifar10_root, tmp_path / "run", epochs=1))
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_checkpoint_of_another_model_or_setting_is_refused(cifar10_root, tmp_path):
    train(_config(cifar10_root, tmp_path / "run", epochs=1))
    with pytest.raises(CheckpointError, match="holds a 'conv_ae' model, not 'mae_vit_micro_patch4'"):
        train(_config(cifar10_root, tmp_path / "run", model="mae_vit_micro_patch4", latent_dim=None, model_args={}))
    with pytest.raises(CheckpointError, match="other settings.*latent_dim"):
        train(_config(cifar10_root, tmp_path / "run", latent_dim=16))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_nan_loss_stops_and_keeps_the_last_checkpoint(cifar10_root, tmp_path, monkeypatch):
    run = train(_config(cifar10_root, tmp_path / "run", epochs=1))
    before = (run / "checkpoint.pt").read_bytes()
    original = ConvAutoencoder.loss

    def diverging(self, images):
        loss, reconstruction = original(self, images)
        return loss * float("nan"), reconstruction

    monkeypatch.setattr(ConvAutoencoder, "loss", diverging)
    with pytest.raises(TrainingError, match="became nan .*last checkpoint .* was kept.*lower --lr, use a new --out"):
        train(_config(cifar10_root, tmp_path / "run", epochs=2))
    assert (run / "checkpoint.pt").read_bytes() == before
    assert len(read_jsonl(run / "metrics.jsonl")) == 1


def test_nan_loss_in_the_first_epoch_keeps_nothing_and_the_same_out_trains_again(cifar10_root, tmp_path,
                                                                                 monkeypatch):
    """No epoch finished: there is no checkpoint to keep, so the run this command made is removed
    (not left empty), the message says so, and the advice (a lower --lr) works in the same --out.
    A folder that existed before keeps what it held."""
    original = ConvAutoencoder.loss
    monkeypatch.setattr(ConvAutoencoder, "loss", lambda self, images: (original(self, images)[0] * float("nan"),
                                                                       original(self, images)[1]))
    with pytest.raises(TrainingError, match="no epoch finished, so nothing was kept in .*run again with a lower --lr"):
        train(_config(cifar10_root, tmp_path / "run", epochs=1))
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="no epoch finished"):
        train(_config(cifar10_root, tmp_path / "mine", epochs=1))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    monkeypatch.setattr(ConvAutoencoder, "loss", original)
    run = train(_config(cifar10_root, tmp_path / "run", epochs=1, lr=1e-4))
    assert len(read_jsonl(run / "metrics.jsonl")) == 1


def test_train_seeds_repeats_pretraining_one_run_per_seed(cifar10_root, tmp_path):
    from latentprobe.cli import main

    out = tmp_path / "ae8"
    main(["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
          "--no-download", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--seed", "3",
          "--seeds", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["seed_3", "seed_4"]
    a, b = (load_checkpoint(out / name / "checkpoint.pt") for name in ("seed_3", "seed_4"))
    assert (a["train_config"]["seed"], b["train_config"]["seed"]) == (3, 4)
    assert a["train_config"]["out"] == str(out / "seed_3")
    assert not torch.equal(a["model"]["encoder.0.weight"], b["model"]["encoder.0.weight"])


@pytest.mark.parametrize("flags, message", [
    (["--latent-dim", "0"], "--latent-dim must be at least 1, got 0"),
    (["--probe-every", "0"], "--probe-every must be at least 1, got 0"),
    (["--probe-every", "1", "--val-size", "0"], "--val-size must be at least 1: the validation split chooses"),
    (["--latent-dim", "-5"], "--latent-dim must be at least 1, got -5"),
    (["--epochs", "-1"], "--epochs must be at least 1, got -1"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    (["--accum-steps", "0"], "--accum-steps must be at least 1, got 0"),
    (["--subset", "0"], "--subset must be at least 1, got 0"),
    (["--subset", "-5"], "--subset must be at least 1, got -5"),
    (["--grid-every", "0"], "--grid-every must be at least 1, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1, got 0"),
    (["--schedule", "linear"], "unknown --schedule 'linear'; use one of constant, cosine"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
    (["--model-args", "bogus=1"], "conv_ae: "),
    (["--model", "mae_vit_micro_patch4", "--model-args", "patch_size=0"], "patch_size"),
    (["--model-args", "c1=0"], "latent_dim, c1 and c2 are sizes, each at least 1"),
    (["--model", "deep_conv_ae", "--model-args", "width=0"], "width (at least 1)"),
    (["--model", "mae_vit_micro_patch4", "--model-args", "num_heads=5"],
     "mae_vit_micro_patch4 cannot be built with num_heads=5: AssertionError: dim should be divisible by num_heads"),
    (["--model", "mae_vit_micro_patch4", "--model-args", "depth=-1"], "cannot be built with depth=-1"),
    (["--latent-dim", "1000000000"], "parameters: 161,186 GiB to train (weights, gradients and Adam's two moments)"),
    # the fourth hostile round (2026-12-03)
    (["--latent-dim", "99999999999999999999999"], "--latent-dim must be a number in [1, 2147483647]"),
    (["--seed", "99999999999999999999999"], "--seed must be a number in [0, 9223372036854775807]"),
    (["--warmup-epochs", "1e300", "--epochs", "1"], "--warmup-epochs must be a number in [0, 1]"),
    (["--val-size", "0"], "--val-size must be at least 1: the validation split chooses"),
])
def test_bad_options_are_one_line_before_any_directory(cifar10_root, tmp_path, capsys, flags, message):
    from latentprobe.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data-dir", str(cifar10_root), "--no-download", "--val-size", "40", "--out", str(out),
              *flags])
    assert str(stop.value.code).startswith("error: ") and message in str(stop.value.code)
    assert "\n" not in str(stop.value.code) and not out.exists()


def test_out_naming_a_file_is_one_line_and_the_file_is_kept(cifar10_root, tmp_path):
    from latentprobe.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data-dir", str(cifar10_root), "--no-download", "--out", str(tmp_path / "notes.txt")])
    assert str(stop.value.code) == f"error: --out {tmp_path / 'notes.txt'} is a file; give a folder (new, or a run " \
                                   f"to continue)"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_temp_file_left_by_a_killed_writer_is_swept_on_the_next_start(cifar10_root, tmp_path):
    from latentprobe.cli import main

    run = tmp_path / "run"
    args = ["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
            "--no-download", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    main(args)
    leftover = run / "checkpoint.pt.12345.tmp"  # as a kill -9 during the checkpoint write leaves it
    leftover.write_bytes(b"half a checkpoint")
    main(args)  # finished: nothing to do, but the leftover goes
    assert not leftover.exists() and (run / "checkpoint.pt").is_file()


def test_pictures_torn_by_a_kill_are_redrawn_when_the_finished_run_is_called_again(cifar10_root, tmp_path, capsys):
    from latentprobe.cli import main

    run = tmp_path / "run"
    args = ["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
            "--no-download", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    main(args)
    (run / "grids" / "epoch_0001.png").write_bytes(b"")  # a kill while the last grid was written
    (run / "loss.png").unlink()
    capsys.readouterr()
    main(args)
    assert "the last pictures repaired" in capsys.readouterr().out
    assert (run / "grids" / "epoch_0001.png").stat().st_size > 1000 and (run / "loss.png").stat().st_size > 1000


def test_a_yaml_value_of_the_wrong_type_is_one_line(tmp_path):
    from latentprobe.cli import main

    (tmp_path / "c.yaml").write_text("latent_dim: abc\n")
    with pytest.raises(SystemExit, match="error: option latent_dim must be int or null, got 'abc'"):
        main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_yaml_tag_in_model_args_is_refused_in_one_line(tmp_path, capsys):
    from latentprobe.cli import main

    (tmp_path / "config.yaml").write_text("model_args:\n  c1: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(SystemExit, match="config file .*cannot read it"):  # safe loading: no object is ever built
        main(["train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit):
        main(["train", "--model-args", "c1=!!python/object/apply:os.system", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "c1: '!!python/object/apply:os.system' is not a plain value" in error
    assert not (tmp_path / "run").exists()


def test_a_second_writer_is_refused_with_the_holders_pid(cifar10_root, tmp_path):
    """While one process holds the run directory, another `train` gets one line and writes nothing."""
    import os
    import subprocess
    import sys

    from latentprobe.runs import exclusive

    run = tmp_path / "run"
    with exclusive(run):
        second = subprocess.run([sys.executable, "-m", "latentprobe", "train", "--data-dir", str(cifar10_root),
                                 "--no-download", "--val-size", "40", "--latent-dim", "8", "--epochs", "1",
                                 "--device", "cpu", "--out", str(run)], capture_output=True, text=True)
    assert second.returncode != 0
    assert f"is being written by another latentprobe process (pid {os.getpid()})" in second.stderr
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    train(_config(cifar10_root, run, epochs=1))  # released: the next writer goes ahead


def test_a_lock_dies_with_its_process(tmp_path):
    """kill -9 leaves no stale lock: the operating system drops it with the process."""
    import signal
    import subprocess
    import sys

    from latentprobe.runs import exclusive

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from latentprobe.runs import exclusive\n"
                               f"with exclusive({str(tmp_path / 'run')!r}):\n    print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive(tmp_path / "run"):
        pass


def test_a_kill_after_the_final_checkpoint_is_repaired_on_the_next_run(cifar10_root, tmp_path, capsys):
    """The checkpoint of the last epoch was renamed but its metrics line never written."""
    from latentprobe.runs import write_jsonl

    run = train(_config(cifar10_root, tmp_path / "run", epochs=2))
    lines = read_jsonl(run / "metrics.jsonl")
    write_jsonl(run / "metrics.jsonl", lines[:1])
    (run / "loss.png").unlink()
    train(_config(cifar10_root, run, epochs=2))
    assert read_jsonl(run / "metrics.jsonl") == lines and (run / "loss.png").is_file()
    assert "repaired from the checkpoint" in capsys.readouterr().out
    with open(run / "metrics.jsonl", "a") as torn:  # killed in the middle of a line
        torn.write('{"epoch": 3, "train_lo')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 3, is not valid JSON.*delete it"):
        read_jsonl(run / "metrics.jsonl")
    train(_config(cifar10_root, run, epochs=2))
    assert read_jsonl(run / "metrics.jsonl") == lines


def test_the_online_probe_writes_its_accuracy_every_n_epochs_and_repeats_under_a_seed(cifar10_root, tmp_path):
    """`--probe-every 2`: val_probe_acc in metrics.jsonl (and so TensorBoard) at epochs 2 and 4, drawn
    in the loss figure; a second run with the same seed reads the same accuracies."""
    runs = [train(_config(cifar10_root, tmp_path / name, epochs=4, probe_every=2, probe_size=100))
            for name in ("a", "b")]
    histories = [read_jsonl(run / "metrics.jsonl") for run in runs]
    probed = [[(h["epoch"], h["val_probe_acc"]) for h in history if "val_probe_acc" in h] for history in histories]
    assert [epoch for epoch, _ in probed[0]] == [2, 4] and all(0 <= acc <= 1 for _, acc in probed[0])
    assert probed[0] == probed[1]
    assert (runs[0] / "loss.png").stat().st_size > 0
    events = list((runs[0] / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"val_probe_acc" in events[0].read_bytes()


def test_ridge_accuracy_reads_separable_classes_in_the_primal_and_the_dual():
    from latentprobe.training.engine import ridge_accuracy

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    for dim in (20, 1000):  # fewer features than samples (primal), more (dual)
        centres = torch.randn(3, dim, generator=generator) * 3
        x = centres[labels] + torch.randn(300, dim, generator=generator)
        assert ridge_accuracy(x[:200], labels[:200], x[200:], labels[200:]) == 1.0, dim
        noise = torch.randn(300, dim, generator=generator)  # no class information: about chance
        assert ridge_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.6, dim


def test_a_full_disk_during_the_checkpoint_is_one_line_leaves_nothing_and_the_next_run_completes(
        cifar10_root, tmp_path, monkeypatch):
    import torch

    from latentprobe import checkpoint
    from latentprobe.cli import main

    run = tmp_path / "run"
    args = ["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
            "--no-download", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--out", str(run)]
    real_save = torch.save

    def full_disk(obj, path, *a, **k):
        with open(path, "wb") as handle:
            handle.write(b"half")  # what a full disk leaves
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(SystemExit) as stop:
        main(args)
    error = str(stop.value.code)
    assert error.startswith(f"error: cannot write {run}/") and "MiB free there" in error and "\n" not in error
    assert not list(run.rglob("*.tmp")) and not (run / "checkpoint.pt").exists()
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    main(args)  # space freed: the same command completes
    assert (run / "checkpoint.pt").is_file()


def test_a_resume_after_the_data_files_changed_is_one_line(cifar10_root, tmp_path):
    from conftest import write_cifar10

    from latentprobe.cli import main

    run = tmp_path / "run"
    args = ["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
            "--no-download", "--val-size", "40", "--device", "cpu", "--out", str(run)]
    main([*args, "--epochs", "1"])
    import shutil

    shutil.rmtree(cifar10_root / "cifar-10-batches-py")
    write_cifar10(cifar10_root, seed=5)  # other images under the same names
    with pytest.raises(SystemExit) as stop:
        main([*args, "--epochs", "2"])
    error = str(stop.value.code)
    assert error.startswith("error: data_batch_1, data_batch_2") and "changed since" in error and "\n" not in error


def test_an_edit_that_keeps_a_files_size_and_time_is_named_on_resume(cifar10_root, tmp_path, capsys):
    """One pixel of a batch file changed in place, its size and times put back: the run recorded
    the digest of the bytes it read, so the resume names the file (names, sizes and times alone
    cannot see it)."""
    import os

    from latentprobe.cli import main

    run = tmp_path / "run"
    args = ["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
            "--no-download", "--val-size", "40", "--device", "cpu", "--out", str(run)]
    main([*args, "--epochs", "1"])
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    before = batch.stat()
    content = bytearray(batch.read_bytes())
    content[-200] ^= 0x01  # inside the pixel array: still a valid batch file, one pixel off by one level
    batch.write_bytes(bytes(content))
    os.utime(batch, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert batch.stat().st_size == before.st_size and batch.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(SystemExit) as stop:
        main([*args, "--epochs", "2"])
    assert str(stop.value.code).startswith("error: data_batch_2 under ") and "changed since" in str(stop.value.code)
    capsys.readouterr()
    main(["export", str(run), "--data-dir", str(cifar10_root), "--split", "val", "--out", str(tmp_path / "val")])
    assert f"note: data_batch_2 changed since {run} was trained" in capsys.readouterr().out  # reading it is said
