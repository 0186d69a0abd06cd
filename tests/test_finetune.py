"""Classifiers on a pretrained encoder: frozen vs fine-tuned, resume, bad input."""

import pytest
import torch
from report_helpers import assert_html_matches_markdown

from latentprobe.checkpoint import CheckpointError, load_checkpoint
from latentprobe.options import ProbeConfig
from latentprobe.probe.evaluate import evaluate_run
from latentprobe.probe.features import run_features
from latentprobe.report.mae_report import write_mae_report
from latentprobe.runs import read_jsonl
from latentprobe.training.finetune import FinetuneConfig, finetune
from latentprobe.training.pretrain import TrainConfig, train

TINY_MAE = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1,
            "decoder_num_heads": 2}


def _pretrain(root, out, **overrides):
    settings = dict(model="mae_vit_micro_patch4", model_args=TINY_MAE, data_dir=str(root), download=False,
                    val_size=40, epochs=1, batch_size=32, optimizer="adamw", lr=None, base_lr=1e-3,
                    weight_decay=0.05, schedule="cosine", warmup_epochs=0.5, device="cpu", out=str(out))
    return train(TrainConfig(**{**settings, **overrides}))


def _finetune(run, **overrides):
    return finetune(run, FinetuneConfig(**{**dict(epochs=1, batch_size=32, base_lr=2e-3, warmup_epochs=0.5,
                                                  device="cpu"), **overrides}))


@pytest.fixture
def mae_run(cifar10_root, tmp_path):
    return _pretrain(cifar10_root, tmp_path / "mae")


def _encoder_state(path, prefix=""):
    model = load_checkpoint(path)["model"]
    return {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}


def test_frozen_training_keeps_the_encoder_bit_identical_and_fine_tuning_changes_it(mae_run):
    pretrained = _encoder_state(mae_run / "checkpoint.pt")
    before = (mae_run / "checkpoint.pt").read_bytes()
    evaluate_run(mae_run, ProbeConfig(head="bn_linear", probe_epochs=2, device="cpu").evaluation())
    # the cached-latent probe never touches the checkpoint
    assert (mae_run / "checkpoint.pt").read_bytes() == before

    frozen = _finetune(mae_run, freeze_encoder=True)
    frozen_encoder = _encoder_state(mae_run / "finetune_frozen" / "checkpoint.pt", "encoder.")
    assert frozen["mode"] == "frozen" and (mae_run / "finetune_frozen.json").is_file()
    assert all(torch.equal(pretrained[k], frozen_encoder[k]) for k in pretrained)

    tuned = _finetune(mae_run)
    tuned_encoder = _encoder_state(mae_run / "finetune" / "checkpoint.pt", "encoder.")
    changed = {k for k in pretrained if not torch.equal(pretrained[k], tuned_encoder[k])}
    assert {"patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "norm.weight"} <= changed
    assert not any(k.startswith(("decoder", "mask_token")) for k in changed)  # never reached: frozen
    assert {"val_acc", "test_acc", "best_epoch", "history", "confusion", "precision",
            "class_names"} <= set(tuned)
    assert "fine-tuned" in write_mae_report(mae_run).read_text()
    assert_html_matches_markdown(mae_run / "mae_report.md")


def interrupt_after_first_epoch(monkeypatch, module):
    """Make ``module.barrier`` (called once per epoch, after the checkpoint) raise the first time,
    as if the job was killed there; the cosine schedule keeps its full length."""
    def stop():
        monkeypatch.undo()
        raise KeyboardInterrupt
    monkeypatch.setattr(module, "barrier", stop)


def test_fine_tuning_resumes_to_the_same_result(mae_run, tmp_path, monkeypatch):
    import latentprobe.training.finetune
    _finetune(mae_run, epochs=2, out=str(tmp_path / "straight"))
    interrupt_after_first_epoch(monkeypatch, latentprobe.training.finetune)
    with pytest.raises(KeyboardInterrupt):
        _finetune(mae_run, epochs=2, out=str(tmp_path / "resumed"))
    assert len(read_jsonl(tmp_path / "resumed" / "metrics.jsonl")) == 1
    _finetune(mae_run, epochs=2, out=str(tmp_path / "resumed"))
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl")] == \
           [r["train_loss"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]


def test_bad_runs_give_clear_errors_and_options_work(mae_run, cifar10_root, tmp_path):
    _finetune(mae_run)
    with pytest.raises(CheckpointError, match="'classifier' checkpoint, expected 'autoencoder'"):
        _finetune(mae_run / "finetune")  # a classifier is not a pretraining run
    with pytest.raises(CheckpointError, match="other settings.*layer_decay"):
        _finetune(mae_run, epochs=2, layer_decay=0.5)
    conv = train(TrainConfig(model="conv_ae", latent_dim=8, model_args={"c1": 4, "c2": 8},
                             data_dir=str(cifar10_root), download=False, val_size=40, epochs=1,
                             device="cpu", out=str(tmp_path / "conv")))
    with pytest.raises(ValueError, match="--pool applies to ViT encoders"):
        _finetune(conv, pool="mean")
    with pytest.raises(ValueError, match="--pool applies to ViT encoders"):
        run_features(conv, torch.device("cpu"), pool="mean")
    assert _finetune(conv)["pool"] is None  # a conv encoder + Linear head is supported
    assert _finetune(mae_run, pool="mean", out=str(mae_run / "mean"))["pool"] == "mean"


def test_probe_time_pooling_reads_other_tokens_and_keys_the_cache(mae_run, cifar10_root):
    import json

    from latentprobe.data.cifar import Normalizer, load_split
    from latentprobe.runs import Run

    cls = run_features(mae_run, torch.device("cpu"))  # the run's own pooling: cls
    mean = run_features(mae_run, torch.device("cpu"), pool="mean")
    meta = json.loads((Run(mae_run).features_dir() / "meta.json").read_text())
    assert meta["key"]["pool"] == "mean"  # cache rewritten
    assert not torch.allclose(cls.features["test"][:], mean.features["test"][:])
    model = Run(mae_run).model("cpu")
    images = load_split("cifar10", "test", cifar10_root, download=False).images[:8]
    with torch.no_grad():
        expected = model.encode(Normalizer("cifar10")(images), pool="mean")
    torch.testing.assert_close(mean.features["test"][:8], expected, rtol=1e-3, atol=1e-3)  # cached as float16

    evaluate_run(mae_run, ProbeConfig(head="bn_linear", probe_epochs=1, pool="mean", device="cpu").evaluation())
    _finetune(mae_run, epochs=1)
    assert "| frozen, BN + linear | frozen | mean |" in write_mae_report(mae_run).read_text()


def test_evaluate_with_mean_pooling_saves_it_and_predict_reads_the_same_tokens(mae_run, cifar10_root, capsys):
    import numpy as np
    from eval_helpers import fast_config
    from PIL import Image

    from latentprobe.data.cifar import Normalizer
    from latentprobe.probe.evaluate import evaluate_run
    from latentprobe.probe.export import load_classifier, load_image, predict_files
    from latentprobe.runs import Run

    record = evaluate_run(mae_run, fast_config(data_dir=str(cifar10_root), probes=["linear"], probe_seeds=1,
                                               baselines=[], pool="mean"))
    head, saved = load_classifier(mae_run)
    assert record["pool"] == "mean" and saved["pool"] == "mean"

    path = mae_run / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    capsys.readouterr()  # drop evaluate's log
    assert predict_files(mae_run, [path], top_k=10, device="cpu") == 0
    model = Run(mae_run).model("cpu")  # the run's own pooling: cls
    with torch.no_grad():
        x = Normalizer("cifar10")(load_image(path)[None])
        mean_p, cls_p = (head(model.encode(x, pool=pool)).exp()[0] for pool in ("mean", "cls"))
    assert (mean_p - cls_p).abs().max() > 0.01  # the two poolings give visibly different answers
    printed = dict(part.rsplit(" ", 1) for part in capsys.readouterr().out.strip().split(": ", 1)[1].split(", "))
    expected = {name: mean_p[i].item() for i, name in enumerate(saved["class_names"])}
    assert {name: float(p) for name, p in printed.items()} == pytest.approx(expected, abs=1e-3)


def test_the_test_set_is_read_once_by_the_epoch_chosen_on_validation(mae_run, monkeypatch):
    import latentprobe.training.finetune as finetune_module

    original, read = finetune_module.predict, []

    def counting(classifier, images, normalizer, **kwargs):
        read.append(len(images))
        return original(classifier, images, normalizer, **kwargs)

    monkeypatch.setattr(finetune_module, "predict", counting)
    summary = _finetune(mae_run, epochs=3)
    assert read == [40, 40, 40, 50]  # validation after each epoch; the 50 test images once, at the end
    assert summary["best_epoch"] == max(summary["history"], key=lambda h: h["val_acc"])["epoch"]
    assert all("test_acc" not in h for h in summary["history"])


def test_a_fine_tune_of_weights_the_run_no_longer_holds_is_refused(mae_run, cifar10_root, tmp_path):
    _finetune(mae_run, out=str(tmp_path / "ft"))
    (mae_run / "checkpoint.pt").unlink()  # pretrained again in the same folder, with other weights
    _pretrain(cifar10_root, mae_run, seed=1)
    with pytest.raises(CheckpointError, match="fine-tunes other pretrained weights than .* holds now"):
        _finetune(mae_run, epochs=2, out=str(tmp_path / "ft"))
    with pytest.raises(ValueError, match="finetune.json fine-tuned other pretrained weights than .* holds now"):
        write_mae_report(mae_run)  # its finetune.json is of the weights before
