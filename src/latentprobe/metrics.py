"""Classification metrics from predictions: confusion matrix, per-class precision and recall."""

import numpy as np
import torch


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> np.ndarray:
    """(C, C) counts; rows are the true class, columns the predicted class."""
    flat = true.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).numpy()


def precision_recall(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision (column-wise) and recall (row-wise); 0 where undefined."""
    correct = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, actual, out=np.zeros_like(correct), where=actual > 0)
    return precision, recall


def most_confused(matrix: np.ndarray, class_names: list[str], top: int = 5) -> list[tuple[str, str, int]]:
    """The largest off-diagonal cells: (true name, predicted name, count)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(class_names[i], class_names[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]




def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for a single value) and count."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0, len(array)


def _mean_spread(values, scale: float, digits: int) -> tuple[str, int]:
    """``mean ± std`` with the sample std, or the value alone when there is one (it has no spread
    to show); and the count."""
    mean, std, n = mean_std(values)
    spread = f" ± {scale * std:.{digits}f}" if n > 1 else ""
    return f"{scale * mean:.{digits}f}{spread}", n


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std (n)``, ``value (1)`` for one value; "not run" when there is nothing."""
    values = [v for v in values if v is not None]
    if not values:
        return "not run"
    text, n = _mean_spread(values, scale, digits)
    return f"{text} ({n})"


def percent(values: list[float]) -> str:
    """``mean ± std % (n = N)``, for sentences; no ± for one value."""
    text, n = _mean_spread(values, 100.0, 2)
    return f"{text} % (n = {n})"
