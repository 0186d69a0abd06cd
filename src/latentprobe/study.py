"""``latentprobe study``: the first write-up end to end.

For every latent size: pretrain the convolutional autoencoder, extract its latents once,
train the study's one-layer detector on them; the same detector on raw pixels is the
reference line. Every step leaves files in the study directory, and ``report.md`` is built
from those files (``latentprobe report DIR`` rebuilds it without retraining).
"""

from dataclasses import dataclass, field
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.distributed import local_device
from latentprobe.probe.features import pixel_features, run_features
from latentprobe.probe.heads import ProbeConfig, probe_and_save
from latentprobe.report.study_report import write_study_report
from latentprobe.runs import run_splits
from latentprobe.training.pretrain import TrainConfig, train

PRESETS = {
    # a first look: a 4,000-image subset, few epochs (< 5 min on a 2-core CPU)
    "quick": dict(subset=4000, epochs=3, probe_epochs=15),
    # all 45,000 training images, the epochs a CPU run affords (~30 min on 2 cores)
    "standard": dict(subset=None, epochs=10, probe_epochs=30),
    # the write-up's length: its pictures come from epoch index 199 (a GPU job)
    "full": dict(subset=None, epochs=200, probe_epochs=50),
}


@dataclass
class StudyConfig:
    preset: str = field(default="standard", metadata={"help": "quick, standard or full"})
    model: str = field(default="conv_ae", metadata={"help": "any registered model that takes latent_dim"})
    model_args: dict = field(default_factory=dict, metadata={"help": "options of other models, 'key=value ...'"})
    latent_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    c1: int = field(default=16, metadata={"help": "channels of the first convolution"})
    c2: int = field(default=32, metadata={"help": "channels of the second convolution"})
    noise: float = field(default=0.0, metadata={"help": "denoising: input noise std (0: the write-up's plain AE)"})
    clip_grad: float | None = field(default=None, metadata={"help": "clip the gradient norm to this"})
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = True
    val_size: int = 5000
    subset: int | None = field(default=None, metadata={"help": "training images (default: preset)"})
    epochs: int | None = field(default=None, metadata={"help": "autoencoder epochs (default: preset)"})
    batch_size: int = 128
    lr: float = 1e-3
    probe_epochs: int | None = field(default=None, metadata={"help": "detector epochs (default: preset)"})
    probe_lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    out: str = "runs/study"

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for key, value in PRESETS[self.preset].items():  # what the user left unset
            if getattr(self, key) is None:
                setattr(self, key, value)


def _model_args(cfg: StudyConfig) -> dict:
    """The autoencoder's options: the write-up's conv AE takes --c1/--c2 (and ``noise`` only when
    set, so plain runs keep their old config); other models take --model-args."""
    if cfg.model != "conv_ae":
        return dict(cfg.model_args)
    return {"c1": cfg.c1, "c2": cfg.c2, **({"noise": cfg.noise} if cfg.noise else {}), **cfg.model_args}


def run_study(cfg: StudyConfig) -> Path:
    out = Path(cfg.out)
    configuration.save_resolved(cfg, out)
    device = local_device(cfg.device)
    probe_cfg = ProbeConfig(head="linear", epochs=cfg.probe_epochs, lr=cfg.probe_lr, seed=cfg.seed)
    train_cfg = None
    for latent in cfg.latent_sizes:
        print(f"\n=== latent {latent} ===", flush=True)
        train_cfg = TrainConfig(model=cfg.model, latent_dim=latent, model_args=_model_args(cfg),
                                dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                                val_size=cfg.val_size, subset=cfg.subset, epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, clip_grad=cfg.clip_grad,
                                seed=cfg.seed, device=cfg.device,
                                out=str(out / f"latent_{latent}"))
        run_dir = train(train_cfg)
        record = probe_and_save(run_features(run_dir, device), probe_cfg, run_dir, device)
        print(f"latent {latent}: detector test accuracy {record['test_acc']:.4f} "
              f"(best validation epoch {record['best_epoch']})", flush=True)

    print("\n=== raw pixels (reference) ===", flush=True)
    pixels_dir = out / "pixels"
    pixels_dir.mkdir(parents=True, exist_ok=True)
    splits = run_splits(configuration.to_dict(train_cfg), cfg.data_dir)
    record = probe_and_save(pixel_features(splits, device), probe_cfg, pixels_dir, device)
    print(f"raw pixels: detector test accuracy {record['test_acc']:.4f}", flush=True)
    report = write_study_report(out, device=str(device))
    print(f"\nreport: {report}")
    return report

