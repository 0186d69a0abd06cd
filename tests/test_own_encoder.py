"""Your encoder, your images (evaluate --encoder): a factory in a file, TorchScript and timm
encoders; image folders and npz files; one clear line for each bad input."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from latentprobe.cli import main
from latentprobe.data.cifar import load_split
from latentprobe.data.images import load_image_folder, load_npz
from latentprobe.probe.evaluate import evaluate_encoder, load_eval
from latentprobe.probe.features import run_features
from latentprobe.runs import Run

ENCODERS = '''
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, pooled=True):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1)]
        self.net = nn.Sequential(*layers, *([nn.AdaptiveAvgPool2d(2), nn.Flatten()] if pooled else []))

    def forward(self, x):
        return self.net(x)


def small():
    return Small()


def spatial():
    return Small(pooled=False)


def broken():
    raise RuntimeError("no weights here")


def not_a_module():
    return 42


class Odd(nn.Module):
    """An encoder whose latents the probes cannot read (the fourth hostile round)."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(3, 4)

    def forward(self, x):
        rows = torch.ones(len(x), 4) + x.mean()
        if self.kind == "nan_on_images":  # blank images pass, real ones do not
            return rows * float("nan") if x.abs().sum() > 0 else rows
        return {"int": rows.long(), "one_row": rows[:1], "inf": rows * float("inf")}[self.kind]


def nan_on_images():
    return Odd("nan_on_images")


def integers():
    return Odd("int")


def one_row():
    return Odd("one_row")


def infinite():
    return Odd("inf")


def exits():
    import sys

    sys.exit(3)
'''


@pytest.fixture
def encoders(tmp_path):
    path = tmp_path / "encoders.py"
    path.write_text(ENCODERS)
    return path


def write_folder(root, images, labels, names):
    """uint8 (N, 3, H, W) images as PNGs in root/<class name>/."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")


def cifar_as_folder(cifar_root, out):
    """The CIFAR folder's training and test images as PNGs in out/train and out/test."""
    for split in ("train", "test"):
        data = load_split("cifar10", split, cifar_root, download=False)
        write_folder(out / split, data.images, data.labels, data.class_names)
    return out


def _fingerprints(split):
    return sorted((hashlib.sha1(image.numpy().tobytes()).hexdigest(), int(label))
                  for image, label in zip(split.images, split.labels))


def test_an_image_folder_holds_the_cifar_images_pixel_for_pixel(cifar10_root, tmp_path):
    folder = cifar_as_folder(cifar10_root, tmp_path / "folder")
    train, test, skipped = load_image_folder(folder, 32)
    assert skipped == []
    for name, split in (("train", train), ("test", test)):
        cifar = load_split("cifar10", name, cifar10_root, download=False)
        # every image and its label as CIFAR's reader gives them (labels: class folders sorted by name)
        names = [split.class_names[label] for label in split.labels]
        assert sorted(names) == sorted(cifar.class_names[label] for label in cifar.labels)
        assert _fingerprints(split) == sorted((h, split.class_names.index(cifar.class_names[label]))
                                              for h, label in _fingerprints(cifar))


def test_a_folder_of_class_folders_is_split_per_class_with_the_seed(tmp_path):
    images = torch.randint(0, 256, (40, 3, 20, 30), dtype=torch.uint8)
    write_folder(tmp_path / "f", images, [i % 2 for i in range(40)], ["a", "b"])
    train, test, skipped = load_image_folder(tmp_path / "f", 16, seed=0)
    assert (len(train), len(test)) == (32, 8) and test.labels.bincount().tolist() == [4, 4] and not skipped
    assert train.images.shape[1:] == (3, 16, 16)  # resized (shorter side) and centre-cropped
    again = load_image_folder(tmp_path / "f", 16, seed=0)[1]
    assert torch.equal(again.images, test.images)
    other = load_image_folder(tmp_path / "f", 16, seed=1)[1]
    assert not torch.equal(other.images, test.images)
    (tmp_path / "f" / "a" / "broken.png").write_bytes(b"not an image")
    train, test, skipped = load_image_folder(tmp_path / "f", 16, seed=0)
    assert len(train) + len(test) == 40 and len(skipped) == 1 and "broken.png" in skipped[0]


def test_a_factory_in_a_file_through_the_cli_on_an_image_folder(encoders, cifar10_root, tmp_path, capsys):
    folder = cifar_as_folder(cifar10_root, tmp_path / "folder")
    (folder / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "mine"
    main(["evaluate", "--encoder", f"{encoders}:small", "--dataset", "imagefolder", "--data-dir", str(folder),
          "--probes", "linear,knn", "--knn-k", "5", "--probe-seeds", "2", "--probe-epochs", "3",
          "--baselines", "random,pixels", "--device", "cpu", str(out)])
    assert "1 image file(s) could not be read" in capsys.readouterr().out
    assert "broken.png" in (out / "skipped_images.txt").read_text()
    record = load_eval(out)
    assert set(record["representations"]) == {"encoder", "random", "pixels"}
    assert record["latent_dim"] == 64 and record["model_name"] == f"{encoders}:small"
    linear = record["representations"]["encoder"]["probes"]["linear"]
    assert linear["sizes"] == {"train": 180, "val": 20, "test": 50}  # a tenth of the 200 for validation
    assert len(linear["seeds"]) == 2 and 0 <= linear["test"]["mean"] <= 1
    # no --weights: built from the seed, so the encoder is its own untrained twin
    random = record["representations"]["random"]["probes"]["linear"]
    assert random["test"] == linear["test"]
    capsys.readouterr()
    image = sorted((folder / "test" / "cat").iterdir())[0]
    main(["predict", str(out), str(image)])
    assert capsys.readouterr().out.count(".png: ") == 1  # the saved probe, on the folder's own statistics
    main(["report", str(out), "--out", str(tmp_path / "report")])
    assert ":small 64-d (its own weights, imagefolder at 32 px)" in (tmp_path / "report" / "report.md").read_text()


def test_a_torchscript_export_of_a_run_gives_its_latents_bit_for_bit(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    main(["train", "--latent-dim", "8", "--model-args", "c1=4 c2=8", "--data-dir", str(cifar10_root),
          "--no-download", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--out", str(run_dir)])
    run = Run(run_dir)
    model = run.model()

    class Encode(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.encode(images)

    scripted = tmp_path / "conv_ae.pt"
    torch.jit.trace(Encode(), torch.zeros(2, 3, 32, 32)).save(str(scripted))
    out = tmp_path / "scripted"
    main(["evaluate", "--encoder", str(scripted), "--data-dir", str(cifar10_root), "--no-download",
          "--val-size", "40", "--probes", "knn", "--knn-k", "5", "--baselines", "none", "--device", "cpu",
          str(out)])
    with pytest.raises(SystemExit, match="is TorchScript, whose modules take no hooks"):
        main(["evaluate", "--encoder", str(scripted), "--layers", "model", "--data-dir", str(cifar10_root),
              str(tmp_path / "hooked")])
    ours, theirs = run_features(run, "cpu"), run_features(Run.of(out), "cpu")
    for split in ("train", "val", "test"):
        a = ours.features[split][torch.arange(len(ours.labels[split]))]
        b = theirs.features[split][torch.arange(len(theirs.labels[split]))]
        assert torch.equal(a, b) and torch.equal(ours.labels[split], theirs.labels[split])


def test_a_timm_model_from_a_local_state_dict_and_the_python_api(cifar10_root, tmp_path):
    import timm

    from latentprobe.options import EvalConfig

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict(), weights)
    out = tmp_path / "timm"
    main(["evaluate", "--encoder", "timm:resnet18", "--weights", str(weights), "--image-size", "32",
          "--data-dir", str(cifar10_root), "--no-download", "--val-size", "40", "--probes", "knn", "--knn-k", "5",
          "--baselines", "random", "--device", "cpu", str(out)])  # the state dict's fc.* is left out
    record = load_eval(out)
    assert record["latent_dim"] == 512 and set(record["representations"]) == {"encoder", "random"}
    main(["evaluate", "--encoder", "timm:resnet18", "--weights", str(weights), "--image-size", "32",
          "--layers", "layer2,layer3", "--data-dir", str(cifar10_root), "--no-download", "--val-size", "40",
          "--probes", "knn", "--knn-k", "5", "--baselines", "none", "--device", "cpu", str(tmp_path / "layers")])
    record = load_eval(tmp_path / "layers")  # each layer's output averaged over positions
    assert {k: v["latent_dim"] for k, v in record["representations"].items()} == \
        {"encoder": 512, "layer_layer2": 128, "layer_layer3": 256}
    main(["report", str(tmp_path / "layers"), "--out", str(tmp_path / "layers_report"), "--tsne-points", "0"])
    assert "timm:resnet18 512-d, layer layer3" in (tmp_path / "layers_report" / "report.md").read_text()
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cfg = EvalConfig(data_dir=str(cifar10_root), download=False, val_size=40, probes=["knn"],
                     knn_k=[5], baselines=["random"], device="cpu")
    result = evaluate_encoder(module, tmp_path / "api", cfg)
    assert result["latent_dim"] == 4 and set(result["representations"]) == {"encoder", "random"}


def test_an_npz_data_set(encoders, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (60, 24, 24, 3), dtype=np.uint8), "y_train": np.arange(60) % 3,
              "x_test": rng.integers(0, 256, (30, 24, 24, 3), dtype=np.uint8), "y_test": np.arange(30) % 3,
              "class_names": np.array(["x", "y", "z"])}
    np.savez(tmp_path / "d.npz", **arrays)
    train, test, _ = load_npz(tmp_path / "d.npz")
    assert train.images.shape == (60, 3, 24, 24) and test.class_names == ["x", "y", "z"]
    assert torch.equal(train.images[5].permute(1, 2, 0), torch.from_numpy(arrays["x_train"][5]))
    main(["evaluate", "--encoder", f"{encoders}:small", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"),
          "--probes", "knn", "--knn-k", "3", "--baselines", "none", "--device", "cpu", str(tmp_path / "out")])
    assert load_eval(tmp_path / "out")["representations"]["encoder"]["probes"]["knn_3"]["sizes"]["test"] == 30


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return str(exit_.value.code)


@pytest.mark.parametrize("factory, message", [
    ("broken", "the factory raised: RuntimeError: no weights here"),
    ("not_a_module", "the factory returned int, not a torch nn.Module"),
    ("spatial", "gives a latent of shape (2, 16, 8, 8), not (B, D): pass --pool mean to average it"),
    ("missing", "has no callable 'missing'"),
    ("nan_on_images", "gave NaN or infinite latent values on a batch of"),
    ("integers", "gave torch.int64 values; return floating-point latents"),
    ("one_row", "gave 1 latent rows for 2 images; return one per image"),
    ("infinite", "gave NaN or infinite latent values on a batch of 2 images"),
    ("exits", "the factory raised: SystemExit: 3"),
])
def test_a_bad_factory_is_one_line_and_makes_no_folder(encoders, cifar10_root, tmp_path, capsys, factory, message):
    out = tmp_path / "out"
    error = _error(capsys, ["evaluate", "--encoder", f"{encoders}:{factory}", "--data-dir", str(cifar10_root),
                            "--no-download", "--val-size", "40", str(out)])
    assert message in error and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_a_spatial_latent_is_averaged_with_pool_mean(encoders, cifar10_root, tmp_path):
    main(["evaluate", "--encoder", f"{encoders}:spatial", "--pool", "mean", "--data-dir", str(cifar10_root),
          "--no-download", "--val-size", "40", "--probes", "knn", "--knn-k", "3", "--baselines", "none",
          "--device", "cpu", str(tmp_path / "out")])
    assert load_eval(tmp_path / "out")["latent_dim"] == 16


def test_bad_images_are_one_line(encoders, tmp_path, capsys):
    one = tmp_path / "one"
    write_folder(one, torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [0] * 4, ["only"])
    empty = tmp_path / "empty"
    write_folder(empty, torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [0] * 4, ["a"])
    (empty / "b").mkdir()
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((5, 8, 8, 3), np.uint8), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.zeros(2, int))
    with open(tmp_path / "pickled.npz", "wb") as handle:
        pickle.dump({"x_train": 1}, handle)
    np.savez(tmp_path / "no_train.npz", x_train=np.zeros((0, 8, 8, 3), np.uint8), y_train=np.zeros(0, int),
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.zeros(2, int))
    np.savez(tmp_path / "unseen.npz", x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.arange(4) % 2,
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.array([7, 8]))
    np.savez(tmp_path / "twice.npz", x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.arange(4) % 2,
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.array([0, 1]), class_names=np.array(["a", "a"]))
    few = tmp_path / "few"
    write_folder(few, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 1], ["a", "b"])
    cases = [(["--dataset", "imagefolder", "--data-dir", str(one)], "1 class folder(s); an image folder needs"),
             (["--dataset", "npz", "--data-dir", str(tmp_path / "no_train.npz")], "x_train holds no image"),
             (["--dataset", "npz", "--data-dir", str(tmp_path / "unseen.npz")],
              "y_test holds classes no training image has ([7, 8])"),
             (["--dataset", "npz", "--data-dir", str(tmp_path / "twice.npz")], "class_names must be distinct"),
             (["--dataset", "npz", "--data-dir", str(tmp_path)], "a folder, not a file; --data-dir names the .npz"),
             (["--dataset", "imagefolder", "--data-dir", str(few)],
              "no readable test image (a fifth of each class goes to test: give each class at least 5 images"),
             (["--dataset", "imagefolder", "--data-dir", str(empty)], "class folder(s) b hold no image"),
             (["--dataset", "npz", "--data-dir", str(tmp_path / "bad.npz")],
              "x_train holds 5 images but y_train has shape (4,)"),
             (["--dataset", "npz", "--data-dir", str(tmp_path / "pickled.npz")], "not a readable .npz without pickle"),
             (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir"),
             (["--weights", str(tmp_path / "none.pt")], f"--weights {tmp_path / 'none.pt'}: not a readable state dict")]
    for flags, message in cases:
        error = _error(capsys, ["evaluate", "--encoder", f"{encoders}:small", *flags, str(tmp_path / "out")])
        assert message in error and len(error.splitlines()) == 1, (flags, error)
        assert not (tmp_path / "out").exists()
    error = _error(capsys, ["evaluate", "--dataset", "npz", str(tmp_path / "run")])
    assert error == "error: --dataset applies only with --encoder; a run is probed on its own images"
    assert not (tmp_path / "run").exists()
    error = _error(capsys, ["evaluate", "--encoder", "timm:resnet18", str(tmp_path / "out")])
    assert "needs --weights FILE, a local state dict (nothing is downloaded)" in error
    error = _error(capsys, ["evaluate", "--encoder", f"{encoders}:small", "--layers", "net.9", str(tmp_path / "out")])
    assert error == "error: --layers net.9: " + f"{encoders}:small has no module of that path; its top modules: net"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_image_folder_reads_as_the_cifar_loader_on_2000_real_images(real_data_root, encoders, tmp_path):
    """2,000 real CIFAR-10 images, once in CIFAR's batch layout and once as PNGs in class folders:
    the same encoder reads the same numbers within the probes' seed noise (the splits carve their
    validation images in another order, and the folder normalises with its own statistics)."""
    from conftest import _dump

    train = load_split("cifar10", "train", real_data_root, download=False)
    test = load_split("cifar10", "test", real_data_root, download=False)
    train, test = train.subset(torch.arange(1500)), test.subset(torch.arange(500))
    layout = tmp_path / "cifar" / "cifar-10-batches-py"
    layout.mkdir(parents=True)
    _dump(layout / "batches.meta", {"label_names": train.class_names})
    for index, (name, split) in enumerate([*((f"data_batch_{i}", train.subset(torch.arange(300 * (i - 1), 300 * i)))
                                             for i in range(1, 6)), ("test_batch", test)]):
        _dump(layout / name, {"labels": split.labels.tolist(), "data": split.images.reshape(len(split), -1).numpy()})
    folder = cifar_as_folder(tmp_path / "cifar", tmp_path / "folder")
    flags = ["--encoder", f"{encoders}:small", "--val-size", "150", "--probes", "logistic", "--probe-seeds", "3",
             "--probe-epochs", "20", "--baselines", "none", "--device", "cpu"]
    main(["evaluate", *flags, "--data-dir", str(tmp_path / "cifar"), "--no-download", str(tmp_path / "a")])
    main(["evaluate", *flags, "--dataset", "imagefolder", "--data-dir", str(folder), str(tmp_path / "b")])
    a, b = ((load_eval(tmp_path / name)["representations"]["encoder"]["probes"]["logistic"]) for name in "ab")
    assert a["sizes"] == b["sizes"] == {"train": 1350, "val": 150, "test": 500}
    assert a["test"]["mean"] > 0.2 and b["test"]["mean"] > 0.2  # both read something (chance: 10%)
    noise = max(a["test"]["std"], b["test"]["std"], 0.01)  # at least a point: 5 test images of 500
    assert abs(a["test"]["mean"] - b["test"]["mean"]) <= 3 * noise, (a["test"], b["test"])


def test_the_example_encoder_of_the_docs(cifar10_root, tmp_path):
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "my_encoder.py"
    main(["evaluate", "--encoder", f"{example}:build", "--data-dir", str(cifar10_root), "--no-download",
          "--val-size", "40", "--probes", "knn", "--knn-k", "5", "--baselines", "none", "--device", "cpu",
          str(tmp_path / "out")])
    assert load_eval(tmp_path / "out")["latent_dim"] == 256
