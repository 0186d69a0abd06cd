"""``latentprobe export`` and ``latentprobe predict``: features out, predictions for image files.

export writes one split of one representation to an .npz of plain arrays (no pickles), which
``numpy.load`` and scikit-learn read directly:
    features (N, D) float32, labels (N,) int64, class_names (C,) str, plus split / source / run.

predict runs the trained encoder and the linear head that ``latentprobe evaluate`` saved
(RUN/classifier.pt) on image files of any size and mode, each converted to RGB and resized to
32×32 (bicubic) as CIFAR images are; it prints the top-k classes with their probabilities.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from latentprobe.checkpoint import (
    CLASSIFIER,
    CheckpointError,
    load_checkpoint,
    weights_digest,
)
from latentprobe.data.cifar import DATASETS, Normalizer
from latentprobe.data.images import read_image
from latentprobe.distributed import local_device
from latentprobe.options import REPRESENTATIONS, SPLITS
from latentprobe.probe.features import representation_features
from latentprobe.probe.heads import build_head
from latentprobe.runs import Run

IMAGE_SIZE = 32


def export_features(run: Run | Path | str, split: str = "test", source: str = "encoder", out: Path | None = None,
                    label_type: str = "fine", device: str = "auto", data_dir: str | None = None,
                    download: bool | None = None, pool: str | None = None) -> Path:
    """Write ``split`` of ``source`` (encoder, random, pca, pixels) of a run to an .npz; returns its path."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if source not in REPRESENTATIONS:
        raise ValueError(f"unknown source {source!r}; use one of {', '.join(REPRESENTATIONS)}")
    run = Run.of(run, data_dir, download)
    run_dir = run.path
    suffix = "" if source == "encoder" else f"_{source}"
    suffix += "" if label_type == "fine" else f"_{label_type}"
    name = f"features_{split}{suffix}.npz"
    out = run_dir / name if not out else Path(out) / name if Path(out).is_dir() else Path(out).with_suffix(".npz")
    with run.exclusive():  # the features and weights of a run no other command is writing
        if note := run.data_note():  # the run was trained on other bytes
            print(note, flush=True)
        data = representation_features(run, source, local_device(device), label_type, pool=pool)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, features=data.features[split][:].cpu().numpy().astype(np.float32),
                 labels=data.labels[split].cpu().numpy().astype(np.int64),
                 class_names=np.array(data.class_names, dtype=str), split=np.array(split),
                 source=np.array(source), run=np.array(str(run_dir)))
    print(f"{out}: {len(data.labels[split])} × {data.dim} {source} features of the {split} split")
    return out


def load_image(path: Path) -> torch.Tensor:
    """One image file → uint8 (3, 32, 32) (``data.images.read_image``); ValueError with a one-line reason."""
    return torch.from_numpy(read_image(Path(path), IMAGE_SIZE))


def load_classifier(run: Run | Path | str, label_type: str = "fine") -> tuple[torch.nn.Module, dict]:
    """The head that ``latentprobe evaluate`` saved, in eval mode, and the saved record
    (class names, and the token pooling its features were read with)."""
    run = Run.of(run)
    path = run.classifier_file(label_type)
    if not path.is_file():
        flag = "" if label_type == "fine" else f" --label-type {label_type}"
        raise FileNotFoundError(f"{path} not found; run `latentprobe evaluate {run.path}{flag}` first "
                                f"to train the classifier that predict uses")
    saved = load_checkpoint(path, kind=CLASSIFIER)
    head = build_head(saved["head"], saved["in_dim"], saved["num_classes"], hidden=saved["hidden"])
    head.load_state_dict(saved["state_dict"])
    return head.eval(), saved


@torch.no_grad()
def predict_files(run: Run | Path | str, paths: list[Path], top_k: int = 3, label_type: str = "fine",
                  device: str = "auto") -> int:
    """Print the top-k classes of every readable file; returns how many files failed."""
    device = local_device(device)
    run = Run.of(run)
    head, saved = load_classifier(run, label_type)  # first: no classifier, no model load
    class_names = saved["class_names"]
    model = run.model(device, saved.get("pool"))
    if saved.get("weights", weights_digest(model)) != weights_digest(model):  # older files carry no digest
        raise CheckpointError(f"{run.classifier_file(label_type)} was trained on other encoder weights (the run "
                              f"was retrained or continued since); run `latentprobe evaluate {run.path}` again")
    dataset = run.train_config["dataset"]  # images of your own: the statistics of the probes' training split
    normalizer = Normalizer(dataset, device) if dataset in DATASETS else Normalizer.of(run.splits()["train"], device)
    size = run.train_config.get("image_size") or IMAGE_SIZE
    head = head.to(device)
    images, names, failed = [], [], 0
    for path in paths:
        try:
            images.append(torch.from_numpy(read_image(Path(path), size)))
            names.append(str(path))
        except ValueError as err:
            print(f"error: {path}: {err}", file=sys.stderr, flush=True)
            failed += 1
    top_k = max(1, min(top_k, len(class_names)))
    for start in range(0, len(images), 256):
        batch = torch.stack(images[start:start + 256]).to(device)  # (B, 3, S, S) uint8
        probabilities = head(model.encode(normalizer(batch)).float()).exp()  # (B, C)
        values, indices = probabilities.topk(top_k, dim=1)
        for name, row_values, row_indices in zip(names[start:start + 256], values.tolist(), indices.tolist()):
            print(f"{name}: " + ", ".join(f"{class_names[i]} {v:.3f}" for v, i in zip(row_values, row_indices)))
    return failed
