"""``latentprobe report RUN --kind classifiers`` (``mae-report``): frozen vs fine-tuned
classifiers on one encoder, side by side, with the verdict first.

Built only from the files the other commands leave in RUN, so it can be rebuilt at any time
without training: the frozen probes of ``eval.json`` (``latentprobe probe`` or ``evaluate``:
cached latents), ``finetune_frozen.json`` (optional online linear probe) and ``finetune.json``
(``latentprobe finetune``, encoder trained end to end). Writes RUN/mae_report.md and the
self-contained RUN/mae_report.html with accuracy curves, per-class precision and the confusion
matrices.
"""

from pathlib import Path

import numpy as np

from latentprobe import config as configuration
from latentprobe.metrics import precision_recall
from latentprobe.plots import class_heatmap, confusion_heatmap, line_chart
from latentprobe.probe.evaluate import load_eval
from latentprobe.report.document import (
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    write_report,
)
from latentprobe.runs import Run

# frozen probes of eval.json: (label, how the number was made)
FROZEN = {"linear": ("frozen, linear", "the study's head: Linear + log-softmax over cached latents, Adam"),
          "bn_linear": ("frozen, BN + linear", "MAE linear-probe protocol: BatchNorm1d(affine=False) → Linear"),
          "logistic": ("frozen, logistic", "logistic regression on standardised latents, to convergence")}
# classifiers of `finetune`: (label, how, the result file in RUN)
FINETUNED = (
    ("frozen, online head", "`finetune --freeze-encoder`: head on the frozen encoder, augmented batches",
     lambda run: run.finetune_file(frozen=True)),
    ("fine-tuned", "`finetune`: encoder + head end to end, AdamW, layer decay, label smoothing, drop-path, "
                   "crop + flip", lambda run: run.finetune_file()),
)


def _from_eval(result: dict, record: dict) -> dict:
    """A frozen probe of eval.json in the shape of a finetune record (its seed 0)."""
    return {"history": result["seeds"][0]["history"], "best_epoch": result["chosen"]["best_epoch"],
            "val_acc": result["chosen"]["val_acc"], "test_acc": result["seeds"][0]["test_acc"],
            "confusion": result["confusion"], "class_names": record["class_names"],
            "latent_dim": record["latent_dim"], "pool": record.get("pool"),
            "precision": precision_recall(np.array(result["confusion"]))[0].tolist()}


def load_results(run: Run) -> dict[str, dict]:
    """label → record of every classifier the run holds, frozen probes first."""
    results, how = {}, {}
    if run.eval_file().is_file():
        record = load_eval(run)
        probes = record["representations"].get("encoder", {}).get("probes", {})
        for probe, (label, words) in FROZEN.items():
            if probe in probes and probes[probe]["seeds"][0].get("history"):
                results[label], how[label] = _from_eval(probes[probe], record), f"{words} (`eval.json`)"
    for label, words, file in FINETUNED:
        if file(run).is_file():
            results[label], how[label] = run.read_result(file(run)), f"{words} (`{file(run).name}`)"
            made_from = results[label].get("source_weights")  # older files carry no digest
            if made_from and run.checkpoint_file.is_file() and made_from != run.weights:
                raise ValueError(f"{file(run)} fine-tuned other pretrained weights than {run.checkpoint_file} holds "
                                 f"now (the run was trained again or further); run `latentprobe finetune "
                                 f"{run.path}` again into a new --out")
    if not results:
        raise FileNotFoundError(f"{run.path} has no classifier results; run `latentprobe probe RUN --head linear` "
                                f"(and bn_linear) and `latentprobe finetune RUN` first")
    return {label: {**record, "how": how[label]} for label, record in results.items()}


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
        curves[f"{label}: val"] = (epochs, [100 * h["val_acc"] for h in record["history"]])
    line_chart(curves, figures / "accuracy.png", title=f"{run_dir.name}: frozen vs fine-tuned", ylabel="accuracy, %")
    class_heatmap({label: r["precision"] for label, r in results.items()}, class_names, figures / "precision.png",
                  title="Test precision per class, % (best validation epoch)")
    for i, (label, record) in enumerate(results.items()):
        confusion_heatmap(np.array(record["confusion"]), class_names, figures / f"confusion_{i}.png",
                          title=f"{label} (rows: true)")

    title = f"{run_dir.name}: classifiers on the encoder, frozen vs fine-tuned"
    rows = [[label, "trained" if label == "fine-tuned" else "frozen", _pooling(record, run_pooling),
             record["best_epoch"], f"{100 * record['val_acc']:.2f}", f"{100 * record['test_acc']:.2f}", record["how"]]
            for label, record in results.items()]
    best_label = max(results, key=lambda label: results[label]["val_acc"])
    frozen = {label: r for label, r in results.items() if label != "fine-tuned"}
    answer = [f"**Answer: {best_label} reads {100 * results[best_label]['test_acc']:.2f} % on the test set** "
              f"(chosen by validation accuracy, {100 * results[best_label]['val_acc']:.2f} %)."]
    if "fine-tuned" in results and frozen:
        best_frozen = max(frozen, key=lambda label: frozen[label]["test_acc"])
        gain = results["fine-tuned"]["test_acc"] - frozen[best_frozen]["test_acc"]
        answer.append(f"Fine-tuning the encoder gives {100 * gain:+.2f} points over the best frozen classifier "
                      f"({best_frozen}).")
    last = [label for label, r in results.items() if r["best_epoch"] == len(r["history"]) and len(r["history"]) > 1]
    if last:
        answer.append(f"Read with care: {', '.join(last)} kept the last epoch trained: still learning when it stopped.")
    blocks = [
        Heading(1, title),
        Heading(2, "Verdict"),
        Bullets(answer),
        Paragraph(f"Latent: **{latent_dim}** values per image; pooling per classifier in the table. Every number is "
                  f"test accuracy, %, at the epoch with the best validation accuracy (validation split carved from "
                  f"the training set with the run's seed; one seed)."),
        Table(["classifier", "encoder", "pooling", "best epoch", "val acc %", "test acc %", "how"], rows),
        Figure("mae_report/accuracy.png", "accuracy"),
        Figure("mae_report/precision.png", "precision per class"),
        Paragraph("Confusion matrices on the test set (rows: true class):"),
        *(Figure(f"mae_report/confusion_{i}.png", label) for i, label in enumerate(results)),
    ]
    return write_report(blocks, run_dir, "mae_report", title)
