"""The detector: a one-layer classifier over cached latents.

``head="linear"`` is the study's classifier (Linear → log-softmax, NLL loss, Adam lr 1e-3);
``head="bn_linear"`` is the linear-probe protocol of MAE: BatchNorm1d without affine
parameters before the Linear, so the features' scale does not decide the result.
The epoch reported is the one with the best *validation* accuracy; test accuracy is recorded
per epoch only for the curves.

``fit_head`` is the evaluation suite's trainer (see evaluate.py): it never sees the test set,
stops once validation accuracy has not improved for ``patience`` epochs, and returns the head
of the best validation epoch, so that the test set is read once, by the caller.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe.config import require_at_least_one
from latentprobe.data import batch_indices
from latentprobe.features import FeatureSet
from latentprobe.metrics import confusion_matrix


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
class ProbeConfig:
    head: str = field(default="linear", metadata={"help": "linear (the study's) or bn_linear"})
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown probe head {self.head!r}; use one of {', '.join(HEADS)}")
        require_at_least_one(self, "epochs", "batch_size")


@dataclass
class ProbeResult:
    history: list[dict]  # per epoch: train_loss, train_acc, val_acc, test_acc
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


def train_probe(data: FeatureSet, cfg: ProbeConfig, device: torch.device | str = "cpu") -> ProbeResult:
    """Train the head on ``data.features['train']``; choose the epoch on ``val``."""
    if cfg.head not in ("linear", "bn_linear"):
        raise ValueError(f"unknown probe head {cfg.head!r}; use 'linear' or 'bn_linear'")
    data = data.to(device)
    torch.manual_seed(cfg.seed)
    num_classes = len(data.class_names)
    head = LinearHead(data.dim, num_classes, batch_norm=cfg.head == "bn_linear").to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = data.features["train"], data.labels["train"]
    history, best = [], None
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        loss_sum = torch.zeros((), device=device)
        for index in batch_indices(len(x_train), cfg.batch_size, shuffle=True, generator=generator,
                                   device=device):
            loss = F.nll_loss(head(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
        record = {"epoch": epoch, "train_loss": (loss_sum / len(x_train)).item(),
                  **{f"{split}_acc": accuracy(head, data.features[split], data.labels[split])
                     for split in ("train", "val", "test")}}
        history.append(record)
        if best is None or record["val_acc"] > best[0]["val_acc"]:
            best = (record, {k: v.detach().clone() for k, v in head.state_dict().items()})
    record, state = best
    head.load_state_dict(state)
    predictions = predict(head, data.features["test"]).cpu()
    return ProbeResult(history=history, best_epoch=record["epoch"], val_acc=record["val_acc"],
                       test_acc=record["test_acc"], test_predictions=predictions,
                       confusion=confusion_matrix(data.labels["test"].cpu(), predictions, num_classes),
                       head=head.cpu())


@dataclass
class FitResult:
    head: nn.Module  # weights of the best validation epoch, eval mode
    best_epoch: int
    val_acc: float
    history: list[dict]  # per epoch: train_loss, val_acc (no test numbers)


def fit_head(kind: str, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
             num_classes: int, *, lr: float, weight_decay: float, epochs: int, batch_size: int = 256,
             seed: int = 0, patience: int | None = 5, hidden: int = 512) -> FitResult:
    """Train a head on ``train`` = (features (N, D), labels (N,)), already on the device; keep
    the epoch with the best accuracy on ``val``. The seed sets the head's init and the order
    of the batches."""
    x_train, y_train = train
    device = x_train.device
    torch.manual_seed(seed)
    head = build_head(kind, x_train.shape[1], num_classes, hidden=hidden).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history, best_acc, best_epoch, best_state = [], -1.0, 0, None
    for epoch in range(1, epochs + 1):
        head.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        # drop_last: a BatchNorm head cannot train on a batch of one
        for index in batch_indices(len(x_train), batch_size, shuffle=True, generator=generator,
                                   drop_last=len(x_train) > batch_size, device=device):
            loss = F.nll_loss(head(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            seen += len(index)
        val_acc = accuracy(head, *val)
        history.append({"epoch": epoch, "train_loss": (loss_sum / seen).item(), "val_acc": val_acc})
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif patience is not None and epoch - best_epoch >= patience:
            break
    head.load_state_dict(best_state)
    return FitResult(head=head.eval(), best_epoch=best_epoch, val_acc=best_acc, history=history)
