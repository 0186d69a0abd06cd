"""What a report says first: its verdict in words, generated from its numbers, and the two figures
readers look at first: test accuracy against latent size, and against pretraining time.

Shared by the comparison (``report`` over evaluated runs) and the study report; both hand over
the rows of results.py.
"""

from pathlib import Path

from latentprobe.metrics import mean_std, percent
from latentprobe.plots import errorbar_chart
from latentprobe.report.document import Bullets, Figure, Heading, Paragraph
from latentprobe.report.results import Row

PROBE_TITLES = {"linear": "linear", "bn_linear": "BN + linear", "logistic": "logistic",
                "low_rank": "BN + low-rank linear", "mlp": "MLP"}
LINEAR_PROBES = ("logistic", "bn_linear", "linear")  # a latent's linear readout, most converged first


def probe_title(probe: str) -> str:
    return PROBE_TITLES.get(probe) or f"kNN k={probe.split('_')[1]}"


def probe_columns(rows: list[Row]) -> list[str]:
    present = {probe for row in rows for probe in row.accuracies}
    knn = sorted((p for p in present if p.startswith("knn_")), key=lambda p: int(p.split("_")[1]))
    return [p for p in PROBE_TITLES if p in present] + knn


def mean(row: Row, probe: str) -> float | None:
    values = row.accuracies.get(probe)
    return mean_std(values)[0] if values else None


def protocol_words(probe: str, protocol: dict) -> str:
    """A probe's protocol in words, as its result file records it."""
    if probe.startswith("knn_"):
        words = f"kNN, k = {protocol.get('k')}, cosine similarity, temperature {protocol.get('knn_temperature')}"
    elif not protocol:
        return f"{probe_title(probe)} (protocol not recorded)"
    elif protocol.get("solver") == "lbfgs":
        decays = ", ".join(f"{v:g}" for v in protocol.get("probe_weight_decays") or [])
        words = (f"{probe_title(probe)}: L2 ∈ {{{decays}}} chosen on validation, each solved by full-batch L-BFGS "
                 f"(until its gradient is {protocol.get('tolerance'):g} of its value at zero weights, at most "
                 f"{protocol.get('probe_epochs')} passes), one fit (no seed enters)"
                 + (", refit on training + validation before the test" if protocol.get("refit") else ""))
    else:
        lrs = ", ".join(f"{v:g}" for v in protocol.get("probe_lrs") or [])
        decays = ", ".join(f"{v:g}" for v in protocol.get("probe_weight_decays") or [])
        patience = protocol.get("probe_patience")
        words = (f"{probe_title(probe)}: Adam lr ∈ {{{lrs}}} × L2 ∈ {{{decays}}} chosen on validation, "
                 f"{protocol.get('probe_schedule', 'constant')} lr over at most {protocol.get('probe_epochs')} epochs"
                 + (f" (stopping after {patience} without gain)" if patience and patience < protocol.get(
                     "probe_epochs", 0) else "")
                 + f", {protocol.get('probe_seeds')} seeds"
                 + (", refit on training + validation before the test" if protocol.get("refit") else ""))
    return words + (", trained on flipped training images too" if protocol.get("flip_train") else "")


def primary_probe(rows: list[Row]) -> str | None:
    """The linear probe most encoder rows share (the most converged of equals): the one verdicts
    and figures read."""
    encoders = [r for r in rows if r.kind == "encoder"]
    counts = {p: sum(p in r.accuracies for r in encoders) for p in LINEAR_PROBES}
    best = max(counts.values(), default=0)
    return next((p for p in LINEAR_PROBES if counts[p] == best), None) if best else None


def _points(difference: float, words: str) -> str:
    return f"{abs(100 * difference):.2f} points {'above' if difference >= 0 else 'below'} {words}"


def verdict(rows: list[Row]) -> list:
    """The answer, first: the best representation per probe, the winner's margins over its
    untrained twin, raw pixels and the reference baseline, and what should make a reader wary."""
    lines, winners = [], {}
    for probe in probe_columns(rows):
        scored = [(mean(r, probe), r) for r in rows if mean(r, probe) is not None]
        if scored:
            best = max(scored, key=lambda item: item[0])[1]
            winners.setdefault(best.label, []).append((probe_title(probe), percent(best.accuracies[probe])))
    for label, won in winners.items():
        under = "every probe" if len(winners) == 1 else ", ".join(title for title, _ in won)
        lines.append(f"Best under {under}: **{label.split(' (')[0]}**: "
                     + "; ".join(f"{title} {value}" for title, value in won) + ".")
    probe = primary_probe(rows)
    encoders = [r for r in rows if r.kind == "encoder" and mean(r, probe or "") is not None]
    if encoders:
        winner = max(encoders, key=lambda r: mean(r, probe))
        margins = []
        for kind, words in (("random", "its untrained weights"), ("pixels", "raw pixels"),
                            ("kmeans", "the 2011 k-means reference"), ("pca", "PCA of the pixels")):
            # a baseline of one encoder (its twin, its whitening's k-means) counts for that encoder alone
            other = next((r for r in rows if r.kind == kind and r.encoder in ("", winner.label)
                          and mean(r, probe) is not None), None)
            if other is not None:
                margins.append(_points(mean(winner, probe) - mean(other, probe), words))
        beaten = any(mean(r, probe) > mean(winner, probe) for r in rows if mean(r, probe or "") is not None)
        lines.insert(0, f"**Answer: {winner.label} makes the best {probe_title(probe)} probe"
                        f"{' of the encoders' if beaten else ''}: "
                        f"{percent(winner.accuracies[probe])} on the test set**"
                        + (f"; {', '.join(margins)}." if margins else "."))
    warnings, still_learning = [], {}
    for row in rows:
        for name, count in row.last_epochs.items():
            if count:
                limit = row.protocols[name][0].get("probe_epochs")
                still_learning.setdefault((name, limit), []).append(f"{row.label.split(' (')[0]} ({count} of "
                                                                     f"{len(row.accuracies[name])})")
    for (name, limit), where in still_learning.items():
        if name == "logistic":
            warnings.append(f"The logistic probe had not converged after {limit} passes (its gradient norm above "
                            f"1% of its start; seeds): {', '.join(where)}. More passes (--probe-epochs) may read "
                            f"more.")
            continue
        warnings.append(f"The {probe_title(name)} probe kept its last allowed epoch ({limit} of {limit}), so it was "
                        f"still learning (seeds): {', '.join(where)}. A longer or converged probe may read more.")
    for row in (r for r in rows if r.kind == "random"):
        trained = next(r for r in rows if r.label == row.encoder)
        for name in row.accuracies:
            if mean(trained, name) is not None and mean(trained, name) < mean(row, name):
                margin = _points(mean(trained, name) - mean(row, name), "them")
                warnings.append(f"{trained.label} reads below its own untrained weights under {probe_title(name)} "
                                f"({margin}): its training made the latent less useful to this probe.")
    protocols = {}
    for row in rows:
        for name, seen in row.protocols.items():
            for protocol in seen:
                protocols.setdefault(name, {}).setdefault(protocol_words(name, protocol), []).append(row.label)
    for name, variants in protocols.items():
        if len(variants) > 1:
            warnings.append(f"Rows were evaluated under different {probe_title(name)} protocols, so their numbers "
                            f"differ by more than the representation: " + "; ".join(
                                f"{', '.join(dict.fromkeys(labels))}: {words}" for words, labels in variants.items()))
    blocks = [Heading(2, "Verdict"), Bullets(lines)]
    if warnings:
        blocks += [Paragraph("**Read with care:**"), Bullets(warnings)]
    return blocks


def latent_size_figure(rows: list[Row], figures: Path) -> list:
    """Test accuracy against latent size, one curve per family (the same model and options at
    every size), trained against its untrained twin; error bars are the std over seeds."""
    probe = primary_probe(rows)
    curves = {}
    for row in rows:
        if row.kind != "encoder" or mean(row, probe or "") is None:
            continue
        twin = next((r for r in rows if r.kind == "random" and r.encoder == row.label), None)
        for label, source in ((f"{row.family}, trained", row), (f"{row.family}, untrained", twin)):
            if source is not None and mean(source, probe) is not None:
                _, std, _ = mean_std(source.accuracies[probe])
                curves.setdefault(label, []).append((row.dim, 100 * mean(source, probe), 100 * std))
    if not curves:
        return []
    references, swept = {}, []  # a baseline at one size is a level; one measured at several sizes, a curve
    for kind, name in (("kmeans", "k-means triangle (2011 reference)"), ("pca", "PCA of the pixels"),
                       ("pixels", "raw pixels")):
        measured = [row for row in rows if row.kind == kind and mean(row, probe) is not None]
        if len({row.dim for row in measured}) > 1:
            curves[name] = sorted((row.dim, 100 * mean(row, probe), 100 * mean_std(row.accuracies[probe])[1])
                                  for row in measured)
            swept.append(name)
        else:
            references.update({row.label: 100 * mean(row, probe) for row in measured})
    errorbar_chart({label: sorted(points) for label, points in curves.items()}, figures / "latent_size.png",
                   title=f"Test accuracy against latent size ({probe_title(probe)} probe)",
                   xlabel="latent size (values per image)", ylabel="test accuracy, %", log_x=True,
                   dashed=[label for label in curves if label.endswith("untrained")], dotted=swept, lines=references)
    return [Heading(2, "Accuracy against latent size"),
            Figure("figures/latent_size.png", f"Test accuracy of the {probe_title(probe)} probe against the latent "
                                              f"size; dashed: the same encoder untrained; "
                                              + (f"dotted: {', '.join([*swept, *references])}; "
                                                 if swept or references else "")
                                              + "bars: std over seeds")]


def compute_figure(rows: list[Row], figures: Path) -> list:
    """Test accuracy against pretraining minutes (wall time of the epochs where recorded, else the
    training steps alone), each point named with its hardware; the Pareto front (no other point is
    both faster and better) is drawn through."""
    probe = primary_probe(rows)
    points = []
    for row in (r for r in rows if r.kind == "encoder" and mean(r, probe or "") is not None):
        record = row.evals[0]
        wall = record.get("train_wall_seconds")
        seconds = wall if wall is not None else record.get("train_seconds")
        if seconds:
            points.append((seconds / 60, 100 * mean(row, probe), row.label.split(" (")[0],
                           record.get("trained_on") or "hardware not recorded", wall is not None))
    if not points:
        return []
    front, best = [], -1.0
    for minutes, accuracy, *_ in sorted(points):
        if accuracy > best:
            front.append((minutes, accuracy))
            best = accuracy
    series = {f"{label} ({machine})": [(minutes, accuracy, 0.0)] for minutes, accuracy, label, machine, _ in points}
    errorbar_chart(series, figures / "compute.png", title=f"Test accuracy against pretraining time "
                   f"({probe_title(probe)} probe)", xlabel="pretraining, minutes", ylabel="test accuracy, %",
                   log_x=True, front=front)
    steps_only = [label for *_, label, _, wall in points if not wall]
    return [Heading(2, "Accuracy against pretraining time"),
            Figure("figures/compute.png", "Test accuracy against pretraining minutes; the line joins the Pareto "
                                          "front (nothing else is both faster and better)"),
            *([Paragraph("Pretraining time counts the epochs' wall time with validation and pictures; for "
                         + ", ".join(steps_only) + " only the training steps were recorded (runs trained before "
                         "the wall time was).")] if steps_only else [])]
