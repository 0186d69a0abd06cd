"""The study command's options reach every run and the report (synthetic data, fast)."""

import json

import pytest
import yaml
from report_helpers import assert_html_matches_markdown

from latentprobe.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_denoising_study_passes_its_options_to_each_run_and_says_so(cifar10_root, tmp_path):
    out = tmp_path / "study"
    main(["study", "--preset", "quick", "--latent-sizes", "8", "--c1", "4", "--c2", "8", "--subset", "200",
          "--val-size", "40", "--epochs", "1", "--probe-epochs", "2", "--noise", "0.5", "--clip-grad", "1.0",
          "--data-dir", str(cifar10_root), "--no-download", "--device", "cpu", "--out", str(out)])
    run = yaml.safe_load((out / "latent_8" / "config.yaml").read_text())["config"]
    assert run["model_args"] == {"c1": 4, "c2": 8, "noise": 0.5} and run["clip_grad"] == 1.0
    report = (out / "report.md").read_text()
    assert "denoising: input noise σ = 0.5" in report and "gradient norm clipped to 1.0" in report
    assert_html_matches_markdown(out / "report.md")
    record = json.loads((out / "latent_8" / "eval.json").read_text())
    assert set(record["representations"]) == {"encoder", "random", "pixels"}  # its untrained twin; pixels once
    assert "## Verdict" in report and "latent_size.png" in report


def test_study_of_another_model_draws_its_latent_size_curve(cifar10_root, tmp_path):
    out = tmp_path / "study"
    main(["study", "--preset", "quick", "--model", "patch_ae", "--model-args", "whitening_patches=5000",
          "--latent-sizes", "16,32", "--subset", "200", "--val-size", "40", "--epochs", "1", "--probe-epochs", "2",
          "--data-dir", str(cifar10_root), "--no-download", "--device", "cpu", "--out", str(out)])
    for latent in (16, 32):
        run = yaml.safe_load((out / f"latent_{latent}" / "config.yaml").read_text())["config"]
        assert run["model"] == "patch_ae" and run["latent_dim"] == latent
        assert run["model_args"] == {"whitening_patches": 5000}
    report = (out / "report.md").read_text()
    assert report.startswith("# patch_ae: what the latent knows") and "`patch_ae` (whitening_patches=5000)" in report
    summary = report.split("## Summary")[1].split("##")[0]
    assert "| 16 |" in summary and "| 32 |" in summary  # one row per latent size


def test_study_of_the_deep_conv_autoencoder(cifar10_root, tmp_path):
    out = tmp_path / "study"
    main(["study", "--preset", "quick", "--model", "deep_conv_ae", "--model-args", "width=4",
          "--latent-sizes", "16,32", "--subset", "200", "--val-size", "40", "--epochs", "1", "--probe-epochs", "2",
          "--data-dir", str(cifar10_root), "--no-download", "--device", "cpu", "--out", str(out)])
    summary = (out / "report.md").read_text().split("## Summary")[1].split("##")[0]
    assert "| 16 |" in summary and "| 32 |" in summary


@pytest.mark.parametrize("flags, message", [
    (["--latent-sizes", "8,8"], "--latent-sizes needs distinct values, at least one; got '8,8'"),
    (["--seed", "-1"], "--seed must be a number in [0, 9223372036854775807]"),
])
def test_bad_study_options_are_one_line_before_any_folder(tmp_path, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["study", "--out", str(tmp_path / "study"), *flags])
    assert str(stop.value.code).startswith(f"error: {message}") and not (tmp_path / "study").exists()
