"""The study command's options reach every run and the report (synthetic data, fast)."""

import pytest
import yaml

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
