"""``latentprobe compare RUN...``: one report over evaluated runs, as Markdown + PNGs and as a
self-contained HTML page, built only from files the runs hold (eval.json, metrics.jsonl,
finetune.json, cached features), so it can be rebuilt at any time without training.

The rows (results.py): runs whose training settings differ only in the seed form one row, and
each baseline is a row of the same table.
"""

import datetime
import platform
from pathlib import Path

import numpy as np
import torch

from latentprobe import config as configuration
from latentprobe.distributed import local_device
from latentprobe.metrics import mean_std, most_confused, precision_recall
from latentprobe.options import CompareConfig
from latentprobe.plots import confusion_heatmap, grouped_bars, line_chart, scatter_maps
from latentprobe.probe.evaluate import load_eval
from latentprobe.probe.features import run_features
from latentprobe.report.document import Bullets, Figure, Heading, Paragraph, Table, confusion_table, write_report
from latentprobe.report.results import Row, collect_rows, layer_number
from latentprobe.runs import write_json

PROBE_NAMES = {"linear": "linear", "bn_linear": "linear+BN", "mlp": "MLP"}
BASELINE_TEXTS = {
    "random": "the same encoder with its untrained initial weights (the seed pretraining started from)",
    "kmeans": "the 2011 reference: k-means centroids of the run's own whitened patches (as many as its filters), "
              "read with the triangle encoding",
    "pca": "PCA of the normalised pixels fitted on the training split to the latent size",
    "pixels": "raw pixels",
}
MANY_CLASSES = 20  # above this, Markdown lists the top confusions instead of the full matrix


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std (n)``; sample std, 0 for one value; "–" when there is nothing."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, std, n = mean_std(values)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f} ({n})"


def probe_columns(rows: list[Row]) -> list[str]:
    present = {probe for row in rows for probe in row.accuracies}
    knn = sorted((p for p in present if p.startswith("knn_")), key=lambda p: int(p.split("_")[1]))
    return [p for p in PROBE_NAMES if p in present] + knn


def probe_title(probe: str) -> str:
    return PROBE_NAMES.get(probe) or f"kNN k={probe.split('_')[1]}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def accuracy_table(rows: list[Row], probes: list[str]) -> Table:
    """Test accuracy of every model and baseline under every probe (and fine-tuning)."""
    header = ["representation", "dim", *[probe_title(p) + " %" for p in probes], "fine-tuned %"]
    return Table(header, [[f"**{row.label}**" if row.kind == "encoder" else row.label, row.dim,
                           *[fmt(row.accuracies.get(p, [])) for p in probes],
                           fmt(row.finetune) if row.kind == "encoder" else "–"] for row in rows])


def model_table(rows: list[Row]) -> Table:
    """What each model costs and how well it reconstructs (pooled over its runs)."""
    header = ["model", "latent dim", "params (encoder / all)", "runs", "epochs (probed)", "val recon MSE",
              "PSNR dB", "train s"]
    table = []
    for row in (r for r in rows if r.kind == "encoder"):
        first = row.evals[0]
        table.append([row.label, row.dim, f"{first['encoder_params']:,} / {first['params']:,}", len(row.evals),
                      ", ".join(f"{r['epochs_trained']} ({r.get('probed_epoch', r['epochs_trained'])})"
                                for r in row.evals),
                      fmt([r["val_mse"] for r in row.evals], 1.0, 5),
                      fmt([r["val_psnr"] for r in row.evals], 1.0, 2),
                      fmt([r["train_seconds"] for r in row.evals], 1.0, 0)])
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
            table.append([row.label, probe_title(probe), result["chosen"]["lr"], result["chosen"]["weight_decay"],
                          ", ".join(str(s["best_epoch"]) for s in result["seeds"]),
                          fmt([s["val_acc"] for s in result["seeds"]]), fmt([s["test_acc"] for s in result["seeds"]])])
    return Table(["representation", "probe", "lr", "weight decay", "best epoch per seed", "val acc %",
                  "test acc %"], table)


def _header(evals: list[dict], cfg: CompareConfig) -> list:
    protocol = evals[0]["protocol"]
    differ = [f"{Path(e['run']).name} (" + ", ".join(f"{k}={e['protocol'].get(k, 'default')}"
                                                    for k in sorted(set(protocol) | set(e["protocol"]))
                                                    if protocol.get(k) != e["protocol"].get(k)) + ")"
              for e in evals if e["protocol"] != protocol]
    ks = ", ".join(str(k) for k in protocol["knn_k"])
    where = sorted({f"{e['device']} on {e['host']}" for e in evals})
    # when the probes ran (older eval.json files only know when `evaluate` was last called)
    dates = sorted({rep.get("date", e["date"]) for e in evals for rep in e["representations"].values()})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    probes = {probe for e in evals for probe in e["protocol"]["probes"]}
    baselines = {name for e in evals for name in e["representations"]}
    probe_texts = {
        "linear": "`linear` (the study's Linear + log-softmax)",
        "bn_linear": "`linear+BN` (BatchNorm1d without affine before the Linear, MAE's protocol)",
        "mlp": f"`MLP` (BatchNorm, one hidden layer of {protocol['mlp_hidden']} with BatchNorm + ReLU)",
        "knn": f"weighted kNN with cosine similarity, k in {{{ks}}}, temperature {protocol['knn_temperature']}",
    }
    sizes = "; ".join(dict.fromkeys(" / ".join(map(str, e["representations"]["encoder"]["sizes"].values()))
                                    for e in evals if "sizes" in e["representations"]["encoder"]))
    return [
        Heading(1, cfg.title),
        Bullets([
            f"Report made {datetime.datetime.now().isoformat(timespec='minutes')} on {platform.node()} by "
            f"`{configuration.command_line()}` (git {configuration.git_sha() or 'unknown'}).",
            f"Probes evaluated by `latentprobe evaluate` on {'; '.join(where)}, {when}.",
            f"Data: {evals[0]['train_config']['dataset']}, {evals[0]['label_type']} labels, "
            f"{len(evals[0]['class_names'])} classes; train / validation / test images: {sizes} "
            "(the validation split is carved from the training set with each run's seed).",
            "Probes over frozen features, extracted once: "
            + ", ".join(text for probe, text in probe_texts.items() if probe in probes)
            + f"; the trained heads use Adam with batch {protocol['probe_batch_size']}.",
            f"Model selection on the validation split only: grid lr ∈ {{{', '.join(map(str, protocol['probe_lrs']))}}} × "
            f"weight decay ∈ {{{', '.join(map(str, protocol['probe_weight_decays']))}}}, epochs = best validation "
            f"epoch up to {protocol['probe_epochs']} (stop after {protocol['probe_patience']} epochs without gain), "
            f"chosen with seed 0; the chosen setting is then trained with {protocol['probe_seeds']} probe seeds and "
            f"each reads the test set once. "
            + ("The lr decays to 0 by a cosine over the epochs. " if protocol.get("probe_schedule") == "cosine" else "")
            + ("The probes also train on the training images mirrored left to right (`--flip-train`: the "
               "training count above holds both views); validation and test images are read as they are."
               if protocol.get("flip_train") else ""),
            "Cells are test accuracy **mean ± std (n)**: n counts probe seeds × pretraining runs (runs that "
            "differ only in their seed share a row); std is the sample std. kNN is deterministic, so its n "
            "counts pretraining runs only, and one run has std 0.",
            "Baselines: " + (", ".join(text for name, text in BASELINE_TEXTS.items() if name in baselines) or "none")
            + ". Reconstruction MSE is on [0, 1] pixels of the validation split, at the epoch the probes read "
            "(the one with the lowest validation loss).",
            *([f"Protocols differ for: {'; '.join(differ)}."] if differ else []),
        ]),
    ]


def _depth(rows: list[Row], probes: list[str], figures: Path) -> list:
    """Where the knowledge lives: test accuracy against the encoder stage (``evaluate --layers``);
    the last point of each curve is the stage the latent comes from."""
    curves = {}
    for row in rows:
        stages = sorted((r for r in rows if r.encoder == row.label), key=layer_number)
        for probe in probes:
            points = [(layer_number(r), mean_std(r.accuracies[probe])[0]) for r in stages if r.accuracies.get(probe)]
            if points:
                curves[f"{row.label}: {probe_title(probe)}"] = tuple(map(list, zip(*points)))
    if not curves:
        return []
    line_chart(curves, figures / "depth.png", title="Test accuracy by encoder stage", xlabel="stage (layer)",
               ylabel="test accuracy")
    return [Heading(2, "Where the knowledge lives: accuracy by depth"),
            Paragraph("Each stage of an encoder probed with the same protocol (`evaluate --layers`): the rows "
                      "'…, layer k' of the accuracy table, drawn against k."),
            Figure("figures/depth.png", "Test accuracy of each probe by encoder stage")]


def _per_class(rows: list[Row], class_names: list[str], figures: Path) -> list:
    many = len(class_names) > MANY_CLASSES
    confusions = {}  # label → (probe, (C, C) test confusion of the saved linear head)
    for row in (r for r in rows if r.kind == "encoder"):
        encoder = row.evals[0]["representations"]["encoder"]
        probe = encoder.get("classifier", "bn_linear")
        confusions[row.label] = probe, np.array(encoder["probes"][probe]["confusion"])
    blocks = [Heading(2, "Per class"),
              Paragraph("For each model: the linear head saved for `latentprobe predict` (seed 0, first run of "
                        "the row) on the test set. Confusion rows are the true class, columns the prediction.")]
    if not many:
        scores = {label: precision_recall(matrix) for label, (_, matrix) in confusions.items()}
        header = ["class"] + [f"{label} {m}" for label in scores for m in ("P", "R")]
        table = [[name] + [f"{100 * pr[k][i]:.1f}" for pr in scores.values() for k in (0, 1)]
                 for i, name in enumerate(class_names)]
        blocks += [Paragraph("Precision (P) and recall (R), % on the test set:"), Table(header, table)]
    for label, (probe, matrix) in confusions.items():
        precision, recall = precision_recall(matrix)
        slug = _slug(label)
        confusion_heatmap(matrix, class_names, figures / f"confusion_{slug}.png",
                          title=f"{label}, {probe_title(probe)}: test confusion (rows: true)")
        grouped_bars({"precision": precision.tolist(), "recall": recall.tolist()}, class_names,
                     figures / f"precision_recall_{slug}.png", title=f"{label}: per-class precision and recall",
                     ylabel="fraction")
        pairs = most_confused(matrix, class_names, 15 if many else 5)
        blocks += [Heading(3, f"{label} ({probe_title(probe)}, test accuracy "
                              f"{100 * np.trace(matrix) / matrix.sum():.2f} %)"),
                   Paragraph("Most confused: " + ("; ".join(f"{t} → {p}: {n}" for t, p, n in pairs) or "none") + "."),
                   Figure(f"figures/confusion_{slug}.png", f"{label}: test confusion matrix"),
                   Figure(f"figures/precision_recall_{slug}.png", f"{label}: precision and recall per class")]
        if many:  # a 100×100 Markdown table helps nobody; the heatmap above stays
            lowest = np.argsort(recall)[:10]
            blocks.append(Paragraph("Lowest recall: " + ", ".join(
                f"{class_names[i]} {100 * recall[i]:.0f} %" for i in lowest) + "."))
        else:
            blocks += [Paragraph(f"Confusion matrix of {label} (rows: true class):"),
                       confusion_table(matrix, class_names)]
    return blocks


def _tsne_maps(rows: list[Row], cfg: CompareConfig, figures: Path) -> list:
    if cfg.tsne_points <= 0:
        return []
    from sklearn.manifold import TSNE  # here, not at the top: importing it takes 1.4 s, for every command

    device = local_device(cfg.device)
    maps, class_names = {}, None
    for row in (r for r in rows if r.kind == "encoder"):
        record = row.evals[0]  # the cache its probes read (test latents are the same with or without flips)
        data = run_features(cfg.run(record["run"]), device, cfg.label_type, record.get("pool"),
                            flip_train=record["protocol"].get("flip_train", False))
        class_names = data.class_names
        generator = torch.Generator().manual_seed(0)  # the same test images in every map
        take = torch.randperm(len(data.labels["test"]), generator=generator)[:cfg.tsne_points]
        points = data.features["test"][take].cpu().numpy()
        perplexity = min(30.0, (len(points) - 1) / 3)
        embedded = TSNE(2, init="pca", learning_rate="auto", perplexity=perplexity,
                        random_state=0).fit_transform(points)
        maps[row.label] = (embedded, data.labels["test"][take].numpy())
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
    means = {probe_title(p): [mean_std(r.accuracies[p])[0] if r.accuracies.get(p) else 0.0 for r in rows]
             for p in probes}
    stds = {probe_title(p): [mean_std(r.accuracies[p])[1] if r.accuracies.get(p) else 0.0 for r in rows]
            for p in probes}
    top = max((m + s for p in means for m, s in zip(means[p], stds[p])), default=1.0)
    grouped_bars(means, [r.label for r in rows], figures / "accuracy.png", errors=stds, ylim=(0, min(1.0, top + 0.1)),
                 title="Test accuracy by representation and probe (mean ± std)", ylabel="test accuracy")
    blocks = _header(evals, cfg) + [
        Heading(2, "Test accuracy"), accuracy_table(rows, probes),
        Figure("figures/accuracy.png", "Test accuracy per representation and probe; bars are mean ± std"),
        Heading(2, "Models"),
        Paragraph("Parameters of the encoder (what the probes read) and of the whole autoencoder; "
                  "epochs trained and, in brackets, the epoch the probes read (lowest validation loss) with "
                  "its reconstruction on the validation split; training time summed over epochs."),
        model_table(rows),
        Heading(2, "Model selection"),
        Paragraph("The grid point chosen on the validation split, and the epoch of best validation accuracy "
                  "that each seed kept."),
        selection_table(rows, probes),
    ]
    blocks += _depth(rows, probes, figures)
    blocks += _per_class(rows, class_names, figures)
    blocks += _tsne_maps(rows, cfg, figures)
    blocks += [Heading(2, "Runs"), Bullets([f"{row.label}: " + ", ".join(
        f"`{e['run']}` (seed {e['train_config']['seed']}, {e['epochs_trained']} epochs)" for e in row.evals)
        for row in rows if row.kind == "encoder"])]
    linked = {Path(block.path).name for block in blocks if isinstance(block, Figure)}
    for png in figures.glob("*.png"):
        if png.name not in linked:  # left by an earlier comparison of other rows
            png.unlink()
    write_report(blocks, out, "report", cfg.title)
    write_json(out / "summary.json", [{"label": r.label, "kind": r.kind, "latent_dim": r.dim,
                                       "runs": [e["run"] for e in r.evals],
                                       "test_acc": {p: dict(zip(("mean", "std", "n"), mean_std(v)))
                                                    for p, v in r.accuracies.items()},
                                       "finetune_test_acc": r.finetune} for r in rows])
    return out / "report.html"
