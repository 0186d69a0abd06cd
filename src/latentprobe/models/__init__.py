"""Model registry: every autoencoder of the toolkit is built by name.

Each model is a plain ``nn.Module`` that follows one small protocol, so that
training, probing and reports never need to know which model they hold:

- ``model.latent_dim``: size of the vector that ``encode`` returns;
- ``model.encode(images) -> (B, latent_dim)``: the latent the probes read;
- ``model.loss(images) -> (loss, reconstruction)``: the pretraining objective;
- ``model.reconstruct(images) -> dict`` of image batches to show in grids
  (always ``"reconstruction"``, optionally e.g. ``"masked"``);
- optionally ``model.prepare(images, generator, normalizer)``: statistics fitted once on the
  training split before training (patch whitening; the data layer's pixel statistics), kept in
  buffers so checkpoints carry them.

Images are float tensors ``(B, 3, H, W)`` already normalised by the data layer.
"""

import os
from typing import Callable

import torch
import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` buildable as ``create_model(fn.__name__, ...)``."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The first line of the model's docstring."""
    doc = (_REGISTRY[name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    try:
        model = _REGISTRY[name](**kwargs)
    except TypeError as err:  # an option the model does not take, or a size no tensor can have
        first = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"{name}: {first}; its options are the keyword arguments of its class "
                         f"(`latentprobe models` lists the models)") from None
    model.model_name = name
    # Convolutions on the CPU run 1.2-2x faster with channels-last weights (benchmarks/bench_conv_ae.py);
    # the numbers are the same, and a model without 4-d weights is unchanged.
    return model.to(memory_format=torch.channels_last)


def check_model(name: str, device: torch.device | str = "cpu", **kwargs) -> int:
    """Build the model on the meta device (no memory): a model option it cannot take is one line
    here, before anything is made; so is a model whose weights, gradients and Adam's two moments
    (16 bytes a parameter) would not fit in ``device``'s memory. Returns its parameter count."""
    try:
        try:
            with torch.device("meta"):
                model = create_model(name, **kwargs)
        except NotImplementedError:  # its construction reads values (e.g. a fixed embedding): built for real
            model = create_model(name, **kwargs)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - the model's own check of its options (assert, shape)
        shown = " ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"{name} cannot be built with {shown or 'its defaults'}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'invalid option'}") from None
    count = sum(p.numel() for p in model.parameters())
    device = torch.device(device)
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device.index or 0).total_memory
    else:
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 16 * count > available:
        raise ValueError(f"{name} with {' '.join(f'{k}={v}' for k, v in kwargs.items())} has {count:,} parameters: "
                         f"{16 * count / 2**30:,.0f} GiB to train (weights, gradients and Adam's two moments), more "
                         f"than the {available / 2**30:,.0f} GiB of {device.type} memory here; choose smaller sizes")
    return count


# Importing the model files fills the registry.
from latentprobe.models import conv_ae, deep_conv_ae, mae, patch_ae  # noqa: E402,F401
