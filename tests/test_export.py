import numpy as np
import pytest
from eval_helpers import fast_config, train_tiny_run, write_noisy_cifar10
from PIL import Image

from latentprobe.cli import main
from latentprobe.probe.evaluate import evaluate_run
from latentprobe.probe.export import export_features, load_image, predict_files

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_noisy_cifar10(root / "data")
    run_dir = train_tiny_run(data, root / "run", val_size=400)
    record = evaluate_run(run_dir, fast_config(data_dir=str(data), probes=["linear", "bn_linear"], probe_seeds=1,
                                               probe_epochs=60, probe_patience=15, probe_lrs=[1e-2],
                                               probe_weight_decays=[0.0],
                                               probe_batch_size=64, baselines=[]))
    return run_dir, data, record


def test_exported_npz_fits_sklearn_within_two_points_of_our_linear_probe(run, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    run_dir, data, record = run
    paths = {split: export_features(run_dir, split, data_dir=str(data), device="cpu",
                                    out=tmp_path / f"{split}.npz") for split in ("train", "test")}
    train, test = (np.load(paths[s], allow_pickle=False) for s in ("train", "test"))  # plain arrays only
    assert train["features"].shape == (1600, 16) and train["features"].dtype == np.float32
    assert test["labels"].dtype == np.int64 and list(test["class_names"]) == [f"class_{i}" for i in range(10)]
    assert str(test["split"]) == "test" and str(test["source"]) == "encoder"
    sklearn_acc = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        train["features"], train["labels"]).score(test["features"], test["labels"])
    encoder = record["representations"]["encoder"]
    ours = encoder["probes"][encoder["classifier"]]["test"]["mean"]  # the linear head chosen on val
    assert 0.3 < ours < 0.98  # a task where classifiers could disagree
    assert abs(sklearn_acc - ours) <= 0.02, (sklearn_acc, ours)


def test_export_of_a_baseline_and_bad_arguments(run, tmp_path):
    run_dir, data, _ = run
    out = export_features(run_dir, "val", source="random", data_dir=str(data), device="cpu")
    assert out.name == "features_val_random.npz" and np.load(out)["features"].shape == (400, 16)
    with pytest.raises(ValueError, match="unknown split"):
        export_features(run_dir, "holdout", data_dir=str(data))
    with pytest.raises(ValueError, match="unknown source"):
        export_features(run_dir, "test", source="vae", data_dir=str(data))


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    made = {}
    pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    made["png"] = tmp_path / "colour.png"
    Image.fromarray(pixels).save(made["png"])
    made["jpeg"] = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(made["jpeg"], quality=90)
    made["gray"] = tmp_path / "gray.png"
    Image.fromarray(pixels[..., 0], mode="L").save(made["gray"])
    made["rgba"] = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([pixels, np.zeros((48, 40), np.uint8)]), mode="RGBA").save(made["rgba"])
    made["large"] = tmp_path / "large.jpg"
    Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(made["large"])
    made["tiny"] = tmp_path / "tiny.bmp"
    Image.fromarray(pixels[:3, :5]).save(made["tiny"])
    return made


def test_load_image_takes_any_size_and_mode(images):
    for kind, path in images.items():
        tensor = load_image(path)
        assert tensor.shape == (3, 32, 32) and str(tensor.dtype) == "torch.uint8", kind
    gray = load_image(images["gray"])
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()
    assert (load_image(images["rgba"]) == 255).all()  # fully transparent → the white background


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    """Pillow's RGB conversion clips 16-bit and float pixels (a 16-bit PNG turned white); they are
    read by their value range, so each equals the same picture saved with 8 bits."""
    from PIL import Image

    grey = np.tile(np.linspace(0, 255, 40).round().astype(np.uint8), (30, 1))  # a ramp, dark to light
    Image.fromarray(grey).save(tmp_path / "8bit.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # 255 → 65535
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "float.tiff")
    expected = load_image(tmp_path / "8bit.png").int()
    for name in ("16bit.png", "float.tiff"):
        assert Image.open(tmp_path / name).mode != "RGB", name  # not a file Pillow reads as 8-bit
        assert (load_image(tmp_path / name).int() - expected).abs().max() <= 1, name
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "float255.tiff")  # floats beyond 0..1
    with pytest.raises(ValueError, match=r"F pixels 0\.\.255 are outside 0\.\.1; save the image with 8 bits"):
        load_image(tmp_path / "float255.tiff")


def test_predict_prints_top_k_and_reports_bad_files(run, images, tmp_path, capsys):
    run_dir, _, _ = run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    paths = [images["png"], tmp_path / "missing.jpg", broken, *[images[k] for k in ("jpeg", "gray", "rgba", "large")]]
    assert predict_files(run_dir, paths, top_k=3, device="cpu") == 2
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith(str(images["png"]) + ": ")
    for line in lines:
        scores = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ", 1)[1].split(", ")]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0001
    assert "missing.jpg: no such file" in err and "broken.png: not a readable image" in err
    with pytest.raises(SystemExit, match="2 of 3"):  # the command exits non-zero, after the good ones
        main(["predict", str(run_dir), str(images["png"]), str(broken), str(tmp_path / "nope.png"),
              "--device", "cpu"])
    assert capsys.readouterr().out.count(": ") == 1


def test_predict_without_classifier_says_to_evaluate(tmp_path, images):
    from conftest import write_cifar10

    run_dir = train_tiny_run(write_cifar10(tmp_path / "data"), tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="latentprobe evaluate"):
        predict_files(run_dir, [images["png"]], device="cpu")


def test_paths_that_are_not_image_files_say_what_they_are(tmp_path, monkeypatch):
    import os

    from PIL import Image

    from latentprobe.data import images

    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe")
    Image.new("RGB", (150, 150)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)  # 22,500 pixels: over the limit (the warning band too)
    Image.new("RGB", (120, 100)).save(tmp_path / "warned.png")  # 12,000: Pillow's warning band, an error here
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    for name, reason in (("folder", "a folder, not an image file"), ("pipe", "not a regular file (a pipe or device)"),
                         ("loop_a", "a link that leads nowhere (a loop, or a missing target)"),
                         ("big.png", "not a readable image (more than 10,000 pixels)"),
                         ("warned.png", "not a readable image (more than 10,000 pixels)"),
                         ("missing.png", "no such file")):
        with pytest.raises(ValueError) as error:
            load_image(tmp_path / name)
        assert str(error.value) == reason


def test_export_waits_for_no_writer_and_says_where_it_wrote(run, tmp_path, capsys):
    """`export` is refused in one line while another process writes the run (a training in
    progress); given a folder as --out it writes into it, and the path it prints is the file."""
    import subprocess
    import sys

    run, data, _ = run
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom latentprobe.runs import exclusive\n"
                               f"with exclusive({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as stop:
            main(["export", str(run), "--data-dir", str(data), "--split", "val", "--out", str(tmp_path / "v.npz")])
        assert "is being written by another latentprobe process" in str(stop.value.code)
        assert not (tmp_path / "v.npz").exists()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "folder").mkdir()
    main(["export", str(run), "--data-dir", str(data), "--split", "val", "--out", str(tmp_path / "folder")])
    main(["export", str(run), "--data-dir", str(data), "--split", "val", "--out", str(tmp_path / "plain")])
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'folder' / 'features_val.npz'}: " in printed and f"{tmp_path / 'plain.npz'}: " in printed
    assert (tmp_path / "folder" / "features_val.npz").is_file() and (tmp_path / "plain.npz").is_file()


def test_export_from_other_data_files_reads_them_not_the_cache(run, tmp_path):
    from conftest import write_cifar10

    run, data, _ = run
    first = np.load(export_features(run, split="test", out=tmp_path / "a.npz", device="cpu",
                                    data_dir=str(data)))["features"]
    other = write_cifar10(tmp_path / "other", per_batch=400, test=1000, seed=7)  # the same layout, other images
    second = np.load(export_features(run, split="test", out=tmp_path / "b.npz", device="cpu",
                                     data_dir=str(other), download=False))["features"]
    assert first.shape == second.shape and not np.allclose(first, second)
    again = np.load(export_features(run, split="test", out=tmp_path / "c.npz", device="cpu",
                                    data_dir=str(data)))["features"]
    assert np.array_equal(first, again)
