import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import write_cifar10
from eval_helpers import fast_config, numbers, train_tiny_run

from latentprobe.checkpoint import load_checkpoint
from latentprobe.data.cifar import Normalizer
from latentprobe.models import create_model
from latentprobe.probe.evaluate import evaluate_run, load_eval
from latentprobe.probe.features import (
    FeatureSet,
    kmeans_features,
    pca_features,
    random_encoder_features,
    representation_features,
    run_features,
)
from latentprobe.probe.heads import MLPHead, accuracy, build_head, fit_head
from latentprobe.runs import Run, run_splits
from latentprobe.training.engine import extract, prepare_model
from latentprobe.training.pretrain import TrainConfig, build_model, train


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = write_cifar10(root / "data", per_batch=40, test=60)
    run = train_tiny_run(data, root / "run")
    record = evaluate_run(run, fast_config(data_dir=str(data)))
    return run, data, record


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_fit_head_keeps_the_best_validation_epoch_and_never_sees_test():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=gen)
    x = torch.eye(8)[:3][labels] * 4 + torch.randn(400, 8, generator=gen)
    fit = fit_head("mlp", (x[:300], labels[:300]), (x[300:], labels[300:]), 3, lr=1e-2, weight_decay=0,
                   epochs=6, batch_size=32, hidden=16, patience=None)
    assert isinstance(fit.head, MLPHead) and not fit.head.training
    assert fit.val_acc == max(h["val_acc"] for h in fit.history) > 0.9
    assert fit.history[fit.best_epoch - 1]["val_acc"] == fit.val_acc
    assert all(set(h) == {"epoch", "train_loss", "train_acc", "val_acc"} for h in fit.history)  # no test numbers
    settled = fit_head("mlp", (x[:300], labels[:300]), (x[300:], labels[300:]), 3, lr=1e-2, weight_decay=0,
                       epochs=6, batch_size=32, hidden=16, patience=None, schedule="cosine")
    again = fit_head("mlp", (x[:300], labels[:300]), (x[300:], labels[300:]), 3, lr=1e-2, weight_decay=0,
                     epochs=6, batch_size=32, hidden=16, patience=None, schedule="cosine")
    assert settled.val_acc > 0.9 and settled.history == again.history != fit.history  # seeded, and lr decays
    with pytest.raises(ValueError, match="unknown probe head"):
        fit_head("svm", (x, labels), (x, labels), 3, lr=1e-3, weight_decay=0, epochs=1)


def test_eval_json_holds_every_representation_probe_and_seed(evaluated):
    run, _, record = evaluated
    assert record == load_eval(run)
    assert list(record["representations"]) == ["encoder", "random", "pca", "pixels"]
    dims = {name: rep["latent_dim"] for name, rep in record["representations"].items()}
    assert dims == {"encoder": 16, "random": 16, "pca": 16, "pixels": 3072}
    for rep in record["representations"].values():
        assert set(rep["probes"]) == {"linear", "bn_linear", "mlp", "knn_3", "knn_10"}
        assert all(p["sizes"] == {"train": 140, "val": 60, "test": 60} for p in rep["probes"].values())
        assert rep["probes"]["mlp"]["protocol"]["mlp_hidden"] == 32 and rep["probes"]["knn_3"]["protocol"]["k"] == 3
        for name in ("linear", "bn_linear", "mlp"):
            probe = rep["probes"][name]
            assert len(probe["grid"]) == 2 and len(probe["seeds"]) == 2 and probe["test"]["n"] == 2
            best = max(probe["grid"], key=lambda g: g["val_acc"])
            assert probe["chosen"]["weight_decay"] == best["weight_decay"]
            assert probe["seeds"][0]["val_acc"] == best["val_acc"]  # seed 0 is the chosen grid run
            assert np.isclose(probe["test"]["mean"], np.mean([s["test_acc"] for s in probe["seeds"]]))
            assert np.array(probe["confusion"]).sum() == 60
        knn = rep["probes"]["knn_3"]
        assert knn["deterministic"] and knn["test"] == {"mean": knn["seeds"][0]["test_acc"], "std": 0.0, "n": 1}
    assert record["encoder_params"] < record["params"]  # the decoder is not counted twice
    assert record["val_mse"] > 0 and record["train_seconds"] > 0


def test_classifier_is_saved_weights_only(evaluated):
    run, _, record = evaluated
    saved = load_checkpoint(run / "classifier.pt", kind="classifier")  # torch.load(weights_only=True)
    assert saved["head"] == record["representations"]["encoder"]["classifier"]
    assert saved["head"] in ("linear", "bn_linear") and saved["class_names"][3] == "cat"


def test_evaluation_continues_instead_of_redoing(evaluated, capsys):
    run, data, record = evaluated
    again = evaluate_run(run, fast_config(data_dir=str(data)))
    assert "already evaluated" in capsys.readouterr().out
    assert again["representations"] == record["representations"]


def test_random_baseline_is_the_initialisation_pretraining_started_from(evaluated):
    run, data, _ = evaluated
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    cfg = TrainConfig(**checkpoint["train_config"])
    torch.manual_seed(cfg.seed)  # as `latentprobe train` does before building the model
    start = build_model(cfg).eval()
    splits = run_splits(checkpoint["train_config"], str(data))
    expected = extract(start.encode, splits["test"].images, Normalizer("cifar10"))
    got = random_encoder_features(Run(run, str(data)), torch.device("cpu"))
    torch.testing.assert_close(got.features["test"][:], expected, rtol=1e-3, atol=1e-3)  # cached as float16


def test_flipped_training_images_double_the_probes_training_set_only(evaluated, tmp_path):
    run, data, record = evaluated
    flipped_run = tmp_path / "run"
    shutil.copytree(run, flipped_run)
    cfg = fast_config(data_dir=str(data), probes=["bn_linear"], baselines=["pixels"], flip_train=True)
    flipped = evaluate_run(flipped_run, cfg)
    for name in ("encoder", "pixels"):  # a new protocol: evaluated again, not read from the plain one
        assert flipped["representations"][name]["probes"]["bn_linear"]["sizes"] == {"train": 280, "val": 60, "test": 60}
    flags = [r["representations"]["encoder"]["probes"]["bn_linear"]["protocol"]["flip_train"] for r in (flipped, record)]
    assert flags == [True, False]
    features = run_features(Run(flipped_run, str(data)), torch.device("cpu"), flip_train=True)
    model = Run(flipped_run, str(data)).model("cpu")
    train = run_splits(load_checkpoint(run / "checkpoint.pt")["train_config"], str(data))["train"]
    mirrored = extract(model.encode, train.images.flip(-1), Normalizer("cifar10"))
    torch.testing.assert_close(features.features["train"][140:], mirrored, rtol=1e-3, atol=1e-3)  # float16
    assert torch.equal(features.labels["train"], train.labels.repeat(2))
    plain = run_features(Run(flipped_run, str(data)), torch.device("cpu"))  # its own cache, untouched
    assert torch.equal(plain.features["train"][:], features.features["train"][:140])
    assert torch.equal(plain.features["val"][:], features.features["val"][:])


@pytest.mark.parametrize("n_train", [40, 400])  # fewer and more images than pixel values
def test_pca_is_fitted_on_train_only_and_matches_sklearn(n_train):
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(0)
    scales = torch.linspace(5, 0.5, 64)  # distinct variances: the axes are well defined
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=gen))[0]
    features = {split: (torch.randn(n, 64, generator=gen) * scales) @ rotation.T + 3
                for split, n in (("train", n_train), ("val", 20), ("test", 30))}
    labels = {split: torch.zeros(len(x), dtype=torch.long) for split, x in features.items()}
    pixels = FeatureSet(features, labels, ["only"])
    ours = pca_features(pixels, 8)
    reference = PCA(8).fit(features["train"].numpy())
    for split in ("train", "test"):
        theirs = reference.transform(features[split].numpy())
        signs = np.sign((ours.features[split].numpy() * theirs).sum(0))  # axes are defined up to sign
        assert np.allclose(ours.features[split].numpy() * signs, theirs, atol=1e-3)
    shifted = FeatureSet({**features, "test": features["test"] + 100}, labels, ["only"])
    assert torch.equal(pca_features(shifted, 8).features["train"], ours.features["train"])
    with pytest.raises(ValueError, match="PCA"):
        pca_features(pixels, 100)


def test_unknown_probe_or_baseline_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown probe"):
        fast_config(probes=["svm"])
    assert fast_config(baselines=["none"]).baselines == []
    with pytest.raises(ValueError, match="unknown --probe-schedule 'step'"):
        fast_config(probe_schedule="step")
    from latentprobe.probe.evaluate import probe_protocol
    assert probe_protocol(fast_config(), "linear")["probe_schedule"] == "constant"
    assert probe_protocol(fast_config(probe_schedule="cosine"), "linear")["probe_schedule"] == "cosine"


def test_run_info_reports_the_reconstruction_of_the_epoch_the_probes_read(tmp_path):
    from latentprobe.checkpoint import save_checkpoint
    from latentprobe.probe.evaluate import run_info
    from latentprobe.runs import Run, write_jsonl

    run = train_tiny_run(write_cifar10(tmp_path / "data", per_batch=40, test=60), tmp_path / "run")
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    save_checkpoint(run / "checkpoint.pt", **{**checkpoint, "epoch": 2, "best_epoch": 1})  # epoch 2 spiked
    write_jsonl(run / "metrics.jsonl", [{"epoch": 1, "val_mse": 0.01, "val_psnr": 20.0},
                                        {"epoch": 2, "val_mse": 0.5, "val_psnr": 3.0}])
    info = run_info(Run(run), torch.device("cpu"))
    assert (info["epochs_trained"], info["probed_epoch"], info["val_mse"], info["val_psnr"]) == (2, 1, 0.01, 20.0)


def test_retraining_in_the_same_folder_refreshes_every_cache(tmp_path, capsys):
    """Delete the checkpoint, retrain with another latent size (the tool's own advice): features,
    eval.json, the classifier and predict all follow the new weights, and match a fresh run."""
    from latentprobe.checkpoint import CheckpointError
    from latentprobe.probe.export import predict_files
    from latentprobe.probe.features import run_features

    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train_tiny_run(data, tmp_path / "run", latent_dim=8)
    cfg = fast_config(data_dir=str(data), probes=["linear"], baselines=[], probe_seeds=1)
    evaluate_run(run, cfg)
    assert run_features(run, torch.device("cpu")).dim == 8
    (run / "checkpoint.pt").unlink()
    train_tiny_run(data, run, latent_dim=16)
    assert run_features(run, torch.device("cpu")).dim == 16  # not the cached 8-d latents
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    with pytest.raises(CheckpointError, match="was trained on other encoder weights"):
        predict_files(run, [image], device="cpu")  # the 8-d classifier is refused, not crashed into
    again = evaluate_run(run, cfg)
    assert "already evaluated" not in capsys.readouterr().out
    fresh = evaluate_run(train_tiny_run(data, tmp_path / "fresh", latent_dim=16), cfg)
    assert again["latent_dim"] == again["representations"]["encoder"]["latent_dim"] == 16
    assert numbers(again["representations"]["encoder"]["probes"]) == numbers(fresh["representations"]["encoder"]["probes"])
    assert predict_files(run, [image], device="cpu") == 0


@pytest.mark.parametrize("command, flags, message", [
    ("evaluate", ["--probe-batch-size", "0"], "--probe-batch-size must be at least 1, got 0"),
    ("evaluate", ["--knn-k", "0,20"], "--knn-k must be at least 1, got [0, 20]"),
    ("probe", ["--probe-epochs", "0"], "--probe-epochs must be at least 1, got 0"),
    ("probe", ["--head", "svm"], "unknown --head 'svm'"),
    ("finetune", ["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ("probe", ["--pool", "max"], "unknown --pool 'max'"),
    ("export", ["--label-type", "medium"], "unknown --label-type 'medium'"),
    ("predict", ["image.png", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    # the fourth hostile round (2026-12-03)
    ("evaluate", ["--probes", ""], "--probes needs distinct values, at least one"),
    ("evaluate", ["--probes", "linear,linear"], "--probes needs distinct values, at least one; got 'linear,linear'"),
    ("evaluate", ["--knn-k", "20,20"], "--knn-k needs distinct values"),
    ("evaluate", ["--threads", "100000"], "--threads must be a number in [1, 256]"),
    ("evaluate", ["--mlp-hidden", "99999999999"], "--mlp-hidden must be a number in [1, 65536]"),
    ("report", ["--out", "{file}"], "is a file; give a folder for the report"),
])
def test_bad_probe_options_are_one_line(tmp_path, command, flags, message):
    from latentprobe.cli import main

    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        main([command, str(tmp_path / "run"), *(flag.format(file=tmp_path / "file") for flag in flags)])
    assert str(stop.value.code).startswith("error: ") and message in str(stop.value.code)
    assert "\n" not in str(stop.value.code) and not (tmp_path / "run").exists()
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("command", ["evaluate", "probe", "export"])
def test_no_download_with_a_mistyped_data_dir_is_one_line_and_creates_nothing(tmp_path, command):
    """The run was trained with download on; `--no-download` overrides it for this command, so a
    typo in --data-dir is named at once instead of starting a download into a new folder."""
    from latentprobe.cli import main

    run = train_tiny_run(write_cifar10(tmp_path / "data", per_batch=20, test=20), tmp_path / "run")
    shutil.rmtree(run / "features", ignore_errors=True)
    typo = tmp_path / "dta"
    with pytest.raises(SystemExit) as stop:
        main([command, str(run), "--data-dir", str(typo), "--no-download"])
    assert str(stop.value.code).startswith("error: ") and "dta/cifar-10-batches-py not found" in str(stop.value.code)
    assert "\n" not in str(stop.value.code) and not typo.exists()


def test_layer_wise_probes_give_one_result_per_stage_and_a_depth_curve(tmp_path):
    """`evaluate --layers all` probes every stage of a deep encoder with the same protocol; the
    last stage is the latent itself; compare draws accuracy against depth. A stage that does not
    exist, or a model without stages, is one clear line."""
    from latentprobe.report.compare import CompareConfig, write_comparison
    from latentprobe.training.pretrain import TrainConfig, train

    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train(TrainConfig(model="deep_conv_ae", latent_dim=16, model_args={"width": 4}, data_dir=str(data),
                            download=False, val_size=60, epochs=1, batch_size=64, device="cpu",
                            out=str(tmp_path / "deep")))
    record = evaluate_run(run, fast_config(probes=["linear"], baselines=[], probe_seeds=1, layers=["all"]))
    layers = {k: v for k, v in record["representations"].items() if k.startswith("layer_")}
    assert sorted(layers) == ["layer_1", "layer_2", "layer_3", "layer_4"]
    assert [layers[f"layer_{i}"]["latent_dim"] for i in range(1, 5)] == [16, 32, 64, 16]
    assert numbers(layers["layer_4"]["probes"]) == numbers(record["representations"]["encoder"]["probes"])  # the latent
    html = write_comparison([run], CompareConfig(out=str(tmp_path / "report"), tsne_points=0, device="cpu"))
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "figures/depth.png" in markdown and "deep_conv_ae 16-d, layer 3" in markdown and html.is_file()
    with pytest.raises(ValueError, match="--layers 5: deep_conv_ae has 4 layers, 1-4"):
        evaluate_run(run, fast_config(probes=["linear"], baselines=[], probe_seeds=1, layers=["2", "5"]))
    with pytest.raises(ValueError, match="conv_ae does not expose its stages"):
        evaluate_run(train_tiny_run(data, tmp_path / "shallow"), fast_config(baselines=[], layers=["all"]))
    with pytest.raises(ValueError, match="--layers takes all, or stage numbers from 1"):
        fast_config(layers=["0"])


def test_kmeans_reference_is_a_baseline_of_patch_runs_only(tmp_path, evaluated):
    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train(TrainConfig(model="patch_ae", latent_dim=64, data_dir=str(data), download=False, val_size=60,
                            model_args={"encoding": "soft_threshold", "whitening_patches": 5000}, epochs=1,
                            batch_size=32, device="cpu", out=str(tmp_path / "patch")))
    record = evaluate_run(run, fast_config(data_dir=str(data), probes=["bn_linear"], baselines=["kmeans"]))
    assert record["representations"]["kmeans"]["latent_dim"] == 32  # 8 centroids (as the run's 8 filters) × 4
    reference = Run(run, str(data))
    kmeans = create_model("patch_ae", **{**reference.model_config(), "encoding": "triangle", "latent_dim": 32,
                                         "kmeans_iterations": 50})
    torch.manual_seed(0)
    prepare_model(kmeans, reference.splits()["train"].images, Normalizer("cifar10"), seed=0)
    cached = kmeans_features(reference, torch.device("cpu"))  # read from the cache evaluate wrote
    expected = extract(kmeans.eval().encode, reference.splits()["test"].images, Normalizer("cifar10"))
    # the run's whitening, k-means as released, triangle; cached as float16
    torch.testing.assert_close(cached.features["test"][:], expected, rtol=1e-3, atol=1e-3)
    finer = train(TrainConfig(model="patch_ae", latent_dim=144, data_dir=str(data), download=False, val_size=60,
                              model_args={"encoding": "soft_threshold", "whitening_patches": 5000, "pool_grid": 3},
                              epochs=1, batch_size=32, device="cpu", out=str(tmp_path / "finer")))
    record = evaluate_run(finer, fast_config(data_dir=str(data), probes=["bn_linear"], baselines=["kmeans"]))
    assert record["representations"]["kmeans"]["latent_dim"] == 72  # 8 centroids × 9 regions: pooled as its run
    conv_run, conv_data, _ = evaluated
    with pytest.raises(ValueError, match="baseline of patch_ae runs"):
        evaluate_run(conv_run, fast_config(data_dir=str(conv_data), baselines=["kmeans"]))


@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_a_mistyped_run_path_is_one_line_and_leaves_no_folder(tmp_path, command):
    from latentprobe.cli import main

    typo = tmp_path / "runz" / "ae64"
    with pytest.raises(SystemExit) as stop:
        main([command, str(typo), "--device", "cpu"])
    assert str(stop.value.code) == f"error: no checkpoint at {typo / 'checkpoint.pt'}; train the run first " \
                                   f"(latentprobe train)"
    assert not (tmp_path / "runz").exists()


def test_a_report_refuses_results_of_weights_the_run_no_longer_holds(cifar10_root, tmp_path):
    run = train_tiny_run(cifar10_root, tmp_path / "run", latent_dim=16)
    evaluate_run(run, fast_config(probes=["knn"], baselines=[]))
    assert load_eval(run)["latent_dim"] == 16
    (run / "checkpoint.pt").unlink()  # trained again in the same folder, with another latent size
    train_tiny_run(cifar10_root, run, latent_dim=32)
    with pytest.raises(ValueError, match="was made from other weights than .* holds now .* run `latentprobe "
                                         "evaluate .*` again"):
        load_eval(run)
    evaluate_run(run, fast_config(probes=["knn"], baselines=[]))  # evaluated again: current
    assert load_eval(run)["latent_dim"] == 32


def test_a_flip_invariant_run_is_probed_without_flipped_images(tmp_path):
    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train(TrainConfig(model="patch_ae", latent_dim=32, data_dir=str(data), download=False, val_size=60,
                            model_args={"encoding": "soft_threshold", "activation": "winner_take_all",
                                        "flip_invariant": True, "whitening_patches": 5000},
                            epochs=1, batch_size=32, device="cpu", out=str(tmp_path / "patch")))
    with pytest.raises(ValueError, match="flip-invariant latent .* --flip-train would only repeat every training row"):
        evaluate_run(run, fast_config(data_dir=str(data), probes=["bn_linear"], baselines=[], flip_train=True))
    assert not (run / "eval.json").exists()
    record = evaluate_run(run, fast_config(data_dir=str(data), probes=["bn_linear"], baselines=["random", "kmeans"]))
    assert {name: r["latent_dim"] for name, r in record["representations"].items()} == \
        {"encoder": 32, "random": 32, "kmeans": 16}  # 4 filters (8 with their mirror images), 4 centroids (8)
    reference = Run(run, str(data))
    model = reference.model("cpu")
    train_images = reference.splits()["train"].images
    features = run_features(reference, torch.device("cpu"))
    mirrored = extract(model.encode, train_images.flip(-1), Normalizer("cifar10"))
    torch.testing.assert_close(features.features["train"][:], mirrored, rtol=1e-3, atol=1e-3)  # float16


def test_the_low_rank_probe_reads_a_patch_latent_region_by_region(tmp_path):
    """The patch latent's layout reaches the low-rank probe: pool_grid² values per code, for the
    encoder and its twins; other representations have none (one value per code)."""
    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train(TrainConfig(model="patch_ae", latent_dim=2 * 9 * 3, data_dir=str(data), download=False, val_size=60,
                            model_args={"encoding": "soft_threshold", "pool_grid": 3, "whitening_patches": 5000},
                            epochs=1, batch_size=32, device="cpu", out=str(tmp_path / "patch")))
    record = evaluate_run(run, fast_config(data_dir=str(data), probes=["low_rank"], baselines=["random", "pixels"],
                                           probe_rank=2))
    for name in ("encoder", "random", "pixels"):
        probe = record["representations"][name]["probes"]["low_rank"]
        assert probe["protocol"]["probe_rank"] == 2 and 0 <= probe["test"]["mean"] <= 1
    reference = Run(run, str(data))
    assert representation_features(reference, "encoder", torch.device("cpu")).regions == 9
    assert representation_features(reference, "random", torch.device("cpu")).regions == 9
    assert representation_features(reference, "pixels", torch.device("cpu")).regions == 1
    # its classifier.pt is the BN + linear head it is, the product its weight: the same test reading
    saved = load_checkpoint(run / "classifier.pt")
    head = build_head(saved["head"], saved["in_dim"], saved["num_classes"])
    head.load_state_dict(saved["state_dict"])
    test = representation_features(reference, "encoder", torch.device("cpu"))
    assert saved["head"] == "bn_linear" and accuracy(head, test.features["test"], test.labels["test"]) == \
        pytest.approx(record["representations"]["encoder"]["probes"]["low_rank"]["seeds"][0]["test_acc"])


def test_each_representation_names_the_command_that_read_it(tmp_path, monkeypatch):
    """A representation added by a later evaluation keeps its own command: the record's is the last's."""
    data = write_cifar10(tmp_path / "data", per_batch=40, test=60)
    run = train_tiny_run(data, tmp_path / "run", latent_dim=8)
    cfg = fast_config(data_dir=str(data), probes=["linear"], baselines=[], probe_seeds=1)
    monkeypatch.setattr(sys, "argv", ["latentprobe", "evaluate", "first"])
    evaluate_run(run, cfg)
    monkeypatch.setattr(sys, "argv", ["latentprobe", "evaluate", "second"])
    record = evaluate_run(run, fast_config(data_dir=str(data), probes=["linear"], baselines=["pixels"], probe_seeds=1))
    commands = {name: rep["command"] for name, rep in record["representations"].items()}
    assert commands == {"encoder": "latentprobe evaluate first", "pixels": "latentprobe evaluate second"}
    assert record["command"] == "latentprobe evaluate second" and "git_sha" in record["representations"]["pixels"]
