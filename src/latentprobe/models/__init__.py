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

from typing import Callable

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
    except TypeError as err:  # an option the model does not take
        raise ValueError(f"{name}: {err}; its options are the keyword arguments of its class "
                         f"(`latentprobe models` lists the models)") from None
    model.model_name = name
    return model


# Importing the model files fills the registry.
from latentprobe.models import conv_ae, deep_conv_ae, mae, patch_ae  # noqa: E402,F401
