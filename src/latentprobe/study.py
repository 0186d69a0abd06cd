"""``latentprobe study``: the first write-up end to end.

For every latent size: pretrain the convolutional autoencoder, extract its latents once,
train the study's one-layer detector on them; the same detector on raw pixels is the
reference line. Every step leaves files in the study directory, and ``report.md`` is built
from those files (``latentprobe report DIR`` rebuilds it without retraining).
"""

from pathlib import Path

from latentprobe import config as configuration
from latentprobe.distributed import local_device
from latentprobe.options import ProbeConfig, StudyConfig, TrainConfig
from latentprobe.probe.features import pixel_features, run_features
from latentprobe.probe.heads import probe_and_save
from latentprobe.report.study_report import write_study_report
from latentprobe.runs import run_splits
from latentprobe.training.pretrain import train


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
    probe_cfg = ProbeConfig(head="linear", probe_epochs=cfg.probe_epochs, probe_lr=cfg.probe_lr, probe_seed=cfg.seed)
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

