"""The probe: a classifier over cached latents, and the one trainer of every probe.

``linear`` is the study's classifier (Linear → log-softmax, NLL loss, Adam); ``bn_linear`` is the
linear-probe protocol of MAE: BatchNorm1d without affine parameters before the Linear, so the
features' scale does not decide the result; ``logistic`` is multinomial logistic regression on
features standardised with the training set's statistics, its L2 penalty on the weights only (a
convex problem, solved by full-batch L-BFGS until its gradient is near 0, as scikit-learn's lbfgs
solver); ``low_rank`` is ``bn_linear`` with its weight of low rank across a spatial latent's codes
(a 1×1 bottleneck to ``rank`` channels at every pooling region, then a linear map of the regions:
the readout of Thiry et al. 2021, linear end to end); ``mlp`` adds one hidden layer.

``fit_heads`` trains several heads of one kind, one per (lr, weight decay), in one pass over the
features per epoch, never sees the test set and returns each head at the epoch of its best
*validation* accuracy. The evaluation suite (evaluate.py: grid, seeds, refit, baselines) reads
the test set once with the chosen head.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latentprobe.options import HEADS
from latentprobe.probe.store import shuffled_batches
from latentprobe.training.engine import lr_at


class Standardize(nn.Module):
    """``(x - mean) / std`` with the statistics of the training features, fitted once before
    training (``fit``): the converged probe's fixed input, as scikit-learn's StandardScaler (a
    feature that never varies keeps its scale)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features, chunk: int = 1024) -> "Standardize":
        """Mean and std over the rows of ``features`` (a tensor or a FeatureMatrix), in one pass
        (float32 sums of a chunk, float64 across chunks)."""
        total = torch.zeros(features.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(features), chunk):
            rows = features[start:start + chunk].cpu()
            total += rows.sum(0).double()
            squares += rows.pow(2).sum(0).double()
        mean = total / len(features)
        std = (squares / len(features) - mean.pow(2)).clamp(min=0).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class LowRankLinear(nn.Module):
    """A linear map whose input is ``codes × regions`` values, code-major (code c's values over the
    regions are c·R … c·R+R-1, as a patch latent lays them out), and whose weight is a product:
    ``weight[k, c·R + g] = Σ_j bottleneck[c, j] · readout[j, g, k]``. It is a 1×1 convolution of the
    codes to ``rank`` channels at every region, then a linear map of all regions' channels: a
    linear classifier of rank ≤ ``rank`` across codes, with (codes + regions · classes) · rank
    parameters instead of codes · regions · classes. The product is formed once per step, so a
    batch costs what a full linear layer's does."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, regions: int = 1):
        super().__init__()
        if regions < 1 or in_features % regions:
            raise ValueError(f"a latent of {in_features} values does not split into {regions} regions per code")
        codes = in_features // regions
        self.in_features, self.out_features, self.regions = in_features, out_features, regions
        # each factor's scale chosen so the product starts at a Linear's: entries of std 1/sqrt(in_features)
        self.bottleneck = nn.Parameter(torch.randn(codes, rank) / codes**0.5)
        self.readout = nn.Parameter(torch.randn(rank, regions * out_features) / (rank * regions) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(out_features))

    @property
    def weight(self) -> torch.Tensor:
        """The product as a Linear's weight, (out_features, in_features)."""
        product = (self.bottleneck @ self.readout).view(-1, self.regions, self.out_features)  # (codes, R, classes)
        return product.permute(2, 0, 1).reshape(self.out_features, self.in_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, *, norm: str | None = None, rank: int | None = None,
                 regions: int = 1):
        """``norm``: None, ``batch`` (BatchNorm1d without affine: MAE's protocol) or ``standardize``
        (fixed statistics of the training features: the converged logistic probe). ``rank``: the
        Linear is a ``LowRankLinear`` over ``regions`` regions per code."""
        super().__init__()
        self.norm = {None: nn.Identity, "batch": lambda d: nn.BatchNorm1d(d, affine=False),
                     "standardize": Standardize}[norm](in_dim)
        self.linear = nn.Linear(in_dim, num_classes) if rank is None else \
            LowRankLinear(in_dim, num_classes, rank=rank, regions=regions)

    def layers(self) -> tuple[nn.Linear, nn.Module]:
        """(first Linear, what follows it): how ``HeadBank`` runs several heads as one."""
        return self.linear, nn.Identity()

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The state of the head with a full ``nn.Linear`` that computes what this one does: a
        low-rank map's product folded into one weight, so a low-rank probe loads as the BN + linear
        head it is."""
        state = self.state_dict()
        if isinstance(self.linear, LowRankLinear):
            state = {**{k: v for k, v in state.items() if not k.startswith("linear.")},
                     "linear.weight": self.linear.weight.detach(), "linear.bias": self.linear.bias.detach()}
        return state

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(self.norm(features)), dim=1)  # (B, C) log-probabilities


class MLPHead(nn.Module):
    """One hidden layer: BatchNorm1d (no affine) → Linear → BatchNorm1d → ReLU → Linear."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 512):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)  # as bn_linear: feature scale is irrelevant
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.linear = nn.Linear(hidden, num_classes)

    def layers(self) -> tuple[nn.Linear, nn.Module]:
        return self.hidden[0], nn.Sequential(*self.hidden[1:], self.linear)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(self.hidden(self.norm(features))), dim=1)  # (B, C)


_NORMS = {"linear": None, "bn_linear": "batch", "logistic": "standardize", "low_rank": "batch"}


def build_head(kind: str, in_dim: int, num_classes: int, *, hidden: int = 512, rank: int = 128,
               regions: int = 1) -> nn.Module:
    """``linear`` (the study's), ``bn_linear`` (MAE's linear-probe protocol), ``logistic``
    (multinomial logistic regression on standardised features: the converged probe), ``low_rank``
    (``bn_linear`` of rank ≤ ``rank`` across codes, ``regions`` values per code) or ``mlp``."""
    if kind == "mlp":
        return MLPHead(in_dim, num_classes, hidden=hidden)
    if kind == "low_rank":
        return LinearHead(in_dim, num_classes, norm="batch", rank=rank, regions=regions)
    if kind in _NORMS:
        return LinearHead(in_dim, num_classes, norm=_NORMS[kind])
    raise ValueError(f"unknown probe head {kind!r}; use one of {', '.join(HEADS)}")


class HeadBank(nn.Module):
    """Several heads of one kind over the same batches, run as one: their input normalisation once
    (BatchNorm without affine has no parameters, so every head's would compute the same), their
    first layers as one matrix product, then each head's own rest. A head's parameters get the
    gradient of its own loss only, so training the bank is training each head on its own. With
    ``own_norms`` each head reads through its own normalisation instead (their statistics may
    differ: heads kept at different epochs), still in one product."""

    def __init__(self, heads: list[nn.Module], own_norms: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.norm = None if own_norms else copy.deepcopy(heads[0].norm)
        self.firsts, self.rests = zip(*(head.layers() for head in heads))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        # The normalisation is affine per feature, (x - mean) / scale, so it folds into the first
        # layer: W' = W / scale, b' = b - W' mean. The product then reads the features as they are,
        # with no normalised copy of the batch (the features need no gradient).
        shared = _statistics(self.norm, features) if self.norm is not None else None
        weights, biases = [], []
        for head, layer in zip(self.heads, self.firsts):
            mean, scale = shared if shared is not None else _statistics(head.norm, features)
            weight = layer.weight if mean is None else layer.weight / scale
            weights.append(weight)
            biases.append(layer.bias if mean is None else layer.bias - weight @ mean)
        hidden = F.linear(features, torch.cat(weights), torch.cat(biases))  # (B, G·H): one product for all heads
        hidden = hidden.split([layer.out_features for layer in self.firsts], 1)
        return [F.log_softmax(rest(h), dim=1) for rest, h in zip(self.rests, hidden)]  # G × (B, C)


@torch.no_grad()
def _statistics(norm: nn.Module, features: torch.Tensor):
    """(mean, scale) of an input normalisation as its module would apply it; (None, None) for none.
    A BatchNorm in training uses the batch's statistics and updates its running ones as it would."""
    if isinstance(norm, Standardize):
        return norm.mean, norm.std
    if not isinstance(norm, nn.BatchNorm1d):
        return None, None
    if not norm.training:
        return norm.running_mean, (norm.running_var + norm.eps).sqrt()
    # two passes, mean then squared deviations: several times faster than torch.var_mean over a wide batch's rows
    mean = features.mean(dim=0)
    var = (features - mean).pow(2).mean(dim=0)
    count = len(features)
    norm.num_batches_tracked += 1
    norm.running_mean.lerp_(mean, norm.momentum)
    norm.running_var.lerp_(var * count / max(count - 1, 1), norm.momentum)
    return mean, (var + norm.eps).sqrt()


@torch.no_grad()
def predict(head: nn.Module, features, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes of ``features`` (a tensor, or a FeatureMatrix read in batches), on the
    head's device."""
    head.eval()
    device = next(head.parameters()).device
    parts = []
    for start in range(0, len(features), batch_size):
        output = head(features[start:start + batch_size].to(device))
        parts.append(torch.stack([o.argmax(1) for o in output]) if isinstance(output, list) else output.argmax(1))
    return torch.cat(parts, dim=-1)  # (N,), or (G, N) for a HeadBank


def accuracy(head: nn.Module, features, labels: torch.Tensor) -> float:
    return (predict(head, features).to(labels.device) == labels).float().mean().item()


@dataclass
class FitResult:
    head: nn.Module  # weights of the best validation epoch (without validation: the last), eval mode
    best_epoch: int
    val_acc: float | None
    history: list[dict]  # per epoch: train_loss, train_acc, val_acc (no test numbers)
    convergence: dict  # gradient norm of the training objective at the start and at the kept weights


def _param_groups(kind: str, head: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The head's optimiser groups. The logistic probe's penalty is on its weights only, as
    scikit-learn's (its objective: mean NLL + weight_decay / 2 · |W|²); the other heads decay all."""
    if kind != "logistic":
        return [{"params": list(head.parameters()), "weight_decay": weight_decay, "base_lr": lr}]
    return [{"params": [head.linear.weight], "weight_decay": weight_decay, "base_lr": lr},
            {"params": [head.linear.bias], "weight_decay": 0.0, "base_lr": lr}]


def objective(bank: "HeadBank", groups: list[list[dict]], features, labels: torch.Tensor,
              chunk: int = 1024) -> list[float]:
    """Each head's training objective at its current weights, normalisation statistics fixed (eval
    mode): mean NLL over all of ``features`` plus its penalty, weight_decay / 2 · |p|² on the
    parameters of its groups, in one pass. Leaves the objective's gradient in each ``.grad``."""
    bank.eval()
    bank.zero_grad(set_to_none=True)
    device = next(bank.parameters()).device
    values = torch.zeros(len(groups), dtype=torch.float64)
    with torch.enable_grad():
        for start in range(0, len(features), chunk):
            outputs = bank(features[start:start + chunk].to(device))
            target = labels[start:start + chunk].to(device)
            losses = torch.stack([F.nll_loss(out, target, reduction="sum") for out in outputs]) / len(features)
            losses.sum().backward()  # each head's parameters get their own loss's gradient
            values += losses.detach().double().cpu()
    for g, head_groups in enumerate(groups):
        for group in head_groups:
            for param in group["params"]:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                if group["weight_decay"]:
                    values[g] += group["weight_decay"] / 2 * param.detach().double().pow(2).sum().cpu()
                    param.grad += group["weight_decay"] * param.detach()
    return values.tolist()


def gradient_norms(bank: "HeadBank", groups: list[list[dict]], features, labels: torch.Tensor,
                   chunk: int = 1024) -> list[float]:
    """|∇| of each head's training objective (``objective``) at its current weights: one pass."""
    objective(bank, groups, features, labels, chunk)
    norms = [float(sum(p.grad.pow(2).sum() for g in head_groups for p in g["params"])) ** 0.5 for head_groups in groups]
    bank.zero_grad(set_to_none=True)
    return norms


LOGISTIC_TOLERANCE = 1e-4  # L-BFGS stops when the gradient's largest entry is this share of its start


def _solve_logistic(train, val, num_classes: int, settings: list[tuple[float, float]], passes: int,
                    device, desc: str | None, start: nn.Module | None = None) -> list["FitResult"]:
    """The logistic probe, one per weight decay of ``settings`` (it takes no learning rate: settings
    that differ only in theirs are solved once), by full-batch L-BFGS with a strong-Wolfe line
    search over standardised features, until the gradient's largest entry is
    ``LOGISTIC_TOLERANCE`` of its value at zero weights or after ``passes`` passes over the
    features. The penalties are solved along their path, the largest first from zero weights (or
    from ``start``, a logistic head fitted on other rows: a refit's choice), each next one from the
    last solution, as scikit-learn's and glmnet's regularisation paths: the optimum of a penalised
    problem is unique, so only the passes it takes depend on where it starts. No seed enters.
    ``best_epoch`` is the passes it took."""
    x_train, y_train = train
    y_train = y_train.to(device)
    norm = Standardize(x_train.shape[1]).fit(x_train).to(device)  # the fixed input, fitted once
    head = build_head("logistic", x_train.shape[1], num_classes)
    head.norm = norm
    nn.init.zeros_(head.linear.weight)
    nn.init.zeros_(head.linear.bias)
    bank = HeadBank([head]).to(device)
    objective(bank, [_param_groups("logistic", head, 0.0, 0.0)], x_train, y_train)  # at zero: no penalty enters
    tolerance = LOGISTIC_TOLERANCE * max(float(p.grad.abs().max()) for p in head.linear.parameters())
    initial = float(sum(p.grad.pow(2).sum() for p in head.linear.parameters())) ** 0.5
    if start is not None:
        _carry_over(start, head)
    solved: dict[float, FitResult] = {}
    penalties = sorted({weight_decay for _, weight_decay in settings}, reverse=True)
    progress = tqdm(penalties, desc=desc or "logistic probe", unit="fit", leave=False, disable=None)
    for weight_decay in progress:
        groups = [_param_groups("logistic", head, 0.0, weight_decay)]
        history: list[dict] = []

        def closure() -> float:  # one pass over the features: the objective and its gradient
            value = objective(bank, groups, x_train, y_train)[0]
            history.append({"epoch": len(history) + 1, "train_loss": value})
            return value

        solver = torch.optim.LBFGS(list(head.linear.parameters()), lr=1.0, max_iter=passes, max_eval=passes,
                                   tolerance_grad=tolerance, tolerance_change=1e-12, history_size=20,
                                   line_search_fn="strong_wolfe")
        solver.step(closure)
        head.eval()
        final = gradient_norms(bank, groups, x_train, y_train)[0]
        val_acc = None if val is None else accuracy(bank, val[0], val[1].to(device))
        if val_acc is not None:
            history[-1]["val_acc"] = val_acc
        history[-1]["train_acc"] = accuracy(bank, x_train, y_train)
        solved[weight_decay] = FitResult(head=copy.deepcopy(head), best_epoch=len(history), val_acc=val_acc,
                                         history=history,
                                         convergence={"initial_gradient_norm": initial, "gradient_norm": final})
    progress.close()
    return [solved[weight_decay] for _, weight_decay in settings]


@torch.no_grad()
def _carry_over(source: nn.Module, head: nn.Module) -> None:
    """Set ``head`` to the classifier ``source`` computes on the raw features, through ``head``'s
    own standardisation: logits = x · (W / std)ᵀ + b − (W / std) · mean is kept as it is."""
    raw = source.linear.weight / source.norm.std
    bias = source.linear.bias - raw @ source.norm.mean
    head.linear.weight.copy_(raw * head.norm.std)
    head.linear.bias.copy_(bias + raw @ head.norm.mean)


def fit_heads(kind: str, train, val, num_classes: int, *, settings: list[tuple[float, float]], epochs: int,
              batch_size: int = 256, seed: int = 0, patience: int | None = 5, hidden: int = 512,
              schedule: str = "constant", device=None, desc: str | None = None,
              start: nn.Module | None = None, rank: int = 128, regions: int = 1) -> list[FitResult]:
    """The one probe trainer. One head of ``kind`` per (lr, weight decay) in ``settings``, all
    trained on ``train`` = (features (N, D), labels (N,)) in one pass per epoch: the same batches
    for every head, each with its own optimiser state. The features may be a tensor or a
    FeatureMatrix read window by window; batches go to ``device`` (default: the labels'). Each head
    keeps the epoch of its best accuracy on ``val`` and stops after ``patience`` epochs without a
    gain (None: trains every epoch); a refit on training + validation (``val`` None) trains all
    ``epochs`` and keeps the last. The logistic probe, a convex problem, is solved instead
    (``_solve_logistic``: ``epochs`` caps its passes over the features; ``start``, a logistic head,
    is where it starts). ``schedule``: Adam at a ``constant`` lr, or
    ``cosine``, decaying to 0 over ``epochs`` (a probe that settles; on wide latents it reads
    several points more, docs/RESULTS.md). The seed sets every head's init (the same for all: each
    is the head a fit of its setting alone would start from) and the order of the batches. The test
    set is never read here. Each result carries the gradient norm of its training objective at the
    start and at the weights kept: a converged probe's is near 0."""
    x_train, y_train = train
    device = torch.device(device) if device is not None else y_train.device
    if kind == "logistic":  # a convex problem: solved, not trained
        return _solve_logistic(train, val, num_classes, settings, epochs, device, desc, start)
    heads = []
    for _ in settings:
        torch.manual_seed(seed)
        heads.append(build_head(kind, x_train.shape[1], num_classes, hidden=hidden, rank=rank, regions=regions))
    bank = HeadBank(heads).to(device)
    groups = [_param_groups(kind, head, lr, weight_decay) for head, (lr, weight_decay) in zip(heads, settings)]
    optimizer = torch.optim.Adam([group for head_groups in groups for group in head_groups])
    generator = torch.Generator().manual_seed(seed)
    # a BatchNorm head cannot train on a batch of one: its last, short batch is dropped
    drop_last = kind != "linear" and len(x_train) > batch_size
    steps_per_epoch = len(x_train) // batch_size if drop_last else -(-len(x_train) // batch_size)
    y_train = y_train.to(device)
    initial = gradient_norms(bank, groups, x_train, y_train)
    count = len(heads)
    histories = [[] for _ in heads]
    best = [(-1.0, 0, None)] * count  # per head: (val acc, epoch, state incl. the norm's statistics)
    active = [True] * count
    step = 0
    progress = tqdm(range(1, epochs + 1), desc=desc or f"{kind} probe", unit="epoch", leave=False, disable=None)
    for epoch in progress:
        bank.train()
        loss_sums, corrects = torch.zeros(count, device=device), torch.zeros(count, device=device)
        seen = 0
        for x, y in shuffled_batches(x_train, y_train, batch_size, generator, drop_last):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, epochs * steps_per_epoch, 0, group["base_lr"], schedule)
            outputs = bank(x.to(device))
            losses = torch.stack([F.nll_loss(out, y) for out in outputs])  # (G,)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each head's parameters get their own loss's gradient
            optimizer.step()
            step += 1
            loss_sums += losses.detach() * len(y)
            corrects += torch.stack([(out.detach().argmax(1) == y).sum() for out in outputs])
            seen += len(y)
        val_accs = [None] * count if val is None else \
            (predict(bank, val[0]) == val[1].to(device)).float().mean(dim=1).tolist()
        for g in range(count):
            if not active[g]:  # stopped: what it learns from here on is never kept, as if it had stopped alone
                continue
            # train_acc: of the batches as they were trained (free; the weights move during the epoch)
            histories[g].append({"epoch": epoch, "train_loss": (loss_sums[g] / seen).item(),
                                 "train_acc": (corrects[g] / seen).item(),
                                 **({} if val is None else {"val_acc": val_accs[g]})})
            if val is None or val_accs[g] > best[g][0]:
                state = {k: v.detach().clone() for k, v in heads[g].state_dict().items()}
                state.update({f"norm.{k}": v.detach().clone() for k, v in bank.norm.state_dict().items()})
                best[g] = (val_accs[g], epoch, state)
            elif patience is not None and epoch - best[g][1] >= patience:
                active[g] = False
        if val is not None:
            progress.set_postfix(val=f"{max(b[0] for b in best):.4f}")
        if not any(active):
            break
    progress.close()
    for head, (_, _, state) in zip(heads, best):
        head.load_state_dict(state)
    # each head through its own statistics (a BatchNorm head's are those of its own best epoch)
    finals = gradient_norms(HeadBank(heads, own_norms=True).to(device), groups, x_train, y_train)
    return [FitResult(head=head.eval(), best_epoch=best_epoch, val_acc=val_acc, history=history,
                      convergence={"initial_gradient_norm": start, "gradient_norm": final})
            for head, history, (val_acc, best_epoch, _), start, final in zip(heads, histories, best, initial, finals)]


def fit_head(kind: str, train, val, num_classes: int, *, lr: float, weight_decay: float, **options) -> FitResult:
    """``fit_heads`` for one setting."""
    return fit_heads(kind, train, val, num_classes, settings=[(lr, weight_decay)], **options)[0]
