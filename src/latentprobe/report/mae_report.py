"""``latentprobe mae-report RUN``: frozen vs fine-tuned classifiers on one encoder, side by side.

Built only from the JSON files the other commands leave in RUN, so it can be rebuilt at any
time without training: ``probe_linear.json`` and ``probe_bn_linear.json`` (``latentprobe probe``,
frozen encoder, cached latents), ``finetune_frozen.json`` (optional online linear probe) and
``finetune.json`` (``latentprobe finetune``, encoder trained end to end). Writes
RUN/mae_report.md and the self-contained RUN/mae_report.html with accuracy curves, per-class precision and the confusion matrices.
"""

from pathlib import Path

import numpy as np

from latentprobe import config as configuration
from latentprobe.plots import confusion_heatmap, grouped_bars, line_chart
from latentprobe.report.document import Figure, Heading, Paragraph, Table, write_report
from latentprobe.runs import Run

# (label in the report, how the number was made, the result file in RUN)
SOURCES = (
    ("frozen, linear", "the study's head: Linear + log-softmax over cached latents, Adam",
     lambda run: run.probe_file("linear")),
    ("frozen, BN + linear", "MAE linear-probe protocol: BatchNorm1d(affine=False) → Linear",
     lambda run: run.probe_file("bn_linear")),
    ("frozen, online head", "`finetune --freeze-encoder`: head on the frozen encoder, augmented batches",
     lambda run: run.finetune_file(frozen=True)),
    ("fine-tuned", "`finetune`: encoder + head end to end, AdamW, layer decay, label smoothing, drop-path, "
                   "crop + flip", lambda run: run.finetune_file()),
)


def load_results(run: Run) -> dict[str, dict]:
    results = {label: run.read_result(file(run)) for label, _, file in SOURCES if file(run).is_file()}
    if not results:
        names = ", ".join(file(run).name for _, _, file in SOURCES)
        raise FileNotFoundError(f"{run.path} has none of {names}; run `latentprobe probe RUN --head linear` "
                                f"(and bn_linear) and `latentprobe finetune RUN` first")
    return results


def _latent_dim(results: dict[str, dict]) -> str:
    return next((str(r["latent_dim"]) for r in results.values() if r.get("latent_dim")), "?")


def _run_pooling(run: Run) -> str:
    """The pooling the run was pretrained with, from its config.yaml."""
    config = configuration.read_saved(run.path)["config"] if run.config_file.is_file() else {}
    default = "cls" if str(config.get("model", "")).startswith("mae") else "the latent vector"
    return str(config.get("model_args", {}).get("pool", default))


def _pooling(record: dict, run_pooling: str) -> str:
    """What a classifier read: its record's ``pool`` when it chose one, else the run's."""
    if "pool" in record:
        return str(record["pool"] or "the latent vector")
    return run_pooling


def write_mae_report(run: Run | Path | str) -> Path:
    run = Run.of(run)
    run_dir = run.path
    results = load_results(run)
    figures = run_dir / "mae_report"
    class_names = next(r["class_names"] for r in results.values() if "class_names" in r)
    latent_dim, run_pooling = _latent_dim(results), _run_pooling(run)

    curves = {}
    for label, record in results.items():
        epochs = [h["epoch"] for h in record["history"]]
        curves[f"{label}: val"] = (epochs, [h["val_acc"] for h in record["history"]])
    line_chart(curves, figures / "accuracy.png", title=f"{run_dir.name}: frozen vs fine-tuned", ylabel="accuracy")
    grouped_bars({label: r["precision"] for label, r in results.items()}, class_names,
                 figures / "precision.png", title="per-class precision (test, best validation epoch)",
                 ylabel="precision")
    for i, (label, record) in enumerate(results.items()):
        confusion_heatmap(np.array(record["confusion"]), class_names, figures / f"confusion_{i}.png",
                          title=f"{label} (rows: true)")

    title = f"{run_dir.name}: classifiers on the encoder, frozen vs fine-tuned"
    rows = [[label, "trained" if label == "fine-tuned" else "frozen", _pooling(results[label], run_pooling),
             results[label]["best_epoch"], f"{results[label]['val_acc']:.4f}", f"{results[label]['test_acc']:.4f}",
             f"{how} (`{file(run).name}`)"] for label, how, file in SOURCES if label in results]
    blocks = [
        Heading(1, title),
        Paragraph(f"Latent: **{latent_dim}** values per image; pooling per classifier in the table. Every number is "
                  f"test accuracy at the epoch with the best validation accuracy (validation split carved from the "
                  f"training set with the run's seed; one seed)."),
        Table(["classifier", "encoder", "pooling", "best epoch", "val acc", "test acc", "how"], rows),
        Figure("mae_report/accuracy.png", "accuracy"),
        Figure("mae_report/precision.png", "precision"),
        Table(["class", *results], [[name, *(f"{r['precision'][c]:.3f}" for r in results.values())]
                                    for c, name in enumerate(class_names)]),
        Paragraph("Confusion matrices on the test set (rows: true class):"),
        *(Figure(f"mae_report/confusion_{i}.png", label) for i, label in enumerate(results)),
    ]
    return write_report(blocks, run_dir, "mae_report", title)
