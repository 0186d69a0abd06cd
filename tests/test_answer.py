"""The verdict and the latent-size figure over rows made by hand: a sweep of sizes, each with its
untrained twin and the 2011 k-means reference fitted on its own whitening."""

import matplotlib

matplotlib.use("Agg")

from latentprobe.report.answer import latent_size_figure, verdict  # noqa: E402
from latentprobe.report.document import Bullets  # noqa: E402
from latentprobe.report.results import Row  # noqa: E402


def sweep() -> list[Row]:
    """Two sizes of one family: the larger wins; the smaller size's k-means reads far less than
    the larger one's, so a margin taken over the wrong reference would be visibly wrong."""
    rows = []
    for dim, trained, untrained, kmeans in ((400, 0.64, 0.63, 0.60), (800, 0.70, 0.69, 0.72)):
        encoder = Row(f"patch_ae {dim}-d (2 epochs)", "encoder", dim, [{}], {"bn_linear": [trained]},
                      family="patch_ae")
        rows += [encoder,
                 Row(f"patch_ae {dim}-d, untrained weights", "random", dim, [{}], {"bn_linear": [untrained]},
                     encoder=encoder.label),
                 Row(f"k-means triangle {dim // 2}-d (2011 reference, patch_ae {dim}-d whitening)", "kmeans",
                     dim // 2, [{}], {"bn_linear": [kmeans]}, encoder=encoder.label)]
    return rows


def test_the_verdict_measures_the_winner_against_its_own_twin_and_its_own_k_means():
    answer = next(block for block in verdict(sweep()) if isinstance(block, Bullets)).items[0]
    assert "patch_ae 800-d (2 epochs) makes the best BN + linear probe of the encoders" in answer
    assert "1.00 points above its untrained weights" in answer
    assert "2.00 points below the 2011 k-means reference" in answer  # 70 against 72, not against 60


def test_a_reference_measured_at_several_sizes_is_a_curve_not_levels(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr("latentprobe.report.answer.errorbar_chart",
                        lambda series, path, **options: drawn.update(series=series, **options))
    caption = latent_size_figure(sweep(), tmp_path)[1].caption
    assert drawn["series"]["k-means triangle (2011 reference)"] == [(200, 60.0, 0.0), (400, 72.0, 0.0)]
    assert drawn["dotted"] == ["k-means triangle (2011 reference)"] and not drawn["lines"]
    assert sorted(drawn["series"]["patch_ae, trained"]) == [(400, 64.0, 0.0), (800, 70.0, 0.0)]
    assert "dotted: k-means triangle (2011 reference)" in caption


def test_no_k_means_margin_when_the_winners_own_reference_was_not_probed():
    rows = sweep()
    rows[-1].accuracies = {}  # the 800-d run's k-means: not probed under this probe
    answer = next(block for block in verdict(rows) if isinstance(block, Bullets)).items[0]
    assert "k-means" not in answer and "1.00 points above its untrained weights" in answer
