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
from latentprobe.data.cifar import Normalizer
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
    data = representation_features(run, source, local_device(device), label_type, pool=pool)
    suffix = "" if source == "encoder" else f"_{source}"
    suffix += "" if label_type == "fine" else f"_{label_type}"
    out = Path(out) if out else run_dir / f"features_{split}{suffix}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=data.features[split][:].cpu().numpy().astype(np.float32),
             labels=data.labels[split].cpu().numpy().astype(np.int64),
             class_names=np.array(data.class_names, dtype=str), split=np.array(split),
             source=np.array(source), run=np.array(str(run_dir)))
    print(f"{out}: {len(data.labels[split])} × {data.dim} {source} features of the {split} split")
    return out


def load_image(path: Path) -> torch.Tensor:
    """One image file → uint8 (3, 32, 32). Raises ValueError with a one-line reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError("no such file")
    try:
        with Image.open(path) as image:
            image.draft("RGB", (4 * IMAGE_SIZE, 4 * IMAGE_SIZE))  # JPEG: decode big photos at reduced size
            image = ImageOps.exif_transpose(image)  # phone photos: apply the stored rotation
            image = _eight_bit(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels would otherwise turn into whatever colour they store: use white.
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable image ({type(err).__name__})") from err
    except OSError as err:
        raise ValueError(f"cannot read the image ({err})") from err
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, 32, 32)


def _eight_bit(image):
    """16-bit (modes I;16*, I) and float (mode F) greyscale images scaled to 8 bits by their value
    range: ``convert("RGB")`` would clip them instead, and a 16-bit PNG would turn white."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0  # float pixels: 0..1; integer ones: 16 bits
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
        raise ValueError(f"{image.mode} pixels {values.min():g}..{values.max():g} are outside 0..{top:g}; "
                         f"save the image with 8 bits per channel")
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8))  # mode L


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
    normalizer = Normalizer(run.train_config["dataset"], device)
    head = head.to(device)
    images, names, failed = [], [], 0
    for path in paths:
        try:
            images.append(load_image(path))
            names.append(str(path))
        except ValueError as err:
            print(f"error: {path}: {err}", file=sys.stderr, flush=True)
            failed += 1
    top_k = max(1, min(top_k, len(class_names)))
    for start in range(0, len(images), 256):
        batch = torch.stack(images[start:start + 256]).to(device)  # (B, 3, 32, 32) uint8
        probabilities = head(model.encode(normalizer(batch)).float()).exp()  # (B, C)
        values, indices = probabilities.topk(top_k, dim=1)
        for name, row_values, row_indices in zip(names[start:start + 256], values.tolist(), indices.tolist()):
            print(f"{name}: " + ", ".join(f"{class_names[i]} {v:.3f}" for v, i in zip(row_values, row_indices)))
    return failed
