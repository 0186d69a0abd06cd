"""Slow, real-data check: a tiny study on 2,000 real CIFAR-10 images writes the whole report."""

import re

import pytest

from latentprobe.cli import main


@pytest.mark.slow
def test_tiny_study_on_real_cifar10_writes_the_report(real_data_root, tmp_path):
    out = tmp_path / "study"
    main(["study", "--preset", "quick", "--latent-sizes", "16 64", "--subset", "2000", "--val-size", "500",
          "--epochs", "1", "--probe-epochs", "10", "--data-dir", str(real_data_root), "--out", str(out)])
    report = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    expected = {"ae_loss.png", "reconstructions.png", "detector_loss.png", "detector_train_acc.png",
                "detector_val_acc.png", "test_precision.png", "confusion_latent_16.png",
                "confusion_latent_64.png"}
    assert {link.split("/")[-1] for link in linked} == expected
    for link in linked:
        assert (out / link).stat().st_size > 5000, link
    for row in ("| 16 |", "| 64 |", "| raw pixels (3072) |"):
        assert row in report
    accuracies = [float(a) for a in re.findall(r"\*\*(0\.\d+)\*\*", report)]
    assert len(accuracies) == 3 and all(a < 0.6 for a in accuracies)
    assert accuracies[2] > 0.25 and max(accuracies[:2]) > 0.2  # pixels and the best latent beat chance (0.1)
    assert "| **airplane** |" in report  # the confusion table, with class names
