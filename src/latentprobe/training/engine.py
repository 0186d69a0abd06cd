"""The training loop shared by every autoencoder: one epoch over device-resident uint8 data.

The model is wrapped in ``Objective`` so that DDP and ``torch.compile`` see the loss as the
module's ``forward``; checkpoints always store the plain inner model.
"""

import ctypes
import math
import platform
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latentprobe import config as configuration
from latentprobe.checkpoint import CheckpointError
from latentprobe.data.cifar import Normalizer, Split, augment, batch_indices
from latentprobe.distributed import is_main_process
from latentprobe.options import COMPILE_MODES
from latentprobe.runs import CHECKPOINT


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss became NaN); what was saved stays intact."""


class Objective(nn.Module):
    """``forward(images) -> (loss, reconstruction)``: the model's own ``loss`` as a forward.
    A supervised objective takes ``forward(images, labels) -> (loss, logits)`` (finetune.py)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.loss(images)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of handing it back to the operating system.

    By default glibc gives each large block (above 32 MiB at most) its own mmap and unmaps it on
    free, so every CPU training step page-faults its largest activations in again; for the MAE at
    patch 2 that is about a quarter of the step (docs/RESULTS.md). With mmap and heap trimming
    off, the heap grows once to the peak of a step and is reused after that (for a somewhat higher
    resident size: fragments are never returned). Process-wide, so the ``latentprobe`` command
    calls it (unless LATENTPROBE_SYSTEM_MALLOC is set), not the library; returns False (and does
    nothing) outside glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))  # -1: never trim


def prepare_model(model: nn.Module, images: torch.Tensor, normalizer: Normalizer, seed: int) -> None:
    """Fit what a model learns from data statistics before training (``model.prepare``; e.g. the
    patch autoencoder's whitening) on ``images`` (uint8, the training split); seeded, so the
    untrained baseline of a run gets the very same statistics."""
    if hasattr(model, "prepare"):
        model.prepare(normalizer(images), generator=torch.Generator().manual_seed(seed), normalizer=normalizer)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """The optimiser's parameter groups, for pretraining and fine-tuning alike. Weight decay on
    weight matrices only: not on biases, norms, or the parameters the model names in
    ``no_weight_decay()`` (position embeddings, CLS token, mask token). With ``layer_decay``, a
    model that numbers its layers (``layer_id(name)``, ``depth``: ViTs) gets a group per layer
    whose lr is scaled by ``layer_decay ** (depth + 1 - layer)`` (``lr_scale``, read by
    ``train_one_epoch``)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layered = layer_decay is not None and getattr(model, "depth", -1) >= 0
    top = model.depth + 1 if layered else 0
    groups: dict[tuple[int, bool], dict] = {}
    if not layered:  # decay, then no decay: the order of the optimiser state in older checkpoints
        groups = {(0, False): {"params": [], "weight_decay": weight_decay, "lr_scale": 1.0},
                  (0, True): {"params": [], "weight_decay": 0.0, "lr_scale": 1.0}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, no_decay = (model.layer_id(name) if layered else 0), param.ndim <= 1 or name in skip
        group = groups.setdefault((layer, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                                      "lr_scale": layer_decay ** (top - layer) if layered else 1.0})
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    # On CUDA the fused implementation updates every tensor in a few kernels, not a few per tensor.
    fused = next(model.parameters()).is_cuda
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamw'")


def parallel_objective(objective: nn.Module, world_size: int, compile_mode: str | None) -> nn.Module:
    """The objective as the epoch steps it: in DDP across ranks when there are several, then
    compiled when ``compile_mode`` is given."""
    if world_size > 1:
        objective = nn.parallel.DistributedDataParallel(objective)
    return compile_objective(objective, compile_mode) if compile_mode else objective


def compile_objective(objective: nn.Module, mode: str = "default") -> nn.Module:
    """``torch.compile`` the training step (forward and backward); ``reduce-overhead`` also
    replays it as a CUDA graph, which removes the per-kernel launch cost of small models.
    Shapes are static: an epoch's shorter last batch gets its own graph rather than turning every
    step's graph into a dynamic-shape one."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
    return torch.compile(objective, mode=mode, dynamic=False)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, schedule: str) -> float:
    """Per-step learning rate: linear warm-up, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "constant":
        return peak_lr
    raise ValueError(f"unknown schedule {schedule!r}; use 'constant' or 'cosine'")


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed torch for one epoch and return that epoch's generator (batch order, augmentation):
    an epoch draws the same numbers whether the run was resumed before it or not."""
    torch.manual_seed(seed * 100_003 + epoch)
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_one_epoch(objective: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    normalizer: Normalizer, *, batch_size: int, generator: torch.Generator,
                    lr_fn, first_step: int, accum_steps: int = 1, clip_grad: float | None = None,
                    labels: torch.Tensor | None = None, augment_batches: bool = False,
                    rank: int = 0, world_size: int = 1, desc: str = "train") -> dict:
    """The one training epoch (pretraining and fine-tuning): a pass over this rank's share of
    ``images`` (uint8, on the device). ``lr_fn(step)`` sets the lr of every optimiser step (times
    a group's ``lr_scale``: layer-wise decay). With ``labels`` the objective is supervised,
    ``objective(x, y) -> (loss, logits)``, and the train accuracy is counted; ``augment_batches``
    crops and flips each batch on the device. Returns the mean loss, images/s and the last lr."""
    device = images.device
    objective.train()
    batches = list(batch_indices(len(images), batch_size, shuffle=True, generator=generator,
                                 rank=rank, world_size=world_size, device=device))
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, step, lr = 0, first_step, lr_fn(first_step)
    start = time.perf_counter()
    progress = tqdm(batches, desc=desc, leave=False, disable=None)
    for i, index in enumerate(progress):
        x = normalizer(images[index])
        if augment_batches:
            x = augment(x, generator)
        inputs = (x,) if labels is None else (x, labels[index])
        boundary = (i + 1) % accum_steps == 0 or i + 1 == len(batches)
        sync = nullcontext() if boundary or not hasattr(objective, "no_sync") else objective.no_sync()
        with sync:
            with autocast(device):
                loss, output = objective(*inputs)
            (loss / accum_steps).backward()
        loss_sum += loss.detach() * len(index)
        if labels is not None:
            correct += (output.detach().argmax(1) == inputs[1]).sum()
        seen += len(index)
        if boundary:
            lr = lr_fn(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(objective.parameters(), clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    mean_loss = (loss_sum / max(seen, 1)).item()  # the one host sync of the epoch
    seconds = time.perf_counter() - start
    if not math.isfinite(mean_loss):
        raise TrainingError(f"the training loss became {mean_loss} in this epoch: the learning rate is "
                            f"too high for this model (or the data is broken)")
    accuracy = {} if labels is None else {"train_acc": (correct / max(seen, 1)).item()}
    return {"train_loss": mean_loss, **accuracy, "images_per_s": seen * world_size / seconds,
            "epoch_seconds": seconds, "lr": lr, "steps": step}


def resume(out: Path, checkpoint: dict | None, cfg, saved: dict | None, model: nn.Module, optimizer,
           may_change=frozenset({"epochs"}), also_changed: tuple[str, ...] = ()) -> tuple[int, list[dict]]:
    """Continue the run in ``out`` from its ``checkpoint`` (None: start at epoch 0). A run whose
    settings (``saved``, against ``cfg``) differ beyond runtime options and ``may_change`` is refused
    in one line; else the model and optimizer are restored. Returns the epoch reached and the history."""
    if checkpoint is None:
        return 0, []
    changed = configuration.changed_options(cfg, saved, may_change) + list(also_changed)
    if changed:
        raise CheckpointError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                              f"use a new --out, or the same settings to continue it")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["epoch"], checkpoint["history"]


@contextmanager
def explained_divergence(run_dir: Path, lr_option: str):
    """A diverged run (``TrainingError``: the loss became NaN) says what it kept and how to go on.
    Its checkpoint stays; a run with none yet is removed again (only what this command made in it),
    so the same ``--out`` can be used at once with a lower learning rate."""
    run_dir = Path(run_dir)
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    try:
        yield
    except TrainingError as err:
        if (run_dir / CHECKPOINT).exists():
            raise TrainingError(f"{err}; the last checkpoint in {run_dir} was kept. A run's settings are fixed: "
                                f"to train with a lower {lr_option}, use a new --out") from None
        if is_main_process():  # the one writer removes what it made
            for entry in set(run_dir.iterdir()) - (before or set()):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            if before is None:
                run_dir.rmdir()
        raise TrainingError(f"{err}; no epoch finished, so nothing was kept in {run_dir}: "
                            f"run again with a lower {lr_option}") from None


@torch.no_grad()
def extract_batches(encode, images: torch.Tensor, normalizer: Normalizer, batch_size: int = 1000,
                    desc: str = "latents"):
    """``encode`` over uint8 ``images`` (on the device) in batches: yields (b, D) float32 latents,
    with a progress bar on a terminal."""
    progress = tqdm(total=len(images), desc=desc, unit="img", leave=False, disable=None)
    for start in range(0, len(images), batch_size):
        with autocast(images.device):
            batch = encode(normalizer(images[start:start + batch_size])).float()
        progress.update(len(batch))
        yield batch
    progress.close()


def extract(encode, images: torch.Tensor, normalizer: Normalizer, batch_size: int = 1000) -> torch.Tensor:
    """``extract_batches`` written into one (N, D) float32 tensor, allocated after the first batch
    (a list of batches joined at the end would hold every latent twice)."""
    output = None
    start = 0
    for batch in extract_batches(encode, images, normalizer, batch_size):
        if output is None:
            output = torch.empty((len(images), *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        output[start:start + len(batch)] = batch
        start += len(batch)
    return output


def ridge_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   ridge: float = 0.1) -> float:
    """How linearly separable the classes are: closed-form ridge regression from standardised
    features to one-hot labels, fitted on ``train_*``; the accuracy of its argmax on ``val_*``.
    The penalty is ``ridge`` times the mean eigenvalue of the system solved, in the dual (a sample
    × sample system) when there are fewer samples than features, so 19,200-d latents cost little."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std  # (N, D), (M, D)
    targets = F.one_hot(train_y, int(max(train_y.max(), val_y.max())) + 1).double()  # (N, C)
    n, d = a.shape
    gram = (a @ a.T if n < d else a.T @ a).double()  # (N, N) or (D, D)
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    if n < d:
        scores = (b @ a.T).double() @ torch.linalg.solve(gram, targets)  # dual: W = Aᵀ (AAᵀ + λI)⁻¹ Y
    else:
        scores = b.double() @ torch.linalg.solve(gram, a.T.double() @ targets)  # primal
    return (scores.argmax(1) == val_y).double().mean().item()


@torch.no_grad()
def linear_separability(model: nn.Module, train: Split, val: Split, normalizer: Normalizer) -> float:
    """The online probe: ``ridge_accuracy`` of the model's latents of ``train`` scored on ``val``."""
    model.eval()
    return ridge_accuracy(extract(model.encode, train.images, normalizer), train.labels,
                          extract(model.encode, val.images, normalizer), val.labels)


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, images: torch.Tensor, normalizer: Normalizer,
                            batch_size: int = 500, seed: int = 0) -> dict:
    """Loss, and MSE / PSNR in [0, 1] pixel units, over ``images`` (uint8 on the device)."""
    model.eval()
    device = images.device
    torch.manual_seed(seed)  # masked models draw masks: the same ones every evaluation
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    se_sum = torch.zeros((), device=device, dtype=torch.float64)
    for index in batch_indices(len(images), batch_size, shuffle=False, device=device):
        x = normalizer(images[index])
        with autocast(device):
            loss, reconstruction = model.loss(x)
        loss_sum += loss.double() * len(index)
        se_sum += (normalizer.to_unit(reconstruction) - normalizer.to_unit(x)).double().pow(2).mean(dim=(1, 2, 3)).sum()
    n = max(len(images), 1)
    mse = (se_sum / n).item()
    return {"val_loss": (loss_sum / n).item(), "val_mse": mse,
            "val_psnr": 10.0 * math.log10(1.0 / max(mse, 1e-12))}
