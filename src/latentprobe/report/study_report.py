"""The study report (Markdown + self-contained HTML + PNGs), built only from the files a study
leaves behind, and the figures of one ``latentprobe probe``."""

import datetime
import platform
from pathlib import Path

import numpy as np
import torch

from latentprobe import config as configuration
from latentprobe.metrics import most_confused
from latentprobe.plots import confusion_heatmap, grouped_bars, image_grid, line_chart
from latentprobe.report.document import (
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    confusion_table,
    to_markdown,
    write_report,
)
from latentprobe.runs import Run, read_jsonl


def _denoising(cfg: dict) -> str:
    noise = cfg.get("noise")  # absent in studies made before the option existed
    return f" (denoising: input noise σ = {noise}, clean target)" if noise else ""


def _architecture(cfg: dict) -> str:
    """The studied autoencoder in words: the write-up's conv AE drawn out, any other by name."""
    model = cfg.get("model", "conv_ae")  # absent in studies made before the option existed
    if model != "conv_ae":
        options = " ".join(f"{k}={v}" for k, v in cfg.get("model_args", {}).items())
        return f"`{model}`{' (' + options + ')' if options else ''}, trained on its own loss"
    return (f"Conv(3→{cfg['c1']}) → ReLU → MaxPool → ReLU → Conv({cfg['c1']}→{cfg['c2']}) → Linear; "
            f"MSE{_denoising(cfg)}")


def _latent_runs(study_dir: Path) -> list[tuple[int, Run]]:
    runs = [(int(p.name.split("_")[1]), Run(p)) for p in study_dir.glob("latent_*")]
    return sorted(((size, run) for size, run in runs if run.probe_result("linear")), key=lambda item: item[0])


def write_study_report(study_dir: Path, device: str | None = None) -> Path:
    study_dir = Path(study_dir)
    saved = configuration.read_saved(study_dir)
    cfg = saved["config"]
    runs = _latent_runs(study_dir)
    if not runs:
        raise FileNotFoundError(f"{study_dir} holds no finished latent_* runs; run `latentprobe study` first")
    figures = study_dir / "figures"
    metrics = {size: read_jsonl(run.metrics_file) for size, run in runs}
    probes = {f"latent {size}": run.probe_result("linear") for size, run in runs}
    pixels = Run(study_dir / "pixels").probe_result("linear")
    detectors = dict(probes, **({"raw pixels": pixels} if pixels else {}))
    class_names = next(iter(probes.values()))["class_names"]

    def curves(records: dict, key: str) -> dict:
        return {label: ([h["epoch"] for h in r["history"]], [h[key] for h in r["history"]])
                for label, r in records.items()}

    line_chart({f"latent {s}": ([m["epoch"] for m in ms], [m["train_loss"] for m in ms])
                for s, ms in metrics.items()}, figures / "ae_loss.png",
               title="Autoencoder training loss (MSE, normalised pixels)", ylabel="MSE", log_y=True)
    line_chart(curves(detectors, "train_loss"), figures / "detector_loss.png",
               title="Detector training loss (NLL)", ylabel="NLL")
    line_chart(curves(detectors, "train_acc"), figures / "detector_train_acc.png",
               title="Detector accuracy, training set", ylabel="accuracy")
    line_chart(curves(detectors, "val_acc"), figures / "detector_val_acc.png",
               title="Detector accuracy, validation set (it chooses the epoch; test is read once)",
               ylabel="accuracy")
    grouped_bars({label: r["precision"] for label, r in detectors.items()}, class_names,
                 figures / "test_precision.png", title="Per-class test precision", ylabel="precision")
    samples = {size: torch.load(run.path / "reconstructions.pt", weights_only=True) for size, run in runs
               if (run.path / "reconstructions.pt").exists()}
    if samples:
        rows = {"original": next(iter(samples.values()))["original"].float() / 255}
        rows.update({f"latent {s}": v["reconstruction"].float() / 255 for s, v in samples.items()})
        image_grid(rows, figures / "reconstructions.png", title="Validation images and reconstructions")

    best = sorted(probes, key=lambda label: probes[label]["val_acc"], reverse=True)[:2]
    summary_rows = []
    for size, _ in runs:
        # the epoch whose latents were probed: the lowest validation loss
        last, probe = min(metrics[size], key=lambda m: m["val_loss"]), probes[f"latent {size}"]
        summary_rows.append([size, f"{last['val_mse']:.5f}", f"{last['val_psnr']:.2f}",
                             f"{probe['val_acc']:.4f}", f"**{probe['test_acc']:.4f}**", probe["best_epoch"],
                             f"{sum(m['epoch_seconds'] for m in metrics[size]):.0f}",
                             f"{probe['probe_seconds']:.1f}"])
    if pixels:
        summary_rows.append(["raw pixels (3072)", "–", "–", f"{pixels['val_acc']:.4f}",
                             f"**{pixels['test_acc']:.4f}**", pixels["best_epoch"], "–",
                             f"{pixels['probe_seconds']:.1f}"])

    title = (f"{'Convolutional autoencoder' if cfg.get('model', 'conv_ae') == 'conv_ae' else cfg['model']}: "
             f"what the latent knows")
    blocks = [
        Heading(1, title),
        Bullets([
            f"Date: {datetime.date.today().isoformat()}; device: {device or 'see config'}; "
            f"host: {platform.node()} ({platform.processor() or platform.machine()})",
            f"Command: `{saved['command']}` (git {saved.get('git_sha') or 'unknown'})",
            f"Data: {cfg['dataset']}; a {cfg['val_size']}-image validation split carved from the training set "
            f"(seed {cfg['seed']}) chooses the detector's epoch; {cfg['subset'] or 'all remaining'} training images; "
            f"the test set is used only for the reported numbers.",
            f"Autoencoder: {_architecture(cfg)}, Adam lr {cfg['lr']}"
            f"{', gradient norm clipped to ' + str(cfg['clip_grad']) if cfg.get('clip_grad') else ''}, "
            f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, 1 seed ({cfg['seed']}).",
            f"Detector: one Linear layer + log-softmax, NLL loss, Adam lr {cfg['probe_lr']}, "
            f"{cfg['probe_epochs']} epochs; the reported test accuracy is at the epoch with the best "
            f"validation accuracy.",
        ]),
        Heading(2, "Summary"),
        Table(["latent", "val recon MSE ([0,1] px), chosen epoch", "PSNR dB", "val acc", "test acc", "best epoch",
               "AE train s", "detector s"], summary_rows),
        Heading(2, "Autoencoder"),
        Figure("figures/ae_loss.png", "autoencoder loss"),
        *([Figure("figures/reconstructions.png", "reconstructions")] if samples else []),
        Heading(2, "Detector"),
        Figure("figures/detector_loss.png", "detector loss"),
        Figure("figures/detector_train_acc.png", "train accuracy"),
        Figure("figures/detector_val_acc.png", "validation accuracy"),
        Figure("figures/test_precision.png", "precision"),
    ]
    for label in best:
        matrix = np.array(probes[label]["confusion"])
        slug = label.replace(" ", "_")
        confusion_heatmap(matrix, class_names, figures / f"confusion_{slug}.png",
                          title=f"Test confusion, {label} (rows: true)")
        recall = np.array(probes[label]["recall"])
        hardest = [class_names[i] for i in np.argsort(recall)[:2]]
        confused = ", ".join(f"{t} → {p}: {n}" for t, p, n in most_confused(matrix, class_names, 4))
        blocks += [Heading(3, f"Confusion matrix, {label} (test accuracy {probes[label]['test_acc']:.4f})"),
                   Figure(f"figures/confusion_{slug}.png", f"confusion {label}"),
                   Paragraph("Rows: true class; columns: predicted class."),
                   confusion_table(matrix, class_names),
                   Paragraph(f"Lowest recall: {', '.join(hardest)}. Most confused: {confused}.")]
    return write_report(blocks, study_dir, "report", title)


def write_probe_figures(run_dir: Path, record: dict) -> None:
    """The figures of one ``latentprobe probe``: accuracy per epoch (train, validation), the test
    confusion matrix as a heat map and as Markdown."""
    history, head = record["history"], record["probe_config"]["head"]
    epochs = [h["epoch"] for h in history]
    line_chart({split: (epochs, [h[f"{split}_acc"] for h in history]) for split in ("train", "val")},
               run_dir / f"probe_{head}_accuracy.png", title=f"{run_dir.name}: {head} detector accuracy",
               ylabel="accuracy")
    matrix = np.array(record["confusion"])
    confusion_heatmap(matrix, record["class_names"], run_dir / f"probe_{head}_confusion.png",
                      title=f"{run_dir.name}: {head} detector, test confusion (rows: true)")
    (run_dir / f"probe_{head}_confusion.md").write_text(to_markdown([confusion_table(matrix, record["class_names"])]))
