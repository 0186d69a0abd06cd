"""``latentprobe train``: pretrain one autoencoder into a run directory, resumably.

The run directory gets config.yaml, checkpoint.pt (after every epoch, atomically),
metrics.jsonl (one line per epoch), TensorBoard events, reconstructions.png and loss.png.
Running the same command again continues from the checkpoint; a finished run is not redone.
"""

import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from latentprobe import config as configuration
from latentprobe.checkpoint import AUTOENCODER, save_atomic, save_checkpoint, unwrap
from latentprobe.data.cifar import Normalizer, data_root, load_split, take, train_val_split
from latentprobe.data.download import DataError
from latentprobe.distributed import (
    barrier,
    init_distributed,
    is_main_process,
    local_device,
    machine,
    mean_across_ranks,
)
from latentprobe.models import check_model, create_model
from latentprobe.options import TrainConfig
from latentprobe.plots import image_grid, line_chart
from latentprobe.runs import (
    CHECKPOINT,
    METRICS,
    Run,
    TensorBoard,
    append_jsonl,
    changed_files,
    check_not_in_use,
    data_files,
    exclusive,
    read_jsonl,
    write_jsonl,
)
from latentprobe.training.engine import (
    Objective,
    build_optimizer,
    evaluate_reconstruction,
    explained_divergence,
    linear_separability,
    lr_at,
    parallel_objective,
    prepare_model,
    resume,
    seed_epoch,
    train_one_epoch,
)

# Options that decide what is recorded along the way, not what is learned: they may change when a
# run is continued, and runs that differ only in them are the same model.
RECORDING_OPTIONS = frozenset({"grid_every", "checkpoint_every", "probe_every", "probe_size"})


def model_options(cfg: TrainConfig) -> dict:
    """The model's keyword arguments: its own options and the latent size."""
    return {**cfg.model_args, **({} if cfg.latent_dim is None else {"latent_dim": cfg.latent_dim})}


def build_model(cfg: TrainConfig):
    return create_model(cfg.model, **model_options(cfg))


def load_data(cfg: TrainConfig, device: torch.device):
    """Train/val uint8 tensors on ``device`` (val carved from train with the run's seed)."""
    train = load_split(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
    train, val = train_val_split(train, cfg.val_size, seed=cfg.seed)
    return take(train, cfg.subset, seed=cfg.seed).to(device), val.to(device)


def _resume(run_dir: Path, cfg: TrainConfig, model, optimizer) -> tuple[int, list[dict], tuple | None]:
    if not (run_dir / CHECKPOINT).exists():
        return 0, [], None
    checkpoint = Run(run_dir).read_checkpoint(cfg.model)
    saved = checkpoint["train_config"]
    recorded = checkpoint.get("data_files")  # older checkpoints: none, or names, sizes and times only
    changed = changed_files(recorded, data_files(cfg.dataset, cfg.data_dir)) if isinstance(recorded, dict) else []
    if changed:
        raise DataError(f"{', '.join(changed)} under {data_root(cfg.data_dir)} changed since {run_dir} started (other "
                        f"bytes than it read): restore them, or train into a new --out")
    epoch, history = resume(run_dir, checkpoint, cfg, saved, model, optimizer,
                            may_change=RECORDING_OPTIONS | {"epochs"})
    if cfg.schedule == "cosine" and saved.get("epochs") != cfg.epochs and checkpoint["epoch"] < cfg.epochs:
        print(f"note: the cosine schedule now spans {cfg.epochs} epochs instead of {saved.get('epochs')}; "
              f"epochs 1-{checkpoint['epoch']} were trained on the old one, so the learning rate jumps here and "
              f"the run differs from one planned for {cfg.epochs} epochs")
    best = None  # checkpoints written before best-epoch tracking carry none
    if "best_model" in checkpoint:
        best = (checkpoint["best_val_loss"], checkpoint["best_epoch"], checkpoint["best_model"])
    return epoch, history, best


def _reconstructions(model, grid_images, normalizer) -> dict[str, torch.Tensor]:
    """The grid's rows in [0, 1]: originals, and what the model shows of them (masked, reconstructed)."""
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        shown = model.reconstruct(grid_images)
    rows = {"original": normalizer.to_unit(grid_images)}
    rows.update({name: normalizer.to_unit(images) for name, images in shown.items()
                 if name in ("masked", "reconstruction")})
    return rows


def save_reconstructions(path: Path, rows: dict[str, torch.Tensor]) -> None:
    """The pictures as uint8 tensors, so reports can compose them without the data set."""
    save_atomic({name: (images * 255).round().to(torch.uint8).cpu() for name, images in rows.items()}, path)


def save_pictures(run_dir: Path, model, grid_images, normalizer, epoch: int, history: list[dict]) -> None:
    rows = _reconstructions(model, grid_images, normalizer)
    title = f"{run_dir.name}, epoch {epoch}"
    latest = image_grid(rows, run_dir / "grids" / f"epoch_{epoch:04d}.png", title=title)  # the history
    shutil.copyfile(latest, run_dir / "reconstructions.png")  # always the latest
    save_reconstructions(run_dir / "reconstructions.pt", rows)
    epochs = [h["epoch"] for h in history]
    probed = [h for h in history if "val_probe_acc" in h]  # epochs of the online probe (--probe-every)
    line_chart({"train": (epochs, [h["train_loss"] for h in history]),
                "validation": (epochs, [h["val_loss"] for h in history])},
               run_dir / "loss.png", title=f"{run_dir.name}: reconstruction loss", ylabel="loss",
               right={"online probe": ([h["epoch"] for h in probed], [h["val_probe_acc"] for h in probed])}
               if probed else None, right_label="validation accuracy")


def _metrics_match(path: Path, history: list[dict]) -> bool:
    """Whether metrics.jsonl holds the checkpoint's history (a torn last line does not)."""
    try:
        return read_jsonl(path) == history
    except ValueError:
        return False


def train(cfg: TrainConfig) -> Path:
    """Train (or continue) the run in ``cfg.out``; returns the run directory."""
    device = local_device(cfg.device)
    rank, world_size = init_distributed(device)
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file; give a folder (new, or a run to continue)")
    check_model(cfg.model, device, **model_options(cfg))  # its options and its memory, before anything is made
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    effective_batch = cfg.batch_size * cfg.accum_steps * world_size
    peak_lr = cfg.base_lr * effective_batch / 256 if cfg.base_lr is not None else cfg.lr
    optimizer = build_optimizer(model, cfg.optimizer, peak_lr, cfg.weight_decay)
    if is_main_process():  # a run another command trains: one line now, not after reading the data
        check_not_in_use(run_dir)
    train_split, val_split = load_data(cfg, device)  # before writing anything: bad data leaves no run
    writer = exclusive(run_dir) if is_main_process() else nullcontext()  # one writer; resume state read under it
    with explained_divergence(run_dir, "--lr"), writer:  # a diverged run says what it kept
        return _train(cfg, run_dir, model, optimizer, peak_lr, train_split, val_split, rank, world_size)


def _train(cfg: TrainConfig, run_dir: Path, model, optimizer, peak_lr: float, train_split, val_split,
           rank: int, world_size: int) -> Path:
    device = train_split.images.device
    main = is_main_process()
    normalizer = Normalizer(cfg.dataset, device)
    start_epoch, history, best = _resume(run_dir, cfg, model, optimizer)
    files = data_files(cfg.dataset, cfg.data_dir)  # a resume checks them against these
    if start_epoch >= cfg.epochs:
        pictures = [run_dir / name for name in ("reconstructions.png", "reconstructions.pt", "loss.png",
                                                 f"grids/epoch_{start_epoch:04d}.png")]
        torn = [p for p in pictures if not p.is_file() or p.stat().st_size == 0]  # killed while drawing them
        if main and (torn or not _metrics_match(run_dir / METRICS, history)):  # or before the metrics line
            write_jsonl(run_dir / METRICS, history)
            save_pictures(run_dir, model, normalizer(val_split.images[:8]), normalizer, start_epoch, history)
            print(f"{run_dir}: finished; metrics.jsonl and the last pictures repaired from the checkpoint")
        print(f"{run_dir}: finished ({start_epoch}/{cfg.epochs} epochs), nothing to do")
        return run_dir
    if main:
        configuration.save_resolved(cfg, run_dir)
        write_jsonl(run_dir / METRICS, history)  # drop lines of epochs that never reached a checkpoint
    if start_epoch == 0:  # a resumed model has its fitted statistics from the checkpoint
        prepare_model(model, train_split.images, normalizer, cfg.seed)
    grid_images = normalizer(val_split.images[:8])
    probe_split = take(train_split, cfg.probe_size, seed=cfg.seed)  # the same images at every probe

    objective = parallel_objective(Objective(model), world_size, cfg.compile_mode if cfg.compile else None)
    steps_per_epoch = -(-(len(train_split) // world_size) // (cfg.batch_size * cfg.accum_steps))
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)

    def lr_fn(step):
        return lr_at(step, total_steps, warmup_steps, peak_lr, cfg.schedule)

    board = TensorBoard(run_dir, enabled=main)
    print(f"{cfg.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_split)} train / {len(val_split)} val images on {device}"
          + (f", {world_size} ranks" if world_size > 1 else ""))
    started, trained_on = time.perf_counter(), machine(device)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_started = time.perf_counter()
        generator = seed_epoch(cfg.seed, epoch)  # masks, dropout, batch order: the same on resume
        stats = train_one_epoch(objective, optimizer, train_split.images, normalizer,
                                batch_size=cfg.batch_size, accum_steps=cfg.accum_steps,
                                generator=generator, lr_fn=lr_fn, clip_grad=cfg.clip_grad,
                                first_step=(epoch - 1) * steps_per_epoch, rank=rank,
                                world_size=world_size, desc=f"epoch {epoch}/{cfg.epochs}")
        stats.update(evaluate_reconstruction(model, val_split.images, normalizer, seed=cfg.seed))
        if cfg.probe_every and epoch % cfg.probe_every == 0:
            stats["val_probe_acc"] = linear_separability(model, probe_split, val_split, normalizer)
        stats = mean_across_ranks({k: v for k, v in stats.items() if k != "steps"}, device)
        # wall time of the epoch: its steps, validation and online probe (what pretraining costs)
        record = {"epoch": epoch, **stats, "epoch_wall_seconds": time.perf_counter() - epoch_started,
                  "machine": trained_on}
        history.append(record)
        # The epoch whose latents get probed is chosen on the validation loss, so a late loss
        # spike (seen with Adam at lr 1e-3 on the wide conv autoencoders) cannot spoil the probe.
        if best is None or record["val_loss"] <= best[0]:
            best = (record["val_loss"], epoch, {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})
            if main:  # the pictures of the epoch the probes will read
                save_reconstructions(run_dir / "reconstructions_probed.pt",
                                     _reconstructions(model, grid_images, normalizer))
        if main and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            save_checkpoint(run_dir / CHECKPOINT, kind=AUTOENCODER, model_name=cfg.model,
                            model_config=unwrap(model).config, train_config=configuration.to_dict(cfg),
                            model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                            epoch=epoch, history=history, best_epoch=best[1], best_model=best[2],
                            best_val_loss=best[0], data_files=files)
        if main:  # lines of epochs after the last checkpoint are dropped again on resume
            append_jsonl(run_dir / METRICS, record)
            board.scalars(record, epoch)
            if epoch % cfg.grid_every == 0 or epoch == cfg.epochs:
                save_pictures(run_dir, model, grid_images, normalizer, epoch, history)
            print(f"epoch {epoch}/{cfg.epochs}  loss {stats['train_loss']:.4f}  "
                  f"val mse {stats['val_mse']:.5f}  psnr {stats['val_psnr']:.2f} dB  "
                  f"{stats['images_per_s']:.0f} img/s  lr {stats['lr']:.2e}"
                  + (f"  probe {stats['val_probe_acc']:.4f}" if "val_probe_acc" in stats else ""), flush=True)
        barrier()
    board.close()
    print(f"{run_dir}: trained to epoch {cfg.epochs} in {time.perf_counter() - started:.1f} s")
    return run_dir
