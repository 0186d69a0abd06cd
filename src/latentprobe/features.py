"""Latents are extracted once (eval mode, no grad, in batches on the device) and cached.

``run_features`` reads a pretraining run, rebuilds its model from the checkpoint, recreates
the run's own train/validation split and the test split, and caches the features in
``features.pt`` inside the run directory, keyed by the checkpoint epoch.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from latentprobe.checkpoint import load_checkpoint, weights_digest
from latentprobe.data import Normalizer, Split, load_split, take, train_val_split
from latentprobe.engine import autocast, prepare_model
from latentprobe.models import create_model
from latentprobe.runs import CHECKPOINT

FEATURES = "features.pt"
RANDOM_FEATURES = "features_random.pt"
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


def data_identity(train_config: dict) -> dict:
    """The settings that decide which images a run's splits hold."""
    return {k: train_config.get(k) for k in ("dataset", "val_size", "subset", "seed")}


def load_run_model(run_dir: Path, device: torch.device, pool: str | None = None):
    """The trained model of a run (eval mode) at its best validation epoch, and its checkpoint.
    ``pool`` (ViT encoders: ``cls`` or ``mean``) overrides the pooling the run was trained with."""
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT, kind="autoencoder")
    model = create_model(checkpoint["model_name"], **model_config_with_pool(checkpoint, pool))
    model.load_state_dict(checkpoint.get("best_model", checkpoint["model"]))
    return model.to(device).eval(), checkpoint


def model_config_with_pool(checkpoint: dict, pool: str | None) -> dict:
    """The run's model config, its token pooling replaced by ``pool`` when one is given."""
    config = dict(checkpoint["model_config"])
    if pool is not None:
        if "pool" not in config:
            raise ValueError(f"--pool applies to ViT encoders; {checkpoint['model_name']} has one latent vector")
        config["pool"] = pool
    return config


def _load_cache(path: Path, key: dict) -> FeatureSet | None:
    """The cached FeatureSet at ``path`` if it was made under ``key``; None otherwise (or unreadable)."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a broken cache is recomputed, never trusted
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    return FeatureSet(cached["features"], cached["labels"], cached["class_names"])


def _save_cache(path: Path, key: dict, feature_set: FeatureSet) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"key": key, "features": feature_set.features, "labels": feature_set.labels,
                "class_names": feature_set.class_names}, tmp)
    tmp.replace(path)


def _encode_splits(model, train_config: dict, device, data_dir, label_type) -> FeatureSet:
    splits = run_splits(train_config, data_dir, label_type)
    normalizer = Normalizer(train_config["dataset"], device)
    features = {name: extract(model.encode, split.images.to(device), normalizer).cpu()
                for name, split in splits.items()}
    labels = {name: split.labels for name, split in splits.items()}
    return FeatureSet(features, labels, splits["train"].class_names)


def run_features(run_dir: Path, device: torch.device, data_dir: str | None = None,
                 label_type: str = "fine", pool: str | None = None) -> FeatureSet:
    """Cached features of a run's encoder, extracted on the first call (and again whenever
    the epoch, labels or pooling asked for differ from the cached ones)."""
    run_dir = Path(run_dir)
    model, checkpoint = load_run_model(run_dir, device, pool)
    key = {"epoch": checkpoint.get("best_epoch", checkpoint["epoch"]), "label_type": label_type,
           "pool": getattr(model, "pool", None), "weights": weights_digest(model),
           "data": data_identity(checkpoint["train_config"])}
    feature_set = _load_cache(run_dir / FEATURES, key)
    if feature_set is None:
        feature_set = _encode_splits(model, checkpoint["train_config"], device, data_dir, label_type)
        _save_cache(run_dir / FEATURES, key, feature_set)
    return feature_set


def random_encoder_features(run_dir: Path, device: torch.device, data_dir: str | None = None,
                            label_type: str = "fine", pool: str | None = None) -> FeatureSet:
    """Baseline: the run's encoder with untrained weights, cached in ``features_random.pt``.

    The model is rebuilt from the checkpoint's ``model_config`` after seeding torch with the
    run's own seed, as ``latentprobe train`` does, so these are the very weights pretraining
    started from; the trained weights are not loaded.
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT, kind="autoencoder")
    train_config, model_config = checkpoint["train_config"], model_config_with_pool(checkpoint, pool)
    key = {"init_seed": train_config["seed"], "model_name": checkpoint["model_name"],
           "model_config": model_config, "label_type": label_type, "data": data_identity(train_config)}
    feature_set = _load_cache(run_dir / RANDOM_FEATURES, key)
    if feature_set is None:
        torch.manual_seed(train_config["seed"])
        model = create_model(checkpoint["model_name"], **model_config).to(device).eval()
        train = run_splits(train_config, data_dir)["train"]  # statistics fitted before training, as train does
        prepare_model(model, train.images.to(device), Normalizer(train_config["dataset"], device), train_config["seed"])
        feature_set = _encode_splits(model, train_config, device, data_dir, label_type)
        _save_cache(run_dir / RANDOM_FEATURES, key, feature_set)
    return feature_set


def pixel_features(splits: dict[str, Split], device: torch.device) -> FeatureSet:
    """The raw-pixel baseline: normalised pixels, flattened to 3072 values."""
    normalizer = Normalizer(splits["train"].dataset, device)
    features = {name: extract(lambda x: x.flatten(1), split.images.to(device), normalizer).cpu()
                for name, split in splits.items()}
    return FeatureSet(features, {n: s.labels for n, s in splits.items()}, splits["train"].class_names)


def pca_features(pixels: FeatureSet, dim: int) -> FeatureSet:
    """Baseline: pixels projected on their top ``dim`` principal axes, fitted on train only."""
    x_train = pixels.features["train"]
    if not 1 <= dim <= min(x_train.shape):
        raise ValueError(f"PCA to {dim} dimensions needs 1 <= dim <= {min(x_train.shape)} "
                         f"(training images × pixel values)")
    mean = x_train.mean(dim=0)
    centred = x_train - mean  # (N, P), P = 3072 pixel values
    if len(centred) < centred.shape[1]:  # few images: the thin SVD of the data is cheaper
        axes = torch.linalg.svd(centred.double(), full_matrices=False).Vh[:dim].T  # (P, dim)
    else:  # the (P, P) covariance costs N·P² once, then one P×P eigendecomposition
        _, vectors = torch.linalg.eigh((centred.T @ centred).double())  # eigenvalues ascending
        axes = vectors[:, -dim:].flip(1)  # (P, dim), largest variance first
    axes = axes.to(x_train.dtype)
    features = {name: (x - mean.to(x.device)) @ axes.to(x.device) for name, x in pixels.features.items()}
    return FeatureSet(features, pixels.labels, pixels.class_names)


REPRESENTATIONS = ("encoder", "random", "pca", "pixels")


def representation_features(run_dir: Path, name: str, device: torch.device, data_dir: str | None = None,
                            label_type: str = "fine", pixels: FeatureSet | None = None,
                            pool: str | None = None) -> FeatureSet:
    """Features of a run under one representation: its trained ``encoder``, the ``random``
    (untrained) encoder, ``pca`` of the pixels to the run's latent size, or raw ``pixels``.
    ``pixels`` may be passed in when the caller already has them; ``pool`` is the ViT token
    pooling of the two encoders (None: the run's own)."""
    if name == "encoder":
        return run_features(run_dir, device, data_dir, label_type, pool)
    if name == "random":
        return random_encoder_features(run_dir, device, data_dir, label_type, pool)
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {name!r}; use one of {', '.join(REPRESENTATIONS)}")
    checkpoint = load_checkpoint(Path(run_dir) / CHECKPOINT, kind="autoencoder")
    if pixels is None:
        pixels = pixel_features(run_splits(checkpoint["train_config"], data_dir, label_type), device)
    if name == "pixels":
        return pixels
    latent_dim = create_model(checkpoint["model_name"], **checkpoint["model_config"]).latent_dim
    return pca_features(pixels, latent_dim)
