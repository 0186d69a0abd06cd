"""The detector: a one-layer classifier over cached latents.

``head="linear"`` is the study's classifier (Linear → log-softmax, NLL loss, Adam lr 1e-3);
``head="bn_linear"`` is the linear-probe protocol of MAE: BatchNorm1d without affine
parameters before the Linear, so the features' scale does not decide the result.
``mlp`` adds one hidden layer.

One trainer, ``fit_head``, serves every probe: it never sees the test set and returns the head
of the epoch with the best *validation* accuracy. ``train_probe`` (the study, ``latentprobe
probe``) and the evaluation suite (evaluate.py, with its grid and seeds) then read the test set
once with that head.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.config import require_at_least_one
from latentprobe.data.cifar import batch_indices
from latentprobe.distributed import local_device
from latentprobe.metrics import confusion_matrix, precision_recall
from latentprobe.probe.features import FeatureSet, run_features
from latentprobe.runs import Run, RunData, write_json
from latentprobe.training.engine import lr_at


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, *, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(self.norm(features)), dim=1)  # (B, C) log-probabilities


class MLPHead(nn.Module):
    """One hidden layer: BatchNorm1d (no affine) → Linear → BatchNorm1d → ReLU → Linear."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 512):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)  # as bn_linear: feature scale is irrelevant
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(self.hidden(self.norm(features))), dim=1)  # (B, C)


HEADS = ("linear", "bn_linear", "mlp")


def build_head(kind: str, in_dim: int, num_classes: int, *, hidden: int = 512) -> nn.Module:
    """``linear`` (the study's), ``bn_linear`` (MAE's linear-probe protocol) or ``mlp``."""
    if kind == "mlp":
        return MLPHead(in_dim, num_classes, hidden=hidden)
    if kind in ("linear", "bn_linear"):
        return LinearHead(in_dim, num_classes, batch_norm=kind == "bn_linear")
    raise ValueError(f"unknown probe head {kind!r}; use one of {', '.join(HEADS)}")


@dataclass
class ProbeConfig(RunData):
    head: str = field(default="linear", metadata={"help": "linear (the study's) or bn_linear"})
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    pool: str | None = field(default=None, metadata={"help": "ViT encoders: cls or mean token pooling "
                                                             "(default: the run's)"})
    device: str = "auto"

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown probe head {self.head!r}; use one of {', '.join(HEADS)}")
        if self.pool not in (None, "cls", "mean"):
            raise ValueError(f"unknown --pool {self.pool!r}; use cls or mean")
        require_at_least_one(self, "epochs", "batch_size")


@dataclass
class ProbeResult:
    history: list[dict]  # per epoch: train_loss, train_acc, val_acc (no test numbers)
    best_epoch: int
    val_acc: float
    test_acc: float
    test_predictions: torch.Tensor  # at the best validation epoch
    confusion: object  # np.ndarray (C, C) on the test set at the best epoch
    head: LinearHead

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "val_acc": self.val_acc, "test_acc": self.test_acc}


@torch.no_grad()
def predict(head: nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    head.eval()
    return torch.cat([head(features[i:i + batch_size]).argmax(1) for i in range(0, len(features), batch_size)])


def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(head, features) == labels).float().mean().item()


@dataclass
class FitResult:
    head: nn.Module  # weights of the best validation epoch, eval mode
    best_epoch: int
    val_acc: float
    history: list[dict]  # per epoch: train_loss, train_acc, val_acc (no test numbers)


def fit_head(kind: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
             num_classes: int, *, lr: float, weight_decay: float, epochs: int, batch_size: int = 256,
             seed: int = 0, patience: int | None = 5, hidden: int = 512, schedule: str = "constant") -> FitResult:
    """The one probe trainer. Train a head on ``train`` = (features (N, D), labels (N,)), already
    on the device; keep the epoch with the best accuracy on ``val`` (``patience``: stop after that
    many epochs without a gain; None trains every epoch). ``schedule``: Adam at a ``constant`` lr,
    or ``cosine``, decaying to 0 over ``epochs`` (a probe that settles; on wide latents it reads
    several points more, docs/RESULTS.md). The seed sets the head's init and the order of the
    batches. The test set is never read here."""
    x_train, y_train = train
    device = x_train.device
    torch.manual_seed(seed)
    head = build_head(kind, x_train.shape[1], num_classes, hidden=hidden).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    # a BatchNorm head cannot train on a batch of one: its last, short batch is dropped
    drop_last = kind != "linear" and len(x_train) > batch_size
    steps_per_epoch = len(x_train) // batch_size if drop_last else -(-len(x_train) // batch_size)
    step = 0
    history, best_acc, best_epoch, best_state = [], -1.0, 0, None
    for epoch in range(1, epochs + 1):
        head.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for index in batch_indices(len(x_train), batch_size, shuffle=True, generator=generator,
                                   drop_last=drop_last, device=device):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, epochs * steps_per_epoch, 0, lr, schedule)
            output = head(x_train[index])
            loss = F.nll_loss(output, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach() * len(index)
            correct += (output.detach().argmax(1) == y_train[index]).sum()
            seen += len(index)
        val_acc = accuracy(head, *val)
        # train_acc: of the batches as they were trained (free; the weights move during the epoch)
        history.append({"epoch": epoch, "train_loss": (loss_sum / seen).item(),
                        "train_acc": (correct / seen).item(), "val_acc": val_acc})
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif patience is not None and epoch - best_epoch >= patience:
            break
    head.load_state_dict(best_state)
    return FitResult(head=head.eval(), best_epoch=best_epoch, val_acc=best_acc, history=history)


def train_probe(data: FeatureSet, cfg: ProbeConfig, device: torch.device | str = "cpu") -> ProbeResult:
    """The one-head, one-seed probe of the study and of ``latentprobe probe``: ``fit_head`` over
    every epoch of ``cfg``, then the chosen head reads the test set once."""
    data = data.to(device)
    num_classes = len(data.class_names)
    fit = fit_head(cfg.head, (data.features["train"], data.labels["train"]),
                   (data.features["val"], data.labels["val"]), num_classes, lr=cfg.lr,
                   weight_decay=cfg.weight_decay, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                   patience=None)
    predictions = predict(fit.head, data.features["test"]).cpu()
    labels = data.labels["test"].cpu()
    return ProbeResult(history=fit.history, best_epoch=fit.best_epoch, val_acc=fit.val_acc,
                       test_acc=(predictions == labels).float().mean().item(), test_predictions=predictions,
                       confusion=confusion_matrix(labels, predictions, num_classes), head=fit.head.cpu())


def probe_and_save(features: FeatureSet, cfg: ProbeConfig, directory: Path, device,
                   pool: str | None = None) -> dict:
    """Train the head of ``cfg`` on ``features``, write DIRECTORY/probe_<head>.json (one file per
    head) and return that record; ``pool`` records a ViT pooling chosen at probe time."""
    started = time.perf_counter()
    result = train_probe(features, cfg, device)
    precision, recall = precision_recall(result.confusion)
    record = {**result.summary(), "latent_dim": features.dim, "probe_seconds": time.perf_counter() - started,
              "history": result.history, "confusion": result.confusion.tolist(),
              "precision": precision.tolist(), "recall": recall.tolist(), "class_names": features.class_names,
              "probe_config": dataclasses.asdict(cfg)}
    if pool is not None:
        record["pool"] = pool  # mae-report shows it beside the run's own pooling
    write_json(Run(directory).probe_file(cfg.head), record)
    return record


def probe_run(run: Run | Path | str, cfg: ProbeConfig) -> dict:
    """``latentprobe probe``: the run's cached latents (extracted on the first call), one head, one seed."""
    run, device = cfg.run(run), local_device(cfg.device)
    features = run_features(run, device, pool=cfg.pool)
    return probe_and_save(features, cfg, run.path, device, pool=cfg.pool)
