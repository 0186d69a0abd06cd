"""Latents are extracted once (eval mode, no grad, in batches on the device) and cached.

``run_features`` reads a pretraining run (``Run``): its model at the probed epoch, its own
train/validation split and the test split; it caches the features in the run directory
(``RUN/features/<name>/``, float16 files read in row batches: store.py), keyed by what made them
(weights, images, labels, pooling).
"""

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from latentprobe.checkpoint import weights_digest
from latentprobe.data.cifar import Normalizer, Split
from latentprobe.models import create_model
from latentprobe.options import REPRESENTATIONS
from latentprobe.probe.store import CacheWriter, FeatureMatrix, read_cache, sweep
from latentprobe.runs import EncoderRun, Run
from latentprobe.training.engine import extract, extract_batches, prepare_model


@dataclass
class FeatureSet:
    """Features (N, D) per split, float32 tensors in memory or ``FeatureMatrix`` files read in row
    batches (both give float32 rows for ``features[index]``), labels (N,) per split, class names;
    ``regions``: the values of each code, code-major, where a latent is pooled over regions (a patch
    model's pool_grid²: the low_rank probe's layout), else 1."""
    features: dict[str, "torch.Tensor | FeatureMatrix"]
    labels: dict[str, torch.Tensor]
    class_names: list[str]
    regions: int = 1

    @property
    def dim(self) -> int:
        return self.features["train"].shape[1]

    def to(self, device) -> "FeatureSet":
        """In-memory features moved to ``device``; files stay where they are (their batches move)."""
        return FeatureSet({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.features.items()},
                          {k: v.to(device) for k, v in self.labels.items()}, self.class_names, self.regions)


def encode_splits(encode, splits: dict[str, Split], device, flip_train: bool = False) -> FeatureSet:
    """``encode`` over every split's images, on the device, held in memory (small representations:
    raw pixels; tests). ``flip_train`` as in ``cache_features``."""
    normalizer = Normalizer.of(splits["train"], device)
    features, labels = {}, {}
    for name, split in splits.items():
        images, labels[name] = split.images.to(device), split.labels
        if flip_train and name == "train":
            images, labels[name] = torch.cat([images, images.flip(-1)]), split.labels.repeat(2)
        features[name] = extract(encode, images, normalizer).cpu()
    return FeatureSet(features, labels, splits["train"].class_names)


def cached_features(folder, key: dict, device, flip_train: bool, make) -> FeatureSet:
    """The cached FeatureSet in ``folder`` if it was made under ``key``. Else ``make()`` gives
    ``(encode, splits)``, and ``encode`` runs over every split's images, on the device, written to
    ``folder`` batch by batch (never held whole). ``flip_train``: the training split is read twice,
    as it is and mirrored left to right (labels repeated), so a probe trains on both views;
    validation and test are read as they are."""
    cached = read_cache(folder, key)
    if cached is not None:
        return FeatureSet(*cached)
    encode, splits = make()
    sweep(folder.parent)
    normalizer = Normalizer.of(splits["train"], device)
    writer = CacheWriter(folder)
    try:
        for name, split in splits.items():
            images = split.images.to(device)
            views = [images, images.flip(-1)] if flip_train and name == "train" else [images]
            batches = itertools.chain.from_iterable(
                extract_batches(encode, view, normalizer, desc=f"{folder.name} {name}") for view in views)
            writer.add(name, len(views) * len(images), batches, split.labels.repeat(len(views)))
        writer.commit(key, splits["train"].class_names)
    except BaseException:
        writer.abort()
        raise
    return FeatureSet(*read_cache(folder, key))


def _cache_name(name: str, flip_train: bool) -> str:
    return f"{name}_flip" if flip_train else name


def run_features(run: Run, device: torch.device, label_type: str = "fine", pool: str | None = None,
                 layer: int | str | None = None, flip_train: bool = False) -> FeatureSet:
    """Cached features of a run's encoder (or of its ``layer``-th stage, counted from 1),
    extracted on the first call (and again whenever the weights, data, labels or pooling asked
    for differ from the cached ones); ``flip_train`` as in ``cache_features``, cached apart."""
    run = Run.of(run)
    model = run.model(device, pool)
    key = {"epoch": run.probed_epoch, "label_type": label_type, "pool": getattr(model, "pool", None),
           "weights": weights_digest(model), "data": run.data_identity()}
    if layer is None:
        encode = model.encode
    elif isinstance(layer, str):  # a module of an encoder of your own, by its path
        encode = lambda images: model.encode(images, layer=layer)  # noqa: E731
    else:  # a stage of a registered model, counted from 1
        encode = lambda images: model.stage_outputs(images)[layer - 1]  # noqa: E731
    folder = run.features_dir(_cache_name("encoder" if layer is None else f"layer_{layer}", flip_train))
    return cached_features(folder, key, device, flip_train, lambda: (encode, run.splits(label_type)))


def layer_names(run: Run, layers: list[str], pool: str | None = None) -> list[str]:
    """``["layer_1", …]`` for ``--layers all`` or a list of stage numbers, checked against the model."""
    if not layers:
        return []
    if isinstance(run, EncoderRun):  # module paths of an encoder of your own
        run.model("cpu", pool).check_layers(layers)
        return [f"layer_{name}" for name in layers]
    model = run.untrained_model(pool).eval()
    if not hasattr(model, "stage_outputs"):
        raise ValueError(f"--layers: {run.model_name} does not expose its stages (a model's stage_outputs); "
                         f"probe its latent without --layers")
    with torch.no_grad():
        count = len(model.stage_outputs(torch.zeros(1, 3, 32, 32)))
    chosen = range(1, count + 1) if "all" in layers else sorted({int(layer) for layer in layers})
    missing = [i for i in chosen if not 1 <= i <= count]
    if missing:
        raise ValueError(f"--layers {', '.join(map(str, missing))}: {run.model_name} has {count} layers, 1-{count}")
    return [f"layer_{i}" for i in chosen]


def random_encoder_features(run: Run, device: torch.device, label_type: str = "fine",
                            pool: str | None = None, flip_train: bool = False) -> FeatureSet:
    """Baseline: the run's encoder with untrained weights, cached as ``random``.

    The model is rebuilt from the checkpoint's ``model_config`` after seeding torch with the
    run's own seed, as ``latentprobe train`` does, so these are the very weights pretraining
    started from; the trained weights are not loaded.
    """
    run = Run.of(run)
    if isinstance(run, EncoderRun):  # an encoder of your own: built again by its own code, seeded
        key = {"init_seed": run.train_config["seed"], "model_config": run.model_config(pool),
               "label_type": label_type, "data": run.data_identity()}
        return cached_features(run.features_dir(_cache_name("random", flip_train)), key, device, flip_train,
                               lambda: (run.untrained_model(pool).to(device).eval().encode, run.splits(label_type)))
    return _fitted_features(run, "random", run.model_config(pool), device, label_type, flip_train)


KMEANS_ITERATIONS = 50  # the Lloyd iterations of Coates, Lee & Ng's released code (run_kmeans, 50)


def kmeans_features(run: Run, device: torch.device, label_type: str = "fine",
                    flip_train: bool = False) -> FeatureSet:
    """Baseline of the patch autoencoder: the 2011 reference as released by Coates, Lee & Ng
    (k-means from ``randn · 0.1``, 50 Lloyd iterations, empty centroids zeroed) on the run's own
    whitened patches, with as many centroids as the run has filters, read with the triangle
    encoding, pooled as the run pools (4 values per centroid over quadrants; a flip-invariant
    run's centroids join their mirror images, as its filters do)."""
    run = Run.of(run)
    if run.model_name != "patch_ae":
        raise ValueError(f"--baselines kmeans is the patch dictionary of Coates et al., a baseline of patch_ae "
                         f"runs; {run.path} holds {run.model_name}: leave kmeans out")
    model = run.untrained_model()
    config = {**run.model_config(), "encoding": "triangle", "kmeans_iterations": KMEANS_ITERATIONS,
              "latent_dim": model.pool_grid**2 * model.num_filters}
    return _fitted_features(run, "kmeans", config, device, label_type, flip_train)


def _fitted_features(run: Run, name: str, model_config: dict, device: torch.device, label_type: str,
                     flip_train: bool) -> FeatureSet:
    """Latents of a model built from ``model_config`` with the run's seed and fitted to the run's
    training split as ``train`` fits one before its first step (``prepare_model``), never trained."""
    seed = run.train_config["seed"]
    key = {"init_seed": seed, "model_name": run.model_name, "model_config": model_config,
           "label_type": label_type, "data": run.data_identity()}

    def make():
        torch.manual_seed(seed)
        model = create_model(run.model_name, **model_config).to(device).eval()
        splits = run.splits(label_type)  # read once: the label type changes no image
        # statistics fitted on the training images before training, as train does
        prepare_model(model, splits["train"].images.to(device), Normalizer(run.train_config["dataset"], device), seed)
        return model.encode, splits

    return cached_features(run.features_dir(_cache_name(name, flip_train)), key, device, flip_train, make)


def pixel_features(splits: dict[str, Split], device: torch.device, flip_train: bool = False) -> FeatureSet:
    """The raw-pixel baseline: normalised pixels, flattened to 3072 values."""
    return encode_splits(lambda images: images.flatten(1), splits, device, flip_train)


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


def representation_features(run: Run, name: str, device: torch.device, label_type: str = "fine",
                            pixels: FeatureSet | None = None, pool: str | None = None,
                            flip_train: bool = False) -> FeatureSet:
    """Features of a run under one representation: its trained ``encoder``, the ``random``
    (untrained) encoder, the ``kmeans`` reference (patch models), ``pca`` of the pixels to the run's latent size, or raw ``pixels``.
    ``pixels`` may be passed in when the caller already has them (made with the same
    ``flip_train``); ``pool`` is the ViT token pooling of the two encoders (None: the run's own)."""
    run = Run.of(run)
    if name in ("encoder", "random", "kmeans") and run.model_name == "patch_ae":  # pooled over pool_grid² regions
        regions = run.model_config().get("pool_grid", 2) ** 2
        return dataclasses.replace(_representation_features(run, name, device, label_type, pixels, pool, flip_train),
                                   regions=regions)
    return _representation_features(run, name, device, label_type, pixels, pool, flip_train)


def _representation_features(run: Run, name: str, device: torch.device, label_type: str,
                             pixels: FeatureSet | None, pool: str | None, flip_train: bool) -> FeatureSet:
    if name == "encoder":
        return run_features(run, device, label_type, pool, flip_train=flip_train)
    if name.startswith("layer_"):
        layer = name[len("layer_"):]
        return run_features(run, device, label_type, pool, layer=int(layer) if layer.isdigit() else layer,
                             flip_train=flip_train)
    if name == "random":
        return random_encoder_features(run, device, label_type, pool, flip_train)
    if name == "kmeans":
        return kmeans_features(run, device, label_type, flip_train)
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {name!r}; use one of {', '.join(REPRESENTATIONS)}")
    if pixels is None:
        pixels = pixel_features(run.splits(label_type), device, flip_train)
    if name == "pixels":
        return pixels
    return pca_features(pixels, run.untrained_model().latent_dim)
