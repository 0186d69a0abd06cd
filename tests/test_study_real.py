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
    expected = {"latent_size.png", "ae_loss.png", "reconstructions.png", "probe_loss.png", "probe_train_acc.png",
                "probe_val_acc.png", "test_precision.png", "confusion_latent_16.png", "confusion_latent_64.png"}
    assert {link.split("/")[-1] for link in linked} == expected
    for link in linked:
        assert (out / link).stat().st_size > 5000, link
    for row in ("| 16 |", "| 64 |", "| raw pixels (3072) |"):
        assert row in report
    accuracies = [float(a) for a in re.findall(r"\| \*\*(\d+\.\d+) \(1\)\*\* \|", report)]  # one seed: no ±
    assert len(accuracies) == 3 and all(a < 60 for a in accuracies)
    assert accuracies[2] > 25 and max(accuracies[:2]) > 20  # pixels and the best latent beat chance (10%)
    best = max(accuracies[:2])
    assert f"makes the best linear probe of the encoders: {best:.2f}" in report  # the verdict names the winner
    assert "points below raw pixels" in report
    assert "| **airplane** |" in report  # the confusion table, with class names
