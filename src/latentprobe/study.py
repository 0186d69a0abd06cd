"""``latentprobe study``: the first write-up end to end.

For every latent size: pretrain the autoencoder, then ``evaluate`` it with the study's one-layer
probe (one setting, every epoch, the best validation epoch kept), beside the same encoder with
its untrained weights; raw pixels through the same probe are the reference line. Every step
leaves files in the study directory, and ``report.md`` is built from those files (``latentprobe
report DIR`` rebuilds it without retraining).
"""

from pathlib import Path

from latentprobe import config as configuration
from latentprobe.options import EvalConfig, StudyConfig, TrainConfig
from latentprobe.probe.evaluate import evaluate_run
from latentprobe.report.study_report import write_study_report
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
    for index, latent in enumerate(cfg.latent_sizes):
        print(f"\n=== latent {latent} ===", flush=True)
        train_cfg = TrainConfig(model=cfg.model, latent_dim=latent, model_args=_model_args(cfg),
                                dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                                val_size=cfg.val_size, subset=cfg.subset, epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, clip_grad=cfg.clip_grad,
                                seed=cfg.seed, device=cfg.device, out=str(out / f"latent_{latent}"),
                                grid_every=cfg.epochs)  # pictures of the last epoch (and of the probed one)
        run_dir = train(train_cfg)
        # the untrained twin beside every size; raw pixels (the same for every run) once
        probe = EvalConfig(probes=["linear"], baselines=["random", *(["pixels"] if index == 0 else [])],
                           probe_lrs=[cfg.probe_lr], probe_weight_decays=[0.0], probe_epochs=cfg.probe_epochs,
                           probe_patience=None, probe_seeds=1, device=cfg.device, threads=None)
        record = evaluate_run(run_dir, probe)
        result = record["representations"]["encoder"]["probes"]["linear"]
        print(f"latent {latent}: linear probe test accuracy {100 * result['test']['mean']:.2f}% "
              f"(best validation epoch {result['chosen']['best_epoch']})", flush=True)
    report = write_study_report(out)
    print(f"\nreport: {report}")
    return report
