"""Latents are extracted once (eval mode, no grad, in batches on the device) and cached.

``run_features`` reads a pretraining run, rebuilds its model from the checkpoint, recreates
the run's own train/validation split and the test split, and caches the features in
``features.pt`` inside the run directory, keyed by the checkpoint epoch.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from latentprobe.checkpoint import load_checkpoint
from latentprobe.data import Normalizer, Split, load_split, take, train_val_split
from latentprobe.engine import autocast
from latentprobe.models import create_model
from latentprobe.runs import CHECKPOINT

FEATURES = "features.pt"
SPLITS = ("train", "val", "test")


@dataclass
class FeatureSet:
    """Features (N, D) float32 and labels (N,) per split, plus class names."""
    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    class_names: list[str]

    @property
    def dim(self) -> int:
        return self.features["train"].shape[1]

    def to(self, device) -> "FeatureSet":
        return FeatureSet({k: v.to(device) for k, v in self.features.items()},
                          {k: v.to(device) for k, v in self.labels.items()}, self.class_names)


@torch.no_grad()
def extract(encode, images: torch.Tensor, normalizer: Normalizer, batch_size: int = 1000) -> torch.Tensor:
    """``encode`` over uint8 ``images`` (on the device) in batches → (N, D) float32."""
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(images.device):
            outputs.append(encode(normalizer(images[start:start + batch_size])).float())
    return torch.cat(outputs)


def run_splits(train_config: dict, data_dir: str | None = None, label_type: str = "fine") -> dict[str, Split]:
    """The train (same subset), validation and test splits a pretraining run used."""
    dataset = train_config["dataset"]
    download = train_config.get("download", True)
    train = load_split(dataset, "train", data_dir or train_config.get("data_dir"), download=download)
    test = load_split(dataset, "test", data_dir or train_config.get("data_dir"), download=download)
    train, val = train_val_split(train, train_config["val_size"], seed=train_config["seed"])
    train = take(train, train_config.get("subset"), seed=train_config["seed"])
    return {name: split.with_label_type(label_type) for name, split in
            zip(SPLITS, (train, val, test))}


def load_run_model(run_dir: Path, device: torch.device):
    """The trained model of a run (eval mode) and its checkpoint."""
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT, kind="autoencoder")
    model = create_model(checkpoint["model_name"], **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def run_features(run_dir: Path, device: torch.device, data_dir: str | None = None,
                 label_type: str = "fine") -> FeatureSet:
    """Cached features of a run's encoder, extracted on the first call."""
    run_dir = Path(run_dir)
    model, checkpoint = load_run_model(run_dir, device)
    key = {"epoch": checkpoint["epoch"], "label_type": label_type}
    cache = run_dir / FEATURES
    if cache.exists():
        cached = torch.load(cache, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return FeatureSet(cached["features"], cached["labels"], cached["class_names"])
    splits = run_splits(checkpoint["train_config"], data_dir, label_type)
    normalizer = Normalizer(checkpoint["train_config"]["dataset"], device)
    features = {name: extract(model.encode, split.images.to(device), normalizer).cpu()
                for name, split in splits.items()}
    labels = {name: split.labels for name, split in splits.items()}
    feature_set = FeatureSet(features, labels, splits["train"].class_names)
    tmp = cache.with_suffix(".tmp")
    torch.save({"key": key, "features": features, "labels": labels,
                "class_names": feature_set.class_names}, tmp)
    tmp.replace(cache)
    return feature_set


def pixel_features(splits: dict[str, Split], device: torch.device) -> FeatureSet:
    """The raw-pixel baseline: normalised pixels, flattened to 3072 values."""
    normalizer = Normalizer(splits["train"].dataset, device)
    features = {name: extract(lambda x: x.flatten(1), split.images.to(device), normalizer).cpu()
                for name, split in splits.items()}
    return FeatureSet(features, {n: s.labels for n, s in splits.items()}, splits["train"].class_names)
