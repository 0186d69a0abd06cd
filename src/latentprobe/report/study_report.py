"""The study report (Markdown + self-contained HTML + PNGs), built only from the files a study
leaves behind (each latent run's eval.json and metrics.jsonl), and the figures of one
``latentprobe probe``. Like the comparison it opens with its verdict and the curve of accuracy
against latent size (answer.py), each run beside its untrained weights."""

from pathlib import Path

import numpy as np
import torch

from latentprobe import config as configuration
from latentprobe.metrics import fmt, most_confused, precision_recall
from latentprobe.plots import class_heatmap, confusion_heatmap, image_grid, line_chart
from latentprobe.probe.evaluate import load_eval
from latentprobe.report.answer import latent_size_figure, verdict
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
from latentprobe.report.results import collect_rows
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
    return sorted(((size, run) for size, run in runs if run.eval_file().is_file()), key=lambda item: item[0])


def write_study_report(study_dir: Path) -> Path:
    study_dir = Path(study_dir)
    saved = configuration.read_saved(study_dir)
    cfg = saved["config"]
    runs = _latent_runs(study_dir)
    if not runs:
        raise FileNotFoundError(f"{study_dir} holds no evaluated latent_* runs; run `latentprobe study` first")
    figures = study_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    evals = {size: load_eval(run) for size, run in runs}
    metrics = {size: read_jsonl(run.metrics_file) for size, run in runs}
    rows = collect_rows(list(evals.values()))
    class_names = next(iter(evals.values()))["class_names"]
    probes = {f"latent {size}": record["representations"]["encoder"]["probes"]["linear"]
              for size, record in evals.items()}
    pixels = next((r["representations"]["pixels"]["probes"]["linear"] for r in evals.values()
                   if "pixels" in r["representations"]), None)
    detectors = dict(probes, **({"raw pixels": pixels} if pixels else {}))

    def curves(key: str, scale: float = 1.0) -> dict:
        return {label: ([h["epoch"] for h in r["seeds"][0]["history"]],
                        [scale * h[key] for h in r["seeds"][0]["history"]]) for label, r in detectors.items()}

    line_chart({f"latent {s}": ([m["epoch"] for m in ms], [m["train_loss"] for m in ms])
                for s, ms in metrics.items()}, figures / "ae_loss.png",
               title="Autoencoder training loss", ylabel="loss (the model's own)", log_y=True)
    line_chart(curves("train_loss"), figures / "probe_loss.png", title="Probe training loss (NLL)", ylabel="NLL")
    line_chart(curves("train_acc", 100), figures / "probe_train_acc.png", title="Probe accuracy, training set",
               ylabel="accuracy, %")
    line_chart(curves("val_acc", 100), figures / "probe_val_acc.png",
               title="Probe accuracy, validation set (it chooses the epoch; test is read once)", ylabel="accuracy, %")
    class_heatmap({label: precision_recall(np.array(r["confusion"]))[0].tolist() for label, r in detectors.items()},
                  class_names, figures / "test_precision.png", title="Test precision per class, %")
    pictures = {}
    for size, run in runs:  # the reconstructions of the epoch the probe read (older runs: the last epoch)
        probed = run.path / "reconstructions_probed.pt"
        source = probed if probed.exists() else run.path / "reconstructions.pt"
        if source.exists():
            pictures[size] = torch.load(source, weights_only=True), source == probed
    if pictures:
        shown = {"original": next(iter(pictures.values()))[0]["original"].float() / 255}
        shown.update({f"latent {s}" + ("" if probed else " (last epoch)"): v["reconstruction"].float() / 255
                      for s, (v, probed) in pictures.items()})
        image_grid(shown, figures / "reconstructions.png",
                   title="Validation images and their reconstructions at the epoch the probe read")

    summary_rows = []
    for size, record in evals.items():
        probed = next(m for m in metrics[size] if m["epoch"] == record["probed_epoch"])
        probe = probes[f"latent {size}"]
        twin = record["representations"].get("random", {}).get("probes", {}).get("linear")
        wall = record.get("train_wall_seconds")
        summary_rows.append([size, f"{record['probed_epoch']} of {record['epochs_trained']}",
                             f"{probed['val_mse']:.5f}", f"{probed['val_psnr']:.2f}",
                             fmt([probe["chosen"]["val_acc"]]), f"**{fmt([probe['test']['mean']])}**",
                             fmt([twin["test"]["mean"]]) if twin else "not run", probe["chosen"]["best_epoch"],
                             f"{record['train_seconds']:.0f}", f"{wall / 60:.1f}" if wall else "not recorded",
                             f"{probe['seconds']:.1f}"])
    if pixels:
        summary_rows.append(["raw pixels (3072)", "–", "–", "–", fmt([pixels["chosen"]["val_acc"]]),
                             f"**{fmt([pixels['test']['mean']])}**", "–", pixels["chosen"]["best_epoch"], "–", "–",
                             f"{pixels['seconds']:.1f}"])

    title = (f"{'Convolutional autoencoder' if cfg.get('model', 'conv_ae') == 'conv_ae' else cfg['model']}: "
             f"what the latent knows")
    first = next(iter(evals.values()))
    blocks = [
        Heading(1, title),
        *verdict(rows),
        *latent_size_figure(rows, figures),
        Heading(2, "Summary"),
        Paragraph("Test accuracy, %, of the study's probe on each latent and on the same encoder untrained; the "
                  "reconstruction of the epoch the probe read (the lowest validation loss); time in the training "
                  "steps alone, the epochs' wall time with validation and pictures, and the probe's time."),
        Table(["latent", "epoch probed", "val recon MSE ([0,1] px)", "PSNR dB", "val acc %", "test acc %",
               "untrained, test acc %", "probe epoch kept", "AE training steps, s", "AE wall, min", "probe s"],
              summary_rows),
        Heading(2, "Autoencoder"),
        Figure("figures/ae_loss.png", "autoencoder loss"),
        *([Figure("figures/reconstructions.png", "reconstructions of the epoch each probe read")] if pictures else []),
        Heading(2, "Probe"),
        Figure("figures/probe_loss.png", "probe loss"),
        Figure("figures/probe_train_acc.png", "probe accuracy on the training set"),
        Figure("figures/probe_val_acc.png", "probe accuracy on the validation set"),
        Figure("figures/test_precision.png", "test precision per class"),
    ]
    best = sorted(probes, key=lambda label: probes[label]["chosen"]["val_acc"], reverse=True)[:2]
    for label in best:
        matrix = np.array(probes[label]["confusion"])
        slug = label.replace(" ", "_")
        confusion_heatmap(matrix, class_names, figures / f"confusion_{slug}.png",
                          title=f"Test confusion, {label} (rows: true)")
        recall = precision_recall(matrix)[1]
        hardest = [class_names[i] for i in np.argsort(recall)[:2]]
        confused = ", ".join(f"{t} → {p}: {n}" for t, p, n in most_confused(matrix, class_names, 4))
        blocks += [Heading(3, f"Confusion matrix, {label} (test accuracy {fmt([probes[label]['test']['mean']])} %)"),
                   Figure(f"figures/confusion_{slug}.png", f"confusion {label}"),
                   Paragraph("Rows: true class; columns: predicted class."),
                   confusion_table(matrix, class_names),
                   Paragraph(f"Lowest recall: {', '.join(hardest)}. Most confused: {confused}.")]
    blocks += [
        Heading(2, "How this report was made"),
        Bullets([
            f"Command: `{saved['command']}` (git {saved.get('git_sha') or 'unknown'}); trained on "
            f"{first.get('trained_on') or 'hardware not recorded'}; probes on {first.get('machine') or 'not recorded'}.",
            f"Data: {cfg['dataset']}; a {cfg['val_size']}-image validation split carved from the training set "
            f"(seed {cfg['seed']}) chooses the probe's epoch; {cfg['subset'] or 'all remaining'} training images; "
            f"the test set is read once, for the reported numbers.",
            f"Autoencoder: {_architecture(cfg)}, Adam lr {cfg['lr']}"
            f"{', gradient norm clipped to ' + str(cfg['clip_grad']) if cfg.get('clip_grad') else ''}, "
            f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, 1 seed ({cfg['seed']}).",
            f"Probe: one Linear layer + log-softmax, NLL loss, Adam lr {cfg['probe_lr']}, "
            f"{cfg['probe_epochs']} epochs; the reported test accuracy is at the epoch with the best "
            f"validation accuracy. The untrained twin is the same encoder at the weights its training started from.",
        ]),
    ]
    return write_report(blocks, study_dir, "report", title)


def write_probe_figures(run_dir: Path, probe: str, result: dict, class_names: list[str]) -> None:
    """The figures of one ``latentprobe probe``: accuracy per epoch (train, validation), the test
    confusion matrix as a heat map and as Markdown."""
    history = result["seeds"][0]["history"]
    epochs = [h["epoch"] for h in history]
    line_chart({split: (epochs, [100 * h[f"{split}_acc"] for h in history]) for split in ("train", "val")},
               run_dir / f"probe_{probe}_accuracy.png", title=f"{run_dir.name}: {probe} probe accuracy",
               ylabel="accuracy, %")
    matrix = np.array(result["confusion"])
    confusion_heatmap(matrix, class_names, run_dir / f"probe_{probe}_confusion.png",
                      title=f"{run_dir.name}: {probe} probe, test confusion (rows: true)")
    (run_dir / f"probe_{probe}_confusion.md").write_text(to_markdown([confusion_table(matrix, class_names)]))
