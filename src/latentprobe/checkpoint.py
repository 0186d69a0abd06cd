"""Checkpoints: a dict of state_dicts + config + epoch, written atomically, read safely.

Only plain containers, numbers, strings and tensors go in, so ``torch.load(weights_only=True)``
reads them back and no pickled code from a user path ever runs.
"""

import hashlib
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

FORMAT = "latentprobe-checkpoint-1"
# what a checkpoint holds (its "kind"): a pretrained model, or a classifier (a probe head, or a
# fine-tuned encoder with its head)
AUTOENCODER, CLASSIFIER = "autoencoder", "classifier"


class CheckpointError(Exception):
    """Unreadable checkpoint, or one made for another model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers (so keys carry no
    ``module.`` or ``_orig_mod.`` prefix)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def weights_digest(model: nn.Module) -> str:
    """A short fingerprint of a model's weights and buffers: every cached artefact made from
    them (features, probe results, classifiers) carries it and is refused or redone when the
    weights change (a run retrained in the same folder, a longer run with a new best epoch)."""
    return state_digest(model.state_dict())


def state_digest(state: dict) -> str:
    """``weights_digest`` of a state dict as a checkpoint holds it (no model built)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class WriteError(OSError):
    """A file that could not be written (full disk, read-only folder): one line naming it."""


def save_checkpoint(path: Path, **entries) -> None:
    """A checkpoint (``save_atomic``): a crash mid-write leaves the previous one intact."""
    save_atomic({"format": FORMAT, **entries}, path)


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``. A failed write (a full
    disk is torch's "unexpected pos" RuntimeError) removes its temp file and is one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: two writers never share one
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)  # the half-written file would keep the disk full
        free = shutil.disk_usage(path.parent).free
        reason = (str(error).splitlines() or [""])[0][:120]
        raise WriteError(f"cannot write {path} ({reason}; {free / 2**20:,.0f} MiB free there); what was "
                         f"saved before is kept: free space, then run the same command again") from None


def load_checkpoint(path: Path, *, model_name: str | None = None, kind: str | None = None) -> dict:
    """Read a checkpoint; refuse one of another model name or kind with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the run first (latentprobe train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}); "
                              f"delete it to retrain, or restore it from a backup")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a latentprobe checkpoint")
    if model_name is not None and checkpoint.get("model_name") != model_name:
        raise CheckpointError(f"{path} holds a {checkpoint.get('model_name')!r} model, not {model_name!r}; "
                              f"use a fresh --out directory or the matching --model")
    if kind is not None and checkpoint.get("kind") != kind:
        raise CheckpointError(f"{path} is a {checkpoint.get('kind')!r} checkpoint, expected {kind!r}")
    return checkpoint
