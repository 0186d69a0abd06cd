"""``latentprobe report RUN...`` over evaluated runs (``compare``): one report, as Markdown + PNGs
and as a self-contained HTML page, built only from files the runs hold (eval.json, metrics.jsonl,
finetune.json, cached features), so it can be rebuilt at any time without training.

It opens with its verdict (answer.py), then the table, the two figures readers look at first
(accuracy against latent size and against pretraining time), the models, the choices made on
validation, depth, per-class results and t-SNE maps; where it came from is its footer.
The rows (results.py): runs whose training settings differ only in the seed form one row, and
each baseline is a row of the same table.
"""

import datetime
import os
from pathlib import Path

import numpy as np
import torch

from latentprobe import config as configuration
from latentprobe.distributed import local_device
from latentprobe.metrics import fmt, mean_std, most_confused, precision_recall
from latentprobe.options import CompareConfig
from latentprobe.plots import (
    class_heatmap,
    confusion_heatmap,
    grouped_bars,
    line_chart,
    scatter_maps,
)
from latentprobe.probe.evaluate import load_eval
from latentprobe.probe.features import run_features
from latentprobe.report.answer import (
    compute_figure,
    latent_size_figure,
    mean,
    probe_columns,
    probe_title,
    protocol_words,
    verdict,
)
from latentprobe.report.document import (
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    confusion_table,
    write_report,
)
from latentprobe.report.results import Row, collect_rows, layer_number
from latentprobe.runs import Run, write_json

BASELINE_TEXTS = {
    "random": "the same encoder with its untrained initial weights (the seed pretraining started from)",
    "kmeans": "the 2011 reference as released: k-means centroids (50 iterations from randn · 0.1) of the run's own "
              "whitened patches, as many as its filters, read with the triangle encoding",
    "pca": "PCA of the normalised pixels fitted on the training split to the latent size",
    "pixels": "raw pixels",
}
MANY_CLASSES = 20  # above this, Markdown lists the top confusions instead of the full matrix


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.split(" (")[0]).strip("_").lower()


def accuracy_table(rows: list[Row], probes: list[str]) -> Table:
    """Test accuracy of every model and baseline under every probe (and fine-tuning); the best
    cell of each column in bold."""
    best = {p: max((mean(r, p) for r in rows if mean(r, p) is not None), default=None) for p in probes}
    table = []
    for row in rows:
        cells = [f"**{fmt(row.accuracies[p])}**" if mean(row, p) is not None and mean(row, p) == best[p]
                 else fmt(row.accuracies.get(p, [])) for p in probes]
        table.append([row.label, row.dim, *cells, fmt(row.finetune) if row.kind == "encoder" else "–"])
    return Table(["representation", "dim", *[probe_title(p) + " %" for p in probes], "fine-tuned %"], table)


def model_table(rows: list[Row]) -> Table:
    """What each model costs and how well it reconstructs (pooled over its runs)."""
    header = ["model", "params (encoder / all)", "runs", "epochs (probed)", "val recon MSE", "PSNR dB",
              "training steps, s", "pretraining wall, min", "trained on"]
    table = []
    for row in (r for r in rows if r.kind == "encoder"):
        first = row.evals[0]
        walls = [r.get("train_wall_seconds") for r in row.evals]
        table.append([row.label, f"{first['encoder_params']:,} / {first['params']:,}", len(row.evals),
                      ", ".join("–" if r["epochs_trained"] is None else
                                f"{r['epochs_trained']} ({r.get('probed_epoch', r['epochs_trained'])})"
                                for r in row.evals),
                      fmt([r["val_mse"] for r in row.evals], 1.0, 5),
                      fmt([r["val_psnr"] for r in row.evals], 1.0, 2),
                      fmt([r["train_seconds"] for r in row.evals], 1.0, 0),
                      fmt([w / 60 for w in walls], 1.0, 1) if None not in walls else "not recorded",
                      first.get("trained_on") or "not recorded"])
    return Table(header, table)


def selection_table(rows: list[Row], probes: list[str]) -> Table:
    """What the validation split chose, per row and trained probe (seed 0 of the first run)."""
    table = []
    for row in rows:
        rep = row.evals[0]["representations"][row.kind]
        for probe in probes:
            result = rep["probes"].get(probe)
            if result is None or "chosen" not in result:
                continue
            lr = result["chosen"]["lr"]  # None: the solved logistic probe takes none
            table.append([row.label, probe_title(probe), "–" if lr is None else f"{lr:g}",
                          f"{result['chosen']['weight_decay']:g}",
                          ", ".join(str(s["best_epoch"]) for s in result["seeds"]),
                          fmt([result["chosen"].get("val_acc")]), fmt([s["test_acc"] for s in result["seeds"]])])
    return Table(["representation", "probe", "lr", "weight decay", "epochs kept per seed", "val acc % (choice)",
                  "test acc %"], table)


def _footer(evals: list[dict], rows: list[Row], cfg: CompareConfig) -> list:
    """Where the report came from: command, code, machines, dates, data, protocols, runs (by paths
    relative to the report)."""
    out = Path(cfg.out)
    dates = sorted({rep.get("date", e["date"]) for e in evals for rep in e["representations"].values()})
    machines = sorted({e.get("machine") or "not recorded" for e in evals})
    sizes = sorted({" / ".join(map(str, p["sizes"].values())) for e in evals
                    for rep in e["representations"].values() for p in rep["probes"].values() if p.get("sizes")})
    protocols = {}
    for row in rows:
        for probe, seen in row.protocols.items():
            for protocol in seen:
                protocols.setdefault(protocol_words(probe, protocol), []).append(row.label.split(" (")[0])
    kinds = {row.kind for row in rows}
    return [
        Heading(2, "How this report was made"),
        Bullets([
            f"Made {datetime.date.today().isoformat()} by `{configuration.command_line()}` "
            f"(git {configuration.git_sha() or 'unknown'}); probes evaluated by `latentprobe evaluate` "
            f"{dates[0][:10]}{' to ' + dates[-1][:10] if dates[-1][:10] != dates[0][:10] else ''} on "
            f"{'; '.join(machines)}.",
            f"Data: {evals[0]['train_config']['dataset']}, {evals[0]['label_type']} labels, "
            f"{len(evals[0]['class_names'])} classes; train / validation / test images: {'; '.join(sizes)} (the "
            f"validation split is carved from the training set with each run's seed; flipped training images count "
            f"twice). The validation split makes every choice; each probe seed reads the test set once.",
            "Cells are test accuracy, % **mean ± std (n)**: n counts probe seeds × pretraining runs (runs that "
            "differ only in their seed share a row); std is the sample std. kNN is deterministic, so its n counts "
            "pretraining runs only.",
            "Protocols: " + "; ".join(f"{words} ({', '.join(dict.fromkeys(labels))})"
                                      for words, labels in protocols.items()) + ".",
            "Baselines: " + (", ".join(text for name, text in BASELINE_TEXTS.items() if name in kinds) or "none")
            + ". Reconstruction MSE is on [0, 1] pixels of the validation split, at the epoch the probes read "
            "(the one with the lowest validation loss).",
            "Runs: " + "; ".join(f"{row.label.split(' (')[0]}: " + ", ".join(
                f"`{os.path.relpath(e['run'], out)}` (seed {e['train_config']['seed']}, " + (
                    "not trained here" if e['epochs_trained'] is None else
                    f"{e['epochs_trained']} epoch{'s' if e['epochs_trained'] != 1 else ''}") + ")"
                for e in row.evals) for row in rows if row.kind == "encoder") + ".",
        ]),
    ]


def _depth(rows: list[Row], probes: list[str], figures: Path) -> list:
    """Where the knowledge lives: test accuracy against the encoder stage (``evaluate --layers``);
    the last point of each curve is the stage the latent comes from."""
    curves = {}
    for row in rows:
        stages = sorted((r for r in rows if r.encoder == row.label and r.kind.startswith("layer_")), key=layer_number)
        for probe in probes:
            points = [(layer_number(r) or position, 100 * mean(r, probe))  # named layers: in their order
                      for position, r in enumerate(stages, 1) if mean(r, probe) is not None]
            if points:
                curves[f"{row.label}: {probe_title(probe)}"] = tuple(map(list, zip(*points)))
    if not curves:
        return []
    line_chart(curves, figures / "depth.png", title="Test accuracy by encoder stage", xlabel="stage (layer)",
               ylabel="test accuracy, %")
    return [Heading(2, "Where the knowledge lives: accuracy by depth"),
            Paragraph("Each stage of an encoder probed with the same protocol (`evaluate --layers`): the rows "
                      "'…, layer k' of the accuracy table, drawn against k."),
            Figure("figures/depth.png", "Test accuracy of each probe by encoder stage")]


def _per_class(rows: list[Row], class_names: list[str], figures: Path) -> list:
    many = len(class_names) > MANY_CLASSES
    confusions = {}  # label → (probe, (C, C) test confusion of the saved linear probe)
    for row in (r for r in rows if r.kind == "encoder"):
        encoder = row.evals[0]["representations"]["encoder"]
        probe = encoder.get("classifier") or next(p for p in encoder["probes"])
        confusions[row.label] = probe, np.array(encoder["probes"][probe]["confusion"])
    blocks = [Heading(2, "Per class"),
              Paragraph("For each model: the linear probe saved for `latentprobe predict` (seed 0, first run of "
                        "the row) on the test set. Confusion rows are the true class, columns the prediction.")]
    scores = {label.split(" (")[0]: precision_recall(matrix) for label, (_, matrix) in confusions.items()}
    for kind, index in (("precision", 0), ("recall", 1)):
        class_heatmap({label: pr[index].tolist() for label, pr in scores.items()}, class_names,
                      figures / f"per_class_{kind}.png", title=f"Test {kind} per class, %")
        blocks.append(Figure(f"figures/per_class_{kind}.png", f"Test {kind} per class and model, %"))
    for label, (probe, matrix) in confusions.items():
        precision, recall = precision_recall(matrix)
        slug = _slug(label)
        confusion_heatmap(matrix, class_names, figures / f"confusion_{slug}.png",
                          title=f"{label.split(' (')[0]}, {probe_title(probe)}: test confusion (rows: true)")
        pairs = most_confused(matrix, class_names, 15 if many else 5)
        blocks += [Heading(3, f"{label} ({probe_title(probe)}, test accuracy "
                              f"{100 * np.trace(matrix) / matrix.sum():.2f} %)"),
                   Paragraph("Most confused: " + ("; ".join(f"{t} → {p}: {n}" for t, p, n in pairs) or "none") + "."),
                   Figure(f"figures/confusion_{slug}.png", f"{label}: test confusion matrix")]
        if many:  # a 100×100 Markdown table helps nobody; the heatmap above stays
            lowest = np.argsort(recall)[:10]
            blocks.append(Paragraph("Lowest recall: " + ", ".join(
                f"{class_names[i]} {100 * recall[i]:.0f} %" for i in lowest) + "."))
        else:
            blocks += [Paragraph(f"Confusion matrix of {label.split(' (')[0]} (rows: true class):"),
                       confusion_table(matrix, class_names)]
    return blocks


def _tsne_maps(rows: list[Row], cfg: CompareConfig, figures: Path) -> list:
    if cfg.tsne_points <= 0:
        return []
    from sklearn.manifold import (
        TSNE,  # here, not at the top: importing it takes 1.4 s, for every command
    )

    device = local_device(cfg.device)
    maps, class_names = {}, None
    for row in (r for r in rows if r.kind == "encoder"):
        record = row.evals[0]  # the cache its probes read (test latents are the same with or without flips)
        flip_train = any(p.get("protocol", {}).get("flip_train") for p in record["representations"]["encoder"]
                         ["probes"].values())  # the cache its probes read
        data = run_features(Run.of(record["run"], cfg.data_dir, cfg.download), device, cfg.label_type,
                            record.get("pool"), flip_train=flip_train)
        class_names = data.class_names
        generator = torch.Generator().manual_seed(0)  # the same test images in every map
        take = torch.randperm(len(data.labels["test"]), generator=generator)[:cfg.tsne_points]
        points = data.features["test"][take].cpu().numpy()
        perplexity = min(30.0, (len(points) - 1) / 3)
        embedded = TSNE(2, init="pca", learning_rate="auto", perplexity=perplexity,
                        random_state=0).fit_transform(points)
        maps[row.label.split(" (")[0]] = (embedded, data.labels["test"][take].numpy())
    if not maps:
        return []
    scatter_maps(maps, class_names, figures / "tsne.png",
                 title=f"t-SNE of {len(next(iter(maps.values()))[1])} test latents, coloured by true class")
    return [Heading(2, "Map of test latents"),
            Paragraph("t-SNE (scikit-learn, PCA init, perplexity 30 or less for few points, seed 0) of a random "
                      "subset of the test latents of each model (first run of each row). Distances between far "
                      "clusters mean little."),
            Figure("figures/tsne.png", "t-SNE maps of test latents coloured by class")]


def write_comparison(runs: list[Path], cfg: CompareConfig) -> Path:
    """Write report.md, report.html, summary.json and figures/ into ``cfg.out``; returns the HTML path."""
    if not runs:
        raise ValueError("compare needs at least one run directory")
    evals = [load_eval(run, cfg.label_type) for run in runs]
    missing = [e["run"] for e in evals if "encoder" not in e["representations"]]
    if missing:
        raise ValueError(f"{', '.join(missing)}: evaluation unfinished; run `latentprobe evaluate` again")
    class_names = evals[0]["class_names"]
    if any(e["class_names"] != class_names for e in evals):
        raise ValueError("the runs do not share one label set (dataset or --label-type differ)")
    out = Path(cfg.out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(evals)
    probes = probe_columns(rows)
    nan = float("nan")
    means = {probe_title(p): [100 * mean(r, p) if mean(r, p) is not None else nan for r in rows] for p in probes}
    stds = {probe_title(p): [100 * mean_std(r.accuracies[p])[1] if r.accuracies.get(p) else 0.0 for r in rows]
            for p in probes}
    top = max((m + s for p in means for m, s in zip(means[p], stds[p]) if m == m), default=100.0)
    grouped_bars(means, [r.label.split(" (")[0] for r in rows], figures / "accuracy.png", errors=stds,
                 ylim=(0, min(100.0, top + 10)), title="Test accuracy by representation and probe (mean ± std)",
                 ylabel="test accuracy, %")
    blocks = [Heading(1, cfg.title), *verdict(rows), Heading(2, "Test accuracy"), accuracy_table(rows, probes)]
    blocks += latent_size_figure(rows, figures)
    blocks += compute_figure(rows, figures)
    blocks += [
        Figure("figures/accuracy.png", "Test accuracy per representation and probe; bars are mean ± std"),
        Heading(2, "Models"),
        Paragraph("Parameters of the encoder (what the probes read) and of the whole autoencoder; epochs trained "
                  "and, in brackets, the epoch the probes read (lowest validation loss) with its reconstruction on "
                  "the validation split; time in the training steps alone, and the epochs' wall time with "
                  "validation and pictures."),
        model_table(rows),
        Heading(2, "Model selection"),
        Paragraph("The grid point chosen on the validation split, and the epochs each seed kept (a refit trains "
                  "the chosen epochs on training + validation)."),
        selection_table(rows, probes),
    ]
    blocks += _depth(rows, probes, figures)
    blocks += _per_class(rows, class_names, figures)
    blocks += _tsne_maps(rows, cfg, figures)
    blocks += _footer(evals, rows, cfg)
    linked = {Path(block.path).name for block in blocks if isinstance(block, Figure)}
    for png in figures.glob("*.png"):
        if png.name not in linked:  # left by an earlier comparison of other rows
            png.unlink()
    write_report(blocks, out, "report", cfg.title)
    write_json(out / "summary.json", [{"label": r.label, "kind": r.kind, "latent_dim": r.dim,
                                       "runs": [os.path.relpath(e["run"], out) for e in r.evals],
                                       "test_acc": {p: dict(zip(("mean", "std", "n"), mean_std(v)))
                                                    for p, v in r.accuracies.items()},
                                       "finetune_test_acc": r.finetune} for r in rows])
    return out / "report.html"
