"""Every command's options: one dataclass per command, its words and its checks.

This module imports no heavy library, so that ``latentprobe --help``, ``latentprobe CMD --help``
and an argument error answer at once; each command imports torch when it runs. A check here runs
where the options are parsed, before any folder is made. Field help gives units and allowed
values; ``config.add_config_arguments`` turns each field into a flag (booleans into switches).

One word per idea across commands: ``--epochs``, ``--lr``, ``--batch-size``, ``--seed(s)`` and
``--schedule`` are about the model a command trains (the autoencoder, or the fine-tuned
classifier); the probes' own are ``--probe-epochs``, ``--probe-lr(s)``, ``--probe-seeds`` …
"""

import math
from dataclasses import dataclass, field

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
HEADS = ("linear", "bn_linear", "logistic", "low_rank", "mlp")  # trained probes; kNN is the sixth
PROBES = (*HEADS, "knn")
REPRESENTATIONS = ("encoder", "random", "kmeans", "pca", "pixels")
BASELINES = REPRESENTATIONS[1:]
LABEL_TYPES = ("fine", "coarse")
POOLS = (None, "cls", "mean")
DATASETS = ("cifar10", "cifar100")
OWN_DATASETS = ("imagefolder", "npz")  # labelled images of your own (evaluate --encoder)
SPLITS = ("train", "val", "test")
# the options that decide a trained probe's numbers: its result's protocol (the MLP adds mlp_hidden,
# low_rank probe_rank)
PROBE_OPTIONS = ("probe_lrs", "probe_weight_decays", "probe_epochs", "probe_patience", "probe_schedule",
                 "probe_batch_size", "probe_seeds", "flip_train", "refit")
PRESETS = {
    # a first look: 4,000 training and 1,000 validation images, few epochs (about a minute on 2 CPU cores)
    "quick": dict(subset=4000, val_size=1000, epochs=3, probe_epochs=15),
    # all 45,000 training images, the epochs a CPU run affords (~1 hour on 2 cores)
    "standard": dict(subset=None, val_size=5000, epochs=10, probe_epochs=30),
    # the write-up's length: its pictures come from epoch index 199 (a GPU job)
    "full": dict(subset=None, val_size=5000, epochs=200, probe_epochs=50),
}


def help_text(text: str, **metadata) -> dict:
    return {"help": text, **metadata}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        shown = ", ".join("none" if c is None else str(c) for c in choices)
        raise ValueError(f"unknown {_flag(name)} {value!r}; use one of {shown}")


def check_range(config, name: str, low: float | None = None, high: float | None = None, *,
                open_low: bool = False, open_high: bool = False) -> None:
    """One clear line unless every value of option ``name`` (a number or a list; None passes) is a
    finite number within [low, high] (an open end excludes the bound)."""
    value = getattr(config, name)
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        bad = not math.isfinite(item) or (low is not None and (item <= low if open_low else item < low)) or \
            (high is not None and (item >= high if open_high else item > high))
        if bad:
            bounds = f"{'(' if open_low else '['}{'-∞' if low is None else low}, " \
                     f"{'∞' if high is None else high}{')' if open_high or high is None else ']'}"
            raise ValueError(f"{_flag(name)} must be a number in {bounds}, got {value}")


def at_least_one(config, *names: str) -> None:
    """One clear line for a count or size option below 1 (lists: every item); None is allowed."""
    for name in names:
        value = getattr(config, name)
        if any(v is not None and v < 1 for v in (value if isinstance(value, list) else [value])):
            raise ValueError(f"{_flag(name)} must be at least 1, got {value}")


def distinct(config, *names: str) -> None:
    """One clear line for a list option that is empty or names a value twice (None passes)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (not value or len(set(value)) < len(value)):
            raise ValueError(f"{_flag(name)} needs distinct values, at least one; got {','.join(map(str, value))!r}")


MAX_SEED = 2**63 - 1  # torch's generators take a 64-bit seed


def check_device(requested: str) -> None:
    """The form of a device name (auto, cpu, cuda, cuda:N); whether CUDA is there is checked when
    the command runs."""
    kind, _, index = requested.partition(":")
    if requested != "auto" and (kind not in ("cpu", "cuda") or (index and not index.isdigit())
                                or (kind == "cpu" and index)):
        raise ValueError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:N")


@dataclass
class RunData:
    """Where a command that reads a run finds its images: the options every such command shares."""
    data_dir: str | None = field(default=None, metadata=help_text(
        "folder holding cifar-10-batches-py/ or cifar-100-python/ (default: the run's own)"))
    download: bool | None = field(default=None, metadata=help_text(
        "download the data set if it is missing (default: the run's setting)"))


@dataclass
class TrainConfig:
    model: str = field(default="conv_ae", metadata=help_text("model name; `latentprobe models` lists them"))
    latent_dim: int | None = field(default=None, metadata=help_text(
        "values in the latent, for models that take one (default: the model's)"))
    model_args: dict = field(default_factory=dict, metadata=help_text(
        "the model's own options, 'key=value key=value' (see docs/MODELS.md)"))
    dataset: str = field(default="cifar10", metadata=help_text("cifar10 or cifar100"))
    data_dir: str | None = field(default=None, metadata=help_text(
        "folder holding the CIFAR folders (default: $LATENTPROBE_DATA, else ~/.cache/latentprobe)"))
    download: bool = field(default=True, metadata=help_text("download the data set if it is missing"))
    val_size: int = field(default=5000, metadata=help_text(
        "validation images carved from the training set with the seed; they choose epochs and settings"))
    subset: int | None = field(default=None, metadata=help_text("train on at most this many images (default: all)"))
    epochs: int = field(default=10, metadata=help_text("passes over the training images"))
    batch_size: int = field(default=128, metadata=help_text("images per optimiser step"))
    optimizer: str = field(default="adam", metadata=help_text("adam, or adamw (decoupled weight decay)"))
    lr: float | None = field(default=1e-3, metadata=help_text("learning rate, when --base-lr is not given"))
    base_lr: float | None = field(default=None, metadata=help_text(
        "if given, lr = base_lr × effective batch / 256 (the MAE rule)"))
    weight_decay: float = field(default=0.0, metadata=help_text("weight decay, ≥ 0 (not on biases and norms)"))
    schedule: str = field(default="constant", metadata=help_text(
        "learning rate over the run: constant, or cosine (to 0 at the last epoch)"))
    warmup_epochs: float = field(default=0.0, metadata=help_text("epochs of linear lr warm-up, ≥ 0"))
    accum_steps: int = field(default=1, metadata=help_text("batches whose gradients add up to one step"))
    clip_grad: float | None = field(default=None, metadata=help_text(
        "clip the gradient norm to this (default: no clipping)"))
    compile: bool = field(default=False, metadata=help_text("torch.compile the training step"))
    compile_mode: str = field(default="default", metadata=help_text(
        f"torch.compile mode: {', '.join(COMPILE_MODES)} (reduce-overhead replays CUDA graphs)"))
    checkpoint_every: int = field(default=1, metadata=help_text("write checkpoint.pt every N epochs (and the last)"))
    grid_every: int = field(default=1, metadata=help_text("save a reconstruction grid every N epochs"))
    probe_every: int | None = field(default=None, metadata=help_text(
        "online probe every N epochs: a ridge classifier on the latents of --probe-size training images, "
        "scored on the validation split (val_probe_acc; default: none)"))
    probe_size: int = field(default=5000, metadata=help_text("training images the online probe is fitted on"))
    seed: int = field(default=0, metadata=help_text("seed of the weights, the validation split and the batches"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))
    out: str = field(default="runs/conv_ae", metadata=help_text("the run directory"))

    def __post_init__(self):
        at_least_one(self, "epochs", "batch_size", "accum_steps", "grid_every", "checkpoint_every", "latent_dim",
                     "subset", "probe_every", "probe_size")
        if self.val_size < 1:
            raise ValueError(f"--val-size must be at least 1: the validation split chooses the epoch the probes "
                             f"read (and --probe-every scores on it), got {self.val_size}")
        check_range(self, "weight_decay", 0)
        check_range(self, "warmup_epochs", 0, self.epochs)
        check_range(self, "seed", 0, MAX_SEED)
        check_range(self, "latent_dim", 1, 2**31 - 1)
        for name in ("lr", "base_lr"):
            check_range(self, name, 0, 10, open_low=True)
        check_range(self, "clip_grad", 0, open_low=True)
        if self.lr is None and self.base_lr is None:
            raise ValueError("give a learning rate: --lr, or --base-lr (scaled by the batch size)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_choice("dataset", self.dataset, DATASETS)
        check_device(self.device)


@dataclass
class EvalConfig(RunData):
    probes: list[str] = field(default_factory=lambda: ["linear", "bn_linear", "mlp", "knn"], metadata=help_text(
        "probes to train: linear (the study's Linear + log-softmax), bn_linear (BatchNorm + Linear: MAE's), "
        "logistic (logistic regression on standardised features, solved by L-BFGS), low_rank (bn_linear through a "
        "bottleneck of --probe-rank channels at every pooling region of a patch latent), mlp (one hidden layer), knn"))
    baselines: list[str] = field(default_factory=lambda: ["random", "pca", "pixels"], metadata=help_text(
        "representations probed beside the encoder: random (its untrained weights), pca (of the pixels, to "
        "the latent size), pixels, kmeans (the 2011 reference; patch_ae runs), or none"))
    probe_seeds: int = field(default=3, metadata=help_text(
        "seeds 0 … N-1 of the chosen probe (its init and batch order); each reads the test set once (the "
        "logistic probe's optimum takes no seed: one fit)"))
    probe_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3], metadata=help_text(
        "the probes' Adam learning rates tried on the validation split (the logistic probe is solved: none)"))
    probe_weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4], metadata=help_text(
        "the probes' L2 penalties tried on the validation split"))
    probe_epochs: int = field(default=30, metadata=help_text(
        "most passes over the training features per probe (the best validation epoch is kept; the logistic "
        "probe stops earlier once converged)"))
    probe_patience: int | None = field(default=5, metadata=help_text(
        "stop a probe after this many epochs without a validation gain (none: train every epoch)"))
    probe_schedule: str = field(default="constant", metadata=help_text(
        "the probes' lr: constant, or cosine (to 0 over --probe-epochs; give --probe-patience ≥ --probe-epochs)"))
    probe_batch_size: int = field(default=256, metadata=help_text("feature vectors per probe step"))
    flip_train: bool = field(default=False, metadata=help_text(
        "probes also train on the training images mirrored left to right (validation and test are read "
        "as they are)"))
    refit: bool = field(default=False, metadata=help_text(
        "after the choice on validation, train the chosen probe on training + validation images for the "
        "chosen epochs, then read the test set"))
    mlp_hidden: int = field(default=512, metadata=help_text("units in the MLP probe's hidden layer"))
    probe_rank: int = field(default=128, metadata=help_text(
        "channels of the low_rank probe's 1×1 bottleneck (its weight's rank across codes)"))
    knn_k: list[int] = field(default_factory=lambda: [20, 200], metadata=help_text("neighbours of the kNN probe"))
    knn_temperature: float = field(default=0.07, metadata=help_text(
        "kNN vote weight exp(cosine similarity / T): T > 0"))
    label_type: str = field(default="fine", metadata=help_text("fine, or coarse (CIFAR-100's 20 superclasses)"))
    pool: str | None = field(default=None, metadata=help_text(
        "ViT encoders: cls or mean token pooling (default: the run's)"))
    layers: list[str] = field(default_factory=list, metadata=help_text(
        "also probe these encoder stages: all, or numbers from 1 (models with stages); with --encoder, module "
        "paths (e.g. layer3), each output averaged over positions"))
    threads: int | None = field(default=1, metadata=help_text(
        "CPU threads for the probes (none: torch's default); one is fastest on a shared CPU"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))
    # an encoder of your own in place of a run (docs/USING_YOUR_OWN.md)
    encoder: str | None = field(default=None, metadata=help_text(
        "probe an encoder of your own instead of a run: package.module:factory, path/file.py:factory, a "
        "TorchScript file, or timm:NAME (with --weights); the one folder given is where its results go"))
    weights: str | None = field(default=None, metadata=help_text(
        "with --encoder: a state dict file of its weights (torch.save(model.state_dict(), FILE))"))
    dataset: str | None = field(default=None, metadata=help_text(
        "with --encoder: cifar10 (default), cifar100, imagefolder (--data-dir: a folder per class, or train/ "
        "and test/ folders of them) or npz (--data-dir: a file of x_train, y_train, x_test, y_test)"))
    image_size: int | None = field(default=None, metadata=help_text(
        "with --encoder: its input side in pixels; images are resized and centre-cropped to it (default: "
        "the size the encoder declares, else 32)"))
    val_size: int | None = field(default=None, metadata=help_text(
        "with --encoder: validation images carved from the training images (default: 5,000 on CIFAR, "
        "else a tenth of them)"))
    subset: int | None = field(default=None, metadata=help_text(
        "with --encoder: probe on at most this many training images (default: all)"))
    seed: int = field(default=0, metadata=help_text(
        "with --encoder: the seed of the splits and of the untrained twin's weights"))

    def __post_init__(self):
        self.baselines = [b for b in self.baselines if b != "none"]
        check_choice("dataset", self.dataset, (None, *DATASETS, *OWN_DATASETS))
        check_range(self, "image_size", 8, 1024)
        at_least_one(self, "val_size", "subset")
        unknown = sorted(set(self.probes) - set(PROBES)) + sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown probe(s) or baseline(s) {unknown}; probes: {', '.join(PROBES)}; "
                             f"baselines: {', '.join(BASELINES)}")
        if not self.encoder and any(layer != "all" and not (layer.isdigit() and int(layer) >= 1)
                                    for layer in self.layers):
            raise ValueError(f"--layers takes all, or stage numbers from 1; got {','.join(self.layers)}")
        check_choice("probe_schedule", self.probe_schedule, SCHEDULES)
        check_choice("label_type", self.label_type, LABEL_TYPES)
        check_choice("pool", self.pool, POOLS)
        check_range(self, "probe_lrs", 0, 10, open_low=True)
        check_range(self, "probe_weight_decays", 0)
        check_range(self, "knn_temperature", 0, open_low=True)
        at_least_one(self, "probe_seeds", "probe_epochs", "probe_patience", "probe_batch_size", "mlp_hidden",
                     "probe_rank", "knn_k", "threads")
        distinct(self, "probes", "knn_k", "probe_lrs", "probe_weight_decays")
        check_range(self, "mlp_hidden", 1, 65536)
        check_range(self, "probe_rank", 1, 65536)
        check_range(self, "threads", 1, 256)
        check_range(self, "seed", 0, MAX_SEED)
        if not self.probe_lrs or not self.probe_weight_decays:
            raise ValueError("--probe-lrs and --probe-weight-decays need at least one value each")
        check_device(self.device)


def check_run_options(cfg: EvalConfig) -> None:
    """A run is probed on its own images with its own weights: the options of an encoder of your
    own are refused for it in one line."""
    own = {"weights": None, "dataset": None, "image_size": None, "val_size": None, "subset": None, "seed": 0}
    stray = [_flag(name) for name, default in own.items() if getattr(cfg, name) != default]
    if stray:
        raise ValueError(f"{', '.join(stray)} {'applies' if len(stray) == 1 else 'apply'} only with --encoder; a run "
                         f"is probed on its own images")


@dataclass
class ProbeConfig(RunData):
    """``latentprobe probe``: evaluate's one-probe, one-setting, one-seed case (the study's detector)."""
    head: str = field(default="linear", metadata=help_text(f"the probe: {', '.join(HEADS)}"))
    probe_epochs: int = field(default=30, metadata=help_text("passes over the training features (best validation "
                                                             "epoch kept)"))
    probe_batch_size: int = field(default=256, metadata=help_text("feature vectors per probe step"))
    probe_lr: float = field(default=1e-3, metadata=help_text("the probe's Adam learning rate"))
    probe_weight_decay: float = field(default=0.0, metadata=help_text("the probe's L2 penalty, ≥ 0"))
    pool: str | None = field(default=None, metadata=help_text(
        "ViT encoders: cls or mean token pooling (default: the run's)"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))

    def __post_init__(self):
        check_choice("head", self.head, HEADS)
        check_choice("pool", self.pool, POOLS)
        check_range(self, "probe_lr", 0, 10, open_low=True)
        check_range(self, "probe_weight_decay", 0)
        at_least_one(self, "probe_epochs", "probe_batch_size")
        check_device(self.device)

    def evaluation(self) -> EvalConfig:
        """This probe as ``evaluate`` runs it: one setting, seed 0, every epoch trained and the best
        validation epoch kept, no baselines; its result joins the run's eval.json."""
        return EvalConfig(probes=[self.head], baselines=[], probe_lrs=[self.probe_lr],
                          probe_weight_decays=[self.probe_weight_decay], probe_epochs=self.probe_epochs,
                          probe_patience=None, probe_seeds=1, probe_batch_size=self.probe_batch_size, pool=self.pool,
                          device=self.device, data_dir=self.data_dir, download=self.download)


@dataclass
class FinetuneConfig(RunData):
    epochs: int = field(default=10, metadata=help_text("passes over the training images"))
    batch_size: int = field(default=128, metadata=help_text("images per optimiser step"))
    base_lr: float = field(default=1e-3, metadata=help_text("lr = base_lr × effective batch / 256"))
    weight_decay: float = field(default=0.05, metadata=help_text("AdamW weight decay, ≥ 0"))
    layer_decay: float = field(default=0.75, metadata=help_text(
        "lr factor per block below the head, in (0, 1] (1: no layer-wise decay)"))
    label_smoothing: float = field(default=0.1, metadata=help_text("label smoothing, in [0, 1)"))
    drop_path: float = field(default=0.1, metadata=help_text("stochastic depth of ViT encoders, in [0, 1)"))
    warmup_epochs: float = field(default=1.0, metadata=help_text("epochs of linear lr warm-up, ≥ 0"))
    pool: str | None = field(default=None, metadata=help_text("cls or mean (default: the run's)"))
    freeze_encoder: bool = field(default=False, metadata=help_text("train the head only (an online linear probe)"))
    augment: bool = field(default=True, metadata=help_text("random crop + flip of every batch"))
    subset: int | None = field(default=None, metadata=help_text("train on at most this many images (default: all)"))
    seed: int = field(default=0, metadata=help_text("seed of the head, the batches and the augmentation"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))
    compile: bool = field(default=False, metadata=help_text("torch.compile the training step"))
    compile_mode: str = field(default="default", metadata=help_text(
        f"torch.compile mode: {', '.join(COMPILE_MODES)} (reduce-overhead: CUDA graphs)"))
    out: str | None = field(default=None, metadata=help_text(
        "output folder (default: RUN/finetune, or RUN/finetune_frozen when frozen)"))

    def __post_init__(self):
        at_least_one(self, "epochs", "batch_size", "subset")
        check_range(self, "base_lr", 0, 10, open_low=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "layer_decay", 0, 1, open_low=True)
        check_range(self, "label_smoothing", 0, 1, open_high=True)
        check_range(self, "drop_path", 0, 1, open_high=True)
        check_range(self, "warmup_epochs", 0, self.epochs)
        check_range(self, "seed", 0, MAX_SEED)
        check_choice("pool", self.pool, POOLS)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_device(self.device)


@dataclass
class CompareConfig(RunData):
    out: str = field(default="runs/compare", metadata=help_text("folder for report.md, report.html, figures/"))
    label_type: str = field(default="fine", metadata=help_text("fine, or coarse (CIFAR-100's 20 superclasses)"))
    tsne_points: int = field(default=2000, metadata=help_text("test latents per t-SNE map, ≥ 0 (0: no map)"))
    title: str = field(default="Which representation makes the best probe?", metadata=help_text(
        "the report's question, its first line"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))

    def __post_init__(self):
        check_choice("label_type", self.label_type, LABEL_TYPES)
        if self.tsne_points < 0:
            raise ValueError(f"--tsne-points must be 0 (no map) or more, got {self.tsne_points}")
        check_device(self.device)


@dataclass
class ExportConfig(RunData):
    split: str = field(default="test", metadata=help_text("train, val or test"))
    source: str = field(default="encoder", metadata=help_text(
        "encoder, random, kmeans (patch_ae runs), pca or pixels"))
    out: str | None = field(default=None, metadata=help_text(
        "the .npz file to write (default: RUN/features_SPLIT.npz)"))
    label_type: str = field(default="fine", metadata=help_text("fine, or coarse (CIFAR-100)"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))
    pool: str | None = field(default=None, metadata=help_text("ViT token pooling: cls or mean (default: the run's)"))

    def __post_init__(self):
        check_choice("split", self.split, SPLITS)
        check_choice("source", self.source, REPRESENTATIONS)
        check_choice("label_type", self.label_type, LABEL_TYPES)
        check_choice("pool", self.pool, POOLS)
        check_device(self.device)


@dataclass
class PredictConfig:
    top_k: int = field(default=3, metadata=help_text("classes printed per image, with their probabilities"))
    label_type: str = field(default="fine", metadata=help_text("fine, or coarse (CIFAR-100)"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))

    def __post_init__(self):
        check_choice("label_type", self.label_type, LABEL_TYPES)
        at_least_one(self, "top_k")
        check_device(self.device)


@dataclass
class StudyConfig:
    preset: str = field(default="standard", metadata=help_text(
        "quick (4,000 images, 1,000 for validation, 3 epochs: about a minute on a CPU), standard (all images, "
        "10 epochs) or full (200 epochs, the write-up's)"))
    model: str = field(default="conv_ae", metadata=help_text("any registered model that takes latent_dim"))
    model_args: dict = field(default_factory=dict, metadata=help_text(
        "options of other models, 'key=value key=value'"))
    latent_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512], metadata=help_text(
        "the latent sizes compared, one run each"))
    c1: int = field(default=16, metadata=help_text("conv_ae: channels of the first convolution"))
    c2: int = field(default=32, metadata=help_text("conv_ae: channels of the second convolution"))
    noise: float = field(default=0.0, metadata=help_text(
        "conv_ae: denoising, the std of the input noise in normalised units, ≥ 0 (0: the write-up's plain AE)"))
    clip_grad: float | None = field(default=None, metadata=help_text("clip the gradient norm to this"))
    dataset: str = field(default="cifar10", metadata=help_text("cifar10 or cifar100"))
    data_dir: str | None = field(default=None, metadata=help_text(
        "folder holding the CIFAR folders (default: $LATENTPROBE_DATA, else ~/.cache/latentprobe)"))
    download: bool = field(default=True, metadata=help_text("download the data set if it is missing"))
    val_size: int | None = field(default=None, metadata=help_text(
        "validation images carved from the training set (default: the preset's, 1,000 or 5,000)"))
    subset: int | None = field(default=None, metadata=help_text("training images (default: the preset's)"))
    epochs: int | None = field(default=None, metadata=help_text("autoencoder epochs (default: the preset's)"))
    batch_size: int = field(default=128, metadata=help_text("images per autoencoder step"))
    lr: float = field(default=1e-3, metadata=help_text("the autoencoder's Adam learning rate"))
    probe_epochs: int | None = field(default=None, metadata=help_text("probe epochs (default: the preset's)"))
    probe_lr: float = field(default=1e-3, metadata=help_text("the probe's Adam learning rate"))
    seed: int = field(default=0, metadata=help_text("seed of the runs and the probe"))
    device: str = field(default="auto", metadata=help_text("auto (CUDA if present), cpu, cuda or cuda:N"))
    out: str = field(default="runs/study", metadata=help_text("the study folder"))

    def __post_init__(self):
        check_choice("preset", self.preset, tuple(PRESETS))
        for key, value in PRESETS[self.preset].items():  # what the user left unset
            if getattr(self, key) is None:
                setattr(self, key, value)
        at_least_one(self, "latent_sizes", "c1", "c2", "subset", "epochs", "batch_size", "probe_epochs")
        distinct(self, "latent_sizes")
        check_range(self, "seed", 0, MAX_SEED)
        check_range(self, "noise", 0)
        check_range(self, "clip_grad", 0, open_low=True)
        check_range(self, "lr", 0, 10, open_low=True)
        check_range(self, "probe_lr", 0, 10, open_low=True)
        check_choice("dataset", self.dataset, DATASETS)
        if self.val_size < 1:
            raise ValueError(f"--val-size must be at least 1: the probe chooses its epoch on it, got {self.val_size}")
        check_device(self.device)


@dataclass
class SummaryConfig:
    model_args: dict = field(default_factory=dict, metadata=help_text("model options, 'key=value key=value'"))
    batch_size: int = field(default=1, metadata=help_text("images in the summarised batch"))
    depth: int = field(default=3, metadata=help_text("nesting depth of the layer table"))

    def __post_init__(self):
        at_least_one(self, "batch_size", "depth")
