"""``latentprobe finetune RUN``: a classifier on a pretrained encoder, trained end to end.

The encoder of RUN's checkpoint (an MAE, or a conv autoencoder) gets a Linear head on its
pooled latent. Unfrozen (the default) the whole encoder trains with AdamW, layer-wise lr decay
(``layer_decay ** (depth + 1 - layer)`` for models that define ``layer_id``), label smoothing,
drop-path, and random crop + flip done on the device per batch. ``freeze_encoder=true`` trains
the head alone on the frozen encoder, in eval mode (an online linear probe).

The epoch is chosen on the run's validation split; that epoch's weights then read the test set,
once, after training.
Outputs: OUT/config.yaml, OUT/checkpoint.pt (kind "classifier", atomic, resumable),
OUT/metrics.jsonl, and RUN/finetune.json (read by the comparison report and mae-report;
RUN/finetune_frozen.json for a frozen encoder).
Runs unchanged under torchrun (DDP), like ``latentprobe train``.
"""

import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentprobe import config as configuration
from latentprobe.checkpoint import (
    CLASSIFIER,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from latentprobe.data.cifar import Normalizer, batch_indices, take
from latentprobe.distributed import (
    barrier,
    init_distributed,
    is_main_process,
    local_device,
    mean_across_ranks,
)
from latentprobe.metrics import confusion_matrix, precision_recall
from latentprobe.models import create_model
from latentprobe.options import FinetuneConfig
from latentprobe.runs import (
    CHECKPOINT,
    METRICS,
    Run,
    append_jsonl,
    write_json,
    write_jsonl,
)
from latentprobe.training.engine import (
    autocast,
    explained_divergence,
    lr_at,
    parallel_objective,
    param_groups,
    resume,
    seed_epoch,
    train_one_epoch,
)


class Classifier(nn.Module):
    """encoder → pooled latent (B, D) → Linear → logits (B, C)."""

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str | None):
        super().__init__()
        self.encoder = encoder
        self.pool = pool
        self.frozen = False  # set by freeze_encoder: the encoder stays in eval mode
        self.head = nn.Linear(encoder.latent_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)  # small logits at the start
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.encoder.encode(images) if self.pool is None else self.encoder.encode(images, pool=self.pool)
        return self.head(latent.float())

    # what engine.param_groups reads: the encoder's exemptions from weight decay, and its depth
    # for layer-wise lr decay (ViT encoders; the head sits above the last block)
    def no_weight_decay(self) -> set[str]:
        inner = self.encoder.no_weight_decay() if hasattr(self.encoder, "no_weight_decay") else ()
        return {f"encoder.{name}" for name in inner}

    @property
    def depth(self) -> int:
        return self.encoder.depth if hasattr(self.encoder, "layer_id") else -1

    def layer_id(self, name: str) -> int:
        inner = name.removeprefix("encoder.")
        return self.encoder.layer_id(inner) if inner != name else self.depth + 1

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder keeps eval behaviour (no drop-path, fixed BatchNorm)
        return self


class ClassificationObjective(nn.Module):
    """``forward(images, labels) -> (loss, logits)``: label-smoothed cross-entropy, the training
    objective that ``engine.train_one_epoch`` steps."""

    def __init__(self, classifier: Classifier, label_smoothing: float):
        super().__init__()
        self.classifier, self.label_smoothing = classifier, label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        logits = self.classifier(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing), logits


def build_classifier(run: Run, num_classes: int, cfg: FinetuneConfig) -> Classifier:
    """The run's encoder with its pretrained weights, plus a fresh head."""
    model_config = run.model_config(cfg.pool)  # refuses --pool for a conv encoder
    is_vit = "pool" in model_config
    if is_vit:
        model_config["drop_path_rate"] = cfg.drop_path  # DropPath has no weights: state dict unchanged
    encoder = create_model(run.model_name, **model_config)
    # the weights the probes read too: the best validation epoch where the run recorded one
    encoder.load_state_dict(run.checkpoint.get("best_model", run.checkpoint["model"]))
    pool = model_config["pool"] if is_vit else None
    return Classifier(encoder, num_classes, pool)


def freeze_unused(classifier: Classifier, image_shape: tuple[int, ...]) -> list[str]:
    """Freeze what the classifier never reaches (the decoder), found by one backward pass rather
    than by parameter names, so no layer is missed; returns the encoder's trained names."""
    classifier.zero_grad(set_to_none=True)
    classifier.eval()
    classifier(torch.zeros(2, *image_shape, device=classifier.head.weight.device)).sum().backward()
    used = []
    for name, param in classifier.encoder.named_parameters():
        if param.grad is None:
            param.requires_grad_(False)
        else:
            used.append(name)
    classifier.zero_grad(set_to_none=True)
    return used


@torch.no_grad()
def predict(classifier: nn.Module, images: torch.Tensor, normalizer: Normalizer, batch_size: int = 500):
    classifier.eval()
    outputs = []
    for index in batch_indices(len(images), batch_size, shuffle=False, device=images.device):
        with autocast(images.device):
            outputs.append(classifier(normalizer(images[index])).argmax(1))
    return torch.cat(outputs)


def _resume(out: Path, cfg: FinetuneConfig, run: Run, classifier, optimizer):
    if not (out / CHECKPOINT).exists():
        return 0, [], None
    checkpoint = load_checkpoint(out / CHECKPOINT, kind=CLASSIFIER)
    if checkpoint.get("source_weights", run.weights) != run.weights:  # older: no digest
        raise CheckpointError(f"{out} fine-tunes other pretrained weights than {run.checkpoint_file} holds now (the "
                              f"run was trained again or further); delete {out} or give another --out")
    if "model" not in checkpoint["best"]:
        raise CheckpointError(f"{out} was written before fine-tuning kept its chosen epoch's weights (to read the "
                              f"test set once, after training); delete it or use another --out to fine-tune again")
    other_source = ("source run",) if checkpoint.get("source_run") != str(run.path.resolve()) else ()
    epoch, history = resume(out, checkpoint, cfg, checkpoint["finetune_config"], classifier, optimizer,
                            also_changed=other_source)
    return epoch, history, checkpoint["best"]


def finetune(run: Run | Path | str, cfg: FinetuneConfig) -> dict:
    """Fine-tune (or continue fine-tuning) a classifier on RUN's encoder; returns the summary."""
    run = Run.of(run, cfg.data_dir, cfg.download)
    out = Path(cfg.out) if cfg.out else run.finetune_dir(cfg.freeze_encoder)
    writer = run.exclusive() if os.environ.get("RANK", "0") == "0" else nullcontext()  # rank 0 writes
    with explained_divergence(out, "--base-lr"), writer:
        return _finetune(run, cfg, out)


def _finetune(run: Run, cfg: FinetuneConfig, out: Path) -> dict:
    device = local_device(cfg.device)
    rank, world_size = init_distributed(device)
    source = run.checkpoint
    splits = run.splits()
    splits["train"] = take(splits["train"], cfg.subset, seed=cfg.seed)
    splits = {name: split.to(device) for name, split in splits.items()}
    class_names = splits["train"].class_names
    torch.manual_seed(cfg.seed)
    classifier = build_classifier(run, len(class_names), cfg).to(device)
    encoder_names = freeze_unused(classifier, tuple(splits["train"].images.shape[1:]))
    if cfg.freeze_encoder:
        classifier.encoder.requires_grad_(False)
        classifier.frozen = True
    effective_batch = cfg.batch_size * world_size
    peak_lr = cfg.base_lr * effective_batch / 256
    groups = param_groups(classifier, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.999),
                                  fused=device.type == "cuda")
    start_epoch, history, best = _resume(out, cfg, run, classifier, optimizer)
    main = is_main_process()
    if main:
        configuration.save_resolved(cfg, out)
        write_jsonl(out / METRICS, history)
    objective = parallel_objective(ClassificationObjective(classifier, cfg.label_smoothing), world_size,
                                   cfg.compile_mode if cfg.compile else None)
    normalizer = Normalizer(source["train_config"]["dataset"], device)
    steps_per_epoch = -(-(len(splits["train"]) // world_size) // cfg.batch_size)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    print(f"fine-tuning {source['model_name']} ({len(encoder_names)} encoder tensors "
          f"{'frozen' if cfg.freeze_encoder else 'trained'}, pool {classifier.pool or 'latent'}) on "
          f"{len(splits['train'])} images, lr {peak_lr:.2e}" + (f", {world_size} ranks" if world_size > 1 else ""))

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        generator = seed_epoch(cfg.seed, epoch)  # drop-path, batch order, crops: the same on resume
        stats = train_one_epoch(objective, optimizer, splits["train"].images, normalizer, batch_size=cfg.batch_size,
                                labels=splits["train"].labels, augment_batches=cfg.augment, generator=generator,
                                lr_fn=lambda s: lr_at(s, total_steps, warmup_steps, peak_lr, "cosine"),
                                first_step=(epoch - 1) * steps_per_epoch, rank=rank, world_size=world_size,
                                desc=f"fine-tune epoch {epoch}")
        stats = mean_across_ranks(stats, device)
        val_predictions = predict(classifier, splits["val"].images, normalizer)
        record = {"epoch": epoch, **stats, "val_acc": (val_predictions == splits["val"].labels).float().mean().item()}
        history.append(record)
        if best is None or record["val_acc"] > best["val_acc"]:  # the test set waits for the choice
            best = {"epoch": epoch, "val_acc": record["val_acc"],
                    "model": {k: v.detach().clone() for k, v in classifier.state_dict().items()}}
        if main:
            save_checkpoint(out / CHECKPOINT, kind=CLASSIFIER, model_name=source["model_name"],
                            model_config=source["model_config"], finetune_config=configuration.to_dict(cfg),
                            source_run=str(run.path.resolve()), source_weights=run.weights,
                            model=classifier.state_dict(),
                            optimizer=optimizer.state_dict(), epoch=epoch, history=history, best=best)
            append_jsonl(out / METRICS, record)
            print(f"epoch {epoch}/{cfg.epochs}  loss {record['train_loss']:.4f}  train {record['train_acc']:.4f}  "
                  f"val {record['val_acc']:.4f}  {record['images_per_s']:.0f} img/s", flush=True)
        barrier()

    classifier.load_state_dict(best["model"])  # the epoch chosen on validation reads the test set, once
    test_predictions = predict(classifier, splits["test"].images, normalizer)
    test_acc = (test_predictions == splits["test"].labels).float().mean().item()
    confusion = confusion_matrix(splits["test"].labels, test_predictions, len(class_names))
    precision, recall = precision_recall(confusion)
    summary = {"val_acc": best["val_acc"], "test_acc": test_acc, "best_epoch": best["epoch"],
               "mode": "frozen" if cfg.freeze_encoder else "fine-tuned", "pool": classifier.pool,
               "latent_dim": classifier.encoder.latent_dim, "model_name": source["model_name"],
               "pretrain_epoch": run.probed_epoch, "source_weights": run.weights,
               "history": history, "confusion": confusion.tolist(), "precision": precision.tolist(),
               "recall": recall.tolist(), "class_names": class_names,
               "finetune_config": configuration.to_dict(cfg), "device": str(device), "world_size": world_size}
    if main:
        write_json(run.finetune_file(cfg.freeze_encoder), summary)
        print(f"{run.path}: {summary['mode']} classifier, validation accuracy {best['val_acc']:.4f}, "
              f"test accuracy {test_acc:.4f} (epoch {best['epoch']})")
    return summary
