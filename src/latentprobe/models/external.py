"""Encoders you bring: any ``nn.Module`` probed through the same protocol as the registered models.

An encoder SPEC is one of
- ``package.module:factory`` or ``path/to/file.py:factory``: a callable that returns an
  ``nn.Module`` mapping a normalised image batch (B, 3, S, S) to a latent; its ``encode`` method
  is used when it has one, else its forward;
- a TorchScript file (``torch.jit.save``);
- ``timm:NAME``: timm's architecture without its classifier (``num_classes=0``), its weights
  from ``--weights FILE``, a local state dict (nothing is downloaded).

A factory's or timm model's weights may come from ``--weights`` (a state dict, read with
``weights_only=True``). The untrained twin is the same architecture built again after seeding
torch with the run's seed (a TorchScript file holds no architecture to rebuild, so it has none).
"""

import importlib
import importlib.util
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from latentprobe.checkpoint import CheckpointError

DEFAULT_IMAGE_SIZE = 32
PIXELS_PER_PASS = 1000 * 32 * 32  # one pass of the encoder: the pixels of the 1,000 CIFAR images of a batch


class EncoderError(ValueError):
    """An encoder SPEC that cannot give a latent: said in one line."""


def fit_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """A batch (B, C, H, W) at size × size: the shorter side resized (bilinear, antialiased), then
    the centre cropped; a batch already that size is returned as it is."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    scale = size / min(height, width)
    height, width = max(size, round(height * scale)), max(size, round(width * scale))
    images = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


class Encoder(nn.Module):
    """A module brought by the user, read as the registered models are read: ``encode(images)``
    gives (B, D) from a normalised batch of any size, fitted to the encoder's input size
    (``fit_to``). A (B, C, H, W) output is averaged over positions and a (B, T, D) one over
    tokens (or its first token) only when ``pool`` asks for it."""

    def __init__(self, net: nn.Module, spec: str, image_size: int, pool: str | None = None):
        super().__init__()
        self.net, self.spec, self.pool = net, spec, pool
        self.config = {"image_size": image_size}
        with torch.no_grad():
            self.latent_dim = self.eval().encode(torch.zeros(2, 3, image_size, image_size)).shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def encode(self, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """The latent (B, D) of a normalised batch; with ``layer`` (a module path such as ``layer3``)
        that module's output instead, averaged over positions (B, C, H, W) or tokens (B, T, D)."""
        size = self.config["image_size"]
        step = max(1, PIXELS_PER_PASS // size ** 2)
        if len(images) > step:  # large inputs in smaller passes: memory as for 1,000 CIFAR images
            return torch.cat([self.encode(images[start:start + step], layer)
                              for start in range(0, len(images), step)])
        images = fit_to(images, size)
        captured = []
        hook = self.net.get_submodule(layer).register_forward_hook(
            lambda module, inputs, output: captured.append(output)) if layer else None
        try:
            out = self.net.encode(images) if hasattr(self.net, "encode") else self.net(images)
        except Exception as error:  # noqa: BLE001 - the user's code: its failure, in one line
            raise EncoderError(f"--encoder {self.spec} failed on a batch of shape {tuple(images.shape)}: "
                               f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
                               f"give --image-size its input size") from None
        finally:
            if hook is not None:
                hook.remove()
        if layer:
            out = captured[0] if captured else None
            if not isinstance(out, torch.Tensor) or out.dim() not in (2, 3, 4):
                shown = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise EncoderError(f"--layers {layer}: gives {shown}, not a (B, D), (B, T, D) or (B, C, H, W) tensor")
            return self._checked(self._reduce(out, self.pool or "mean"), len(images), f"--layers {layer}")
        if not isinstance(out, torch.Tensor):
            raise EncoderError(f"--encoder {self.spec} returned {type(out).__name__}, not a tensor; "
                               f"give it an encode method that returns the latent (B, D)")
        if out.dim() != 2 and (self.pool is None or out.dim() not in (3, 4)):
            hint = "pass --pool mean to average it" if out.dim() in (3, 4) else "return (B, D)"
            raise EncoderError(f"--encoder {self.spec} gives a latent of shape {tuple(out.shape)}, not (B, D): "
                               f"{hint}")
        return self._checked(self._reduce(out, self.pool), len(images), f"--encoder {self.spec}")

    @staticmethod
    def _checked(latent: torch.Tensor, count: int, what: str) -> torch.Tensor:
        """A latent the probes can read: one row per image, real numbers, all finite."""
        if latent.shape[0] != count:
            raise EncoderError(f"{what} gave {latent.shape[0]} latent rows for {count} images; return one per image")
        if not latent.is_floating_point():
            raise EncoderError(f"{what} gave {latent.dtype} values; return floating-point latents")
        if not torch.isfinite(latent).all():
            raise EncoderError(f"{what} gave NaN or infinite latent values on a batch of {count} images; check its "
                               f"weights, its input size (--image-size) and its numerics")
        return latent

    @staticmethod
    def _reduce(out: torch.Tensor, pool: str | None) -> torch.Tensor:
        if out.dim() == 2:
            return out
        if out.dim() == 4:  # (B, C, H, W): the mean over positions
            return out.mean(dim=(2, 3))
        return out[:, 0] if pool == "cls" else out.mean(dim=1)

    def check_layers(self, names: list[str]) -> None:
        """Each module path names a module of the encoder that hooks can read (not TorchScript)."""
        if isinstance(self.net, torch.jit.ScriptModule):
            raise EncoderError(f"--layers: {self.spec} is TorchScript, whose modules take no hooks; probe its output")
        for name in names:
            try:
                self.net.get_submodule(name)
            except AttributeError:
                children = ", ".join(n for n, _ in self.net.named_children())
                raise EncoderError(f"--layers {name}: {self.spec} has no module of that path; its top modules: "
                                   f"{children}") from None


@contextmanager
def users_code(what: str):
    """Run code the user brought: any failure of it is one ``EncoderError`` line after ``what``."""
    try:
        yield
    except EncoderError:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's code: any failure (an exit too), one line
        raise EncoderError(f"{what}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}") from None


def _factory(spec: str):
    """The callable named by ``module:factory`` or ``file.py:factory``."""
    where, _, name = spec.rpartition(":")
    with users_code(f"--encoder {spec}: importing {where} failed"):
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise EncoderError(f"--encoder {spec}: {path} not found")
            module_name = f"latentprobe_user_{path.stem}"
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise EncoderError(f"--encoder {spec}: {where} has no callable {name!r}")
    return factory


def _build(spec: str) -> nn.Module:
    """A fresh module of ``spec`` (random weights, as its code initialises them)."""
    if spec.startswith("timm:"):
        import timm

        with users_code(f"--encoder {spec}: timm cannot build it (`timm.list_models()` names them)"):
            return timm.create_model(spec[5:], pretrained=False, num_classes=0)
    with users_code(f"--encoder {spec}: the factory raised"):
        module = _factory(spec)()
    if not isinstance(module, nn.Module):
        raise EncoderError(f"--encoder {spec}: the factory returned {type(module).__name__}, not a torch nn.Module")
    return module


def is_torchscript(spec: str) -> bool:
    return ":" not in spec.replace("\\", "/").split("/")[-1] and Path(spec).expanduser().is_file()


def load_net(spec: str, weights: str | None = None) -> nn.Module:
    """The module of ``spec`` with its weights (``weights``: a state dict file)."""
    if is_torchscript(spec):
        if weights:
            raise EncoderError(f"--weights: {spec} is a TorchScript file and holds its weights; leave --weights out")
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript; the file is still read as it is
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(Path(spec).expanduser()), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - not TorchScript
            raise EncoderError(f"--encoder {spec}: not a TorchScript file ({str(error).splitlines()[0][:120]}); a "
                               f"state dict needs its architecture: --encoder module:factory --weights FILE") from None
    if ":" not in spec:
        raise EncoderError(f"--encoder {spec}: not a file, and not module:factory or timm:NAME")
    if spec.startswith("timm:") and not weights:
        raise EncoderError(f"--encoder {spec} needs --weights FILE, a local state dict (nothing is downloaded); "
                           f"save one with torch.save(model.state_dict(), FILE)")
    net = _build(spec)
    if weights:
        path = Path(weights).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - missing, corrupt or not a plain state dict
            raise CheckpointError(f"--weights {path}: not a readable state dict ({str(error).splitlines()[0]}); "
                                  f"save one with torch.save(model.state_dict(), FILE)") from None
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise CheckpointError(f"--weights {path}: holds {type(state).__name__}, not a state dict")
        missing, unexpected = net.load_state_dict(state, strict=False)
        classifier = [k for k in unexpected if k.split(".")[0] in ("fc", "head", "classifier", "last_linear")]
        if missing or len(unexpected) > len(classifier):
            raise CheckpointError(f"--weights {path} does not fit {spec}: {len(missing)} missing (e.g. "
                                  f"{missing[:2]}), {len(unexpected) - len(classifier)} unexpected keys (e.g. "
                                  f"{[k for k in unexpected if k not in classifier][:2]})")
    return net


def declared_size(net: nn.Module) -> int | None:
    """The input size a module declares: its ``image_size`` / ``img_size`` attribute, or timm's
    pretrained configuration."""
    for name in ("image_size", "img_size"):
        value = getattr(net, name, None)
        if isinstance(value, int) or (isinstance(value, (tuple, list)) and value and isinstance(value[-1], int)):
            return value if isinstance(value, int) else value[-1]
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else None


def load_encoder(spec: str, weights: str | None = None, image_size: int | None = None,
                 pool: str | None = None, seed: int = 0) -> Encoder:
    """The ``Encoder`` of a SPEC, checked on a batch of two blank images at its input size
    (``image_size``, else the size it declares, else 32). It is built after seeding torch with
    ``seed``, so a factory that sets no weights of its own gives the same module every time (then
    the same as its untrained twin)."""
    torch.manual_seed(seed)
    net = load_net(spec, weights).eval()
    return Encoder(net, spec, image_size or declared_size(net) or DEFAULT_IMAGE_SIZE, pool)


def untrained_encoder(spec: str, seed: int, image_size: int, pool: str | None = None) -> Encoder:
    """The same architecture with the weights its code gives it, after ``torch.manual_seed(seed)``."""
    if is_torchscript(spec):
        raise EncoderError(f"--baselines random: {spec} is a TorchScript file, which holds no architecture to "
                           f"build again; give module:factory or timm:NAME, or leave random out")
    torch.manual_seed(seed)
    return Encoder(_build(spec).eval(), spec, image_size, pool)

