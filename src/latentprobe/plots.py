"""Figures, drawn from saved metrics and tensors (never during a training step)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(rows: dict[str, torch.Tensor], path: Path, title: str | None = None, gap: int = 2) -> Path:
    """One labelled row per entry; each value is (B, 3, H, W) in [0, 1]. A row is one image (its
    pictures side by side, ``gap`` white pixels apart) on one axes: a few axes per figure, not one per
    picture, so a grid draws in a tenth of the time."""
    count = min(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.1 * count, 1.2 * len(rows)), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        pixels = images[:count].detach().float().cpu().clamp(0, 1)
        padded = torch.nn.functional.pad(pixels, (0, gap), value=1.0)  # white to the right of each picture
        strip = padded.permute(2, 0, 3, 1).reshape(pixels.shape[2], -1, 3)[:, :-gap]  # (H, count·(W+gap)−gap, 3)
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def line_chart(series: dict[str, tuple[list, list]], path: Path, *, title: str, xlabel: str = "epoch",
               ylabel: str = "", log_y: bool = False, right: dict[str, tuple[list, list]] | None = None,
               right_label: str = "") -> Path:
    """Several curves on one chart: ``{label: (x, y)}``; ``right``: curves of another unit, dashed,
    on a second y axis (e.g. the online probe's accuracy beside the loss)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("log")
    if xlabel.startswith(("epoch", "stage")):  # whole epochs and stages: no 1.25
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        other = ax.twinx()
        for i, (label, (x, y)) in enumerate(right.items()):
            other.plot(x, y, "--", marker="s", markersize=3, color=f"C{len(series) + i}", label=label)
        other.set_ylabel(right_label)
        handles, labels = [*handles, *other.get_legend_handles_labels()[0]], [*labels, *right]
    if len(handles) > 1:
        _legend_beside(ax, handles, labels, offset=1.12 if right else 1.01)
    return _save(fig, path)


def _legend_beside(ax, handles=None, labels=None, offset: float = 1.01) -> None:
    """The legend to the right of the axes, off the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(offset, 1.0), frameon=False)


def errorbar_chart(series: dict[str, list[tuple[float, float, float]]], path: Path, *, title: str, xlabel: str,
                   ylabel: str, log_x: bool = False, dashed: list[str] = (), dotted: list[str] = (),
                   front: list[tuple[float, float]] | None = None, lines: dict[str, float] | None = None) -> Path:
    """Curves of ``{label: [(x, y, error)]}`` with error bars; ``dashed`` labels drawn dashed in the
    colour of the solid curve of the same family (its label up to the last comma), ``dotted`` ones
    (references measured at several sizes) dotted in grey shades; ``front``: the
    points of a Pareto front, joined by a grey line; ``lines``: horizontal reference levels."""
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    colours = {}
    for label, points in series.items():
        x, y, err = map(list, zip(*points))
        family = label.rsplit(",", 1)[0]
        colour = str(0.2 + 0.2 * dotted.index(label)) if label in dotted else \
            colours.setdefault(family, f"C{len(colours) % 10}")
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, color=colour, label=label,
                    linestyle=":" if label in dotted else "--" if label in dashed else "-")
    if front:
        fx, fy = zip(*front)
        ax.plot(fx, fy, color="0.5", linewidth=1, zorder=0, label="Pareto front")
    for i, (label, level) in enumerate((lines or {}).items()):
        ax.axhline(level, color="0.4", linestyle=(0, (1, 2 + i)), linewidth=1, label=label)
    if log_x:
        ax.set_xscale("log", base=2 if all(float(x).is_integer() for p in series.values() for x, *_ in p) else 10)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path)


def class_heatmap(values: dict[str, list[float]], class_names: list[str], path: Path, *, title: str) -> Path:
    """A (series × class) table of percentages as a heat map with the numbers written in: readable
    at page width where grouped bars of many series are not."""
    labels = list(values)
    matrix = np.array([values[label] for label in labels]) * 100
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(class_names) + 2), 0.45 * len(labels) + 1.6))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.03, label="%")
    ax.set_xticks(np.arange(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    if len(class_names) <= 20:
        for i in range(len(labels)):
            for j in range(len(class_names)):
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 60 else "black")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def grouped_bars(values: dict[str, list[float]], categories: list[str], path: Path, *, title: str,
                 ylabel: str, errors: dict[str, list[float]] | None = None,
                 ylim: tuple[float, float] | None = (0, 1)) -> Path:
    """Bars per category, one colour per series (e.g. precision per class per latent size);
    ``errors`` (same shape as ``values``) draws ± error bars, e.g. the std over seeds."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(categories) * max(1, len(values)) / 2), 4.0))
    width = 0.8 / max(len(values), 1)
    x = np.arange(len(categories))
    for i, (label, heights) in enumerate(values.items()):
        yerr = errors.get(label) if errors else None
        ax.bar(x + (i - (len(values) - 1) / 2) * width, heights, width, label=label, yerr=yerr,
               capsize=2 if yerr is not None else 0, error_kw={"elinewidth": 0.8})
        for j, height in enumerate(heights):
            if height is None or np.isnan(height):  # a probe that did not run: said, not drawn as 0
                ax.text(x[j] + (i - (len(values) - 1) / 2) * width, 1, "not run", rotation=90, ha="center",
                        va="bottom", fontsize=6, color="0.4")
    tilt = len(categories) > 6 or max(map(len, categories), default=0) > 8  # long labels would overlap
    ax.set_xticks(x, categories, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path)


def confusion_heatmap(matrix: np.ndarray, class_names: list[str], path: Path, *, title: str) -> Path:
    """Rows: true class, columns: predicted class; counts written in the cells when readable."""
    n = len(class_names)
    # capped: at 100 classes the uncapped size would be a ~5000-pixel-wide image
    fig, ax = plt.subplots(figsize=(min(max(5, 0.45 * n), 12), min(max(4.2, 0.42 * n), 11)))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8 if n <= 20 else 7 if n <= 40 else 4)
    ax.set_yticks(ticks, class_names, fontsize=8 if n <= 20 else 7 if n <= 40 else 4)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if n <= 20:
        threshold = matrix.max() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > threshold else "black")
    return _save(fig, path)


def scatter_maps(maps: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str], path: Path, *,
                 title: str) -> Path:
    """One 2-D map per entry, ``{label: (points (N, 2), classes (N,))}``, coloured by class;
    the legend names the classes when there are at most 20 of them."""
    count = len(maps)
    cols = min(count, 3)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    n = len(class_names)
    if n <= 20:
        colours = plt.get_cmap("tab10" if n <= 10 else "tab20")(np.arange(n))
    else:  # no qualitative palette has 100 colours: spread a continuous one
        colours = plt.get_cmap("gist_ncar")(np.linspace(0.0, 0.95, n))
    for ax, (label, (points, classes)) in zip(axes.flat, maps.items()):
        ax.scatter(points[:, 0], points[:, 1], c=colours[classes], s=3, linewidths=0)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    if n <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[i], label=name)
                   for i, name in enumerate(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(n, 10), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.03 * (n > 10)))
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
