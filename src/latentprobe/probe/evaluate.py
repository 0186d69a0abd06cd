"""``latentprobe evaluate``: every probe over every representation of a run, on cached features.

Representations: the run's trained encoder and the baselines (the same encoder with its
untrained initial weights, PCA of the pixels to the latent size, raw pixels). Probes: the
study's linear head, the linear head after BatchNorm (MAE's protocol), an MLP with one hidden
layer, and weighted cosine kNN.

Protocol, for each trained probe: every (lr, weight decay) of the grid is trained with seed 0
for at most ``epochs`` epochs, keeping the epoch of best validation accuracy (training stops
after ``patience`` epochs without improvement). The grid point with the best validation
accuracy is then trained with seeds 0 … N-1 (seed 0 is the grid run itself), and each seed's
head reads the test set once. kNN has no training and no randomness; it is run once per k.

Results go to RUN/eval.json (eval_coarse.json for CIFAR-100's coarse labels), written after
every representation so an interrupted evaluation continues where it stopped. The better of
the two seed-0 linear heads on the encoder is saved as RUN/classifier.pt for ``predict``.
"""

import datetime
import itertools
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from latentprobe import config as configuration
from latentprobe.checkpoint import CLASSIFIER, save_checkpoint, weights_digest
from latentprobe.distributed import local_device
from latentprobe.metrics import confusion_matrix, mean_std
from latentprobe.options import EvalConfig
from latentprobe.probe.features import (
    FeatureSet,
    layer_names,
    pixel_features,
    representation_features,
)
from latentprobe.probe.heads import fit_heads, predict
from latentprobe.probe.knn import knn_predict
from latentprobe.runs import SCHEMA, Run, write_json


def _summary(values: list[float]) -> dict:
    return dict(zip(("mean", "std", "n"), mean_std(values)))


def _fit(kind: str, train, val, num_classes: int, cfg: EvalConfig, *, settings: list[tuple[float, float]],
         seed: int, device) -> list:
    """``fit_heads`` under the protocol's options, printing each head's outcome as it ends."""
    started = time.perf_counter()
    fits = fit_heads(kind, train, val, num_classes, settings=settings, epochs=cfg.probe_epochs,
                     batch_size=cfg.probe_batch_size, seed=seed, patience=cfg.probe_patience, hidden=cfg.mlp_hidden,
                     schedule=cfg.probe_schedule, device=device,
                     desc=f"{kind} seed {seed}")
    for fit, (lr, weight_decay) in zip(fits, settings):
        print(f"  {kind} lr {lr:g} weight decay {weight_decay:g} seed {seed}: validation {100 * fit.val_acc:.2f}% "
              f"(epoch {fit.best_epoch}), {time.perf_counter() - started:.0f} s", flush=True)
    return fits


def trained_probe(kind: str, train, val, test, num_classes: int, cfg: EvalConfig, device) -> tuple[dict, tuple]:
    """The grid on validation (seed 0, every setting in one pass over the features), then every
    seed at the chosen point reads the test set once. Returns the record and (seed-0 head, chosen setting)."""
    settings = list(itertools.product(cfg.probe_lrs, cfg.probe_weight_decays))
    fits = _fit(kind, train, val, num_classes, cfg, settings=settings, seed=0, device=device)
    grid = [{"lr": lr, "weight_decay": weight_decay, "best_epoch": fit.best_epoch, "val_acc": fit.val_acc}
            for fit, (lr, weight_decay) in zip(fits, settings)]
    chosen_fit, chosen = max(zip(fits, grid), key=lambda item: item[1]["val_acc"])  # first of equals wins
    seeds = []
    for seed in range(cfg.probe_seeds):
        fit = chosen_fit if seed == 0 else _fit(kind, train, val, num_classes, cfg, seed=seed, device=device,
                                                settings=[(chosen["lr"], chosen["weight_decay"])])[0]
        predictions = predict(fit.head, test[0]).cpu()  # the one reading of the test set
        seeds.append({"seed": seed, "best_epoch": fit.best_epoch, "val_acc": fit.val_acc,
                      "test_acc": (predictions == test[1]).float().mean().item()})
        if seed == 0:
            confusion = confusion_matrix(test[1], predictions, num_classes)
    record = {"grid": grid, "chosen": {k: chosen[k] for k in ("lr", "weight_decay")},
              "seeds": seeds, "test": _summary([s["test_acc"] for s in seeds]), "confusion": confusion.tolist()}
    return record, (chosen_fit.head.cpu(), chosen)


def knn_probes(train, val, test, num_classes: int, cfg: EvalConfig) -> dict:
    """One record per k; no seeds: kNN has neither training nor randomness."""
    args = dict(num_classes=num_classes, ks=tuple(cfg.knn_k), temperature=cfg.knn_temperature)
    on_val, on_test = knn_predict(*train, val[0], **args), knn_predict(*train, test[0], **args)
    records = {}
    for k in cfg.knn_k:
        test_acc = (on_test[k] == test[1]).float().mean().item()
        records[f"knn_{k}"] = {"k": k, "temperature": cfg.knn_temperature, "deterministic": True,
                               "seeds": [{"val_acc": (on_val[k] == val[1].cpu()).float().mean().item(),
                                          "test_acc": test_acc}],
                               "test": _summary([test_acc]),
                               "confusion": confusion_matrix(test[1], on_test[k], num_classes).tolist()}
    return records


def evaluate_features(data: FeatureSet, cfg: EvalConfig, device: torch.device) -> tuple[dict, dict]:
    """All probes of ``cfg`` over one FeatureSet: (record for eval.json, seed-0 heads by probe)."""
    data = data.to(device)  # features stay on the device for every probe below
    train = (data.features["train"], data.labels["train"])
    val = (data.features["val"], data.labels["val"])
    test = (data.features["test"], data.labels["test"].cpu())
    num_classes = len(data.class_names)
    probes, heads = {}, {}
    for kind in (p for p in cfg.probes if p != "knn"):
        probes[kind], heads[kind] = trained_probe(kind, train, val, test, num_classes, cfg, device)
    if "knn" in cfg.probes:
        probes.update(knn_probes(train, val, test, num_classes, cfg))
    sizes = {split: len(labels) for split, labels in data.labels.items()}
    return {"latent_dim": data.dim, "sizes": sizes, "probes": probes}, heads


def _encoder_params(model) -> int:
    """Parameters that ``encode`` uses: those that get a gradient from one tiny forward pass."""
    model.zero_grad(set_to_none=True)
    size = getattr(model, "config", {}).get("image_size") or getattr(model, "config", {}).get("img_size", 32)
    with torch.enable_grad():
        model.encode(torch.zeros(2, 3, size, size, device=next(model.parameters()).device)).sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def run_info(run: Run, device, pool: str | None = None) -> dict:
    """What a result needs to say about the run it came from: model, sizes, the probed epoch and
    its reconstruction, the weights' digest, training time."""
    model = run.model(device, pool)
    history = run.metrics()
    probed = next((h for h in history if h.get("epoch") == run.probed_epoch), history[-1] if history else {})
    return {"run": str(run.path), "model_name": run.model_name, "latent_dim": model.latent_dim,
            "params": sum(p.numel() for p in model.parameters()), "encoder_params": _encoder_params(model),
            "train_config": run.train_config, "model_config": run.checkpoint["model_config"],
            "pool": getattr(model, "pool", None), "weights": weights_digest(model),
            "epochs_trained": run.checkpoint["epoch"], "probed_epoch": run.probed_epoch,
            "val_mse": probed.get("val_mse"), "val_psnr": probed.get("val_psnr"),
            "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history)}


def _save_classifier(run: Run, heads: dict, record: dict, class_names: list[str], cfg: EvalConfig,
                     pool: str | None, weights: str) -> None:
    """The better (by validation accuracy) of the two seed-0 linear heads on the encoder."""
    linear = [kind for kind in ("bn_linear", "linear") if kind in heads]
    if not linear:
        return
    kind = max(linear, key=lambda k: record["probes"][k]["seeds"][0]["val_acc"])
    head, chosen = heads[kind]
    save_checkpoint(run.classifier_file(cfg.label_type), kind=CLASSIFIER, head=kind,
                    in_dim=record["latent_dim"], num_classes=len(class_names), hidden=cfg.mlp_hidden,
                    state_dict=head.state_dict(), class_names=class_names, label_type=cfg.label_type, pool=pool,
                    lr=chosen["lr"], weight_decay=chosen["weight_decay"], weights=weights,
                    val_acc=record["probes"][kind]["seeds"][0]["val_acc"],
                    test_acc=record["probes"][kind]["seeds"][0]["test_acc"])
    record["classifier"] = kind


@contextmanager
def cpu_threads(count: int | None):
    """Run with ``count`` torch CPU threads (None: leave as is), restoring the number after.

    Why: the probes take many small steps; on a shared CPU, two threads that wait on each other
    while other jobs hold the cores were up to 20x slower than one (measured, 2-core machine)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_run(run: Run | Path | str, cfg: EvalConfig) -> dict:
    """Evaluate (or continue evaluating) one run; returns the eval.json record."""
    run = cfg.run(run)
    with cpu_threads(cfg.threads), run.exclusive():
        return _evaluate_run(run, cfg)


def _evaluate_run(run: Run, cfg: EvalConfig) -> dict:
    device = local_device(cfg.device)
    run_dir = run.path
    print(f"{run_dir}: evaluating with {cfg.protocol()} on {device}", flush=True)
    path = run.eval_file(cfg.label_type)
    info = run_info(run, device, cfg.pool)
    if not info["train_config"].get("val_size"):
        raise ValueError(f"{run_dir} was trained with val_size 0; the probes need a validation split "
                         f"to choose their settings (train with --val-size > 0)")
    previous = run.read_result(path) if path.exists() else {}
    # results are reused only for the same protocol on the same weights and images
    same = all(previous.get(k) == v for k, v in (("protocol", cfg.protocol()), ("weights", info["weights"]),
                                                  ("train_config", info["train_config"])))
    done = previous.get("representations", {}) if same else {}
    record = {"schema": SCHEMA, **info, "label_type": cfg.label_type, "protocol": cfg.protocol(), "device": str(device),
              "host": f"{platform.node()} ({platform.machine()}, torch threads: {torch.get_num_threads()})",
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": configuration.command_line(),
              "git_sha": configuration.git_sha(), "class_names": previous.get("class_names"),
              "representations": done}
    pixels = None
    for name in ["encoder", *layer_names(run, cfg.layers, cfg.pool), *cfg.baselines]:
        if name in done:
            print(f"{run_dir}: {name} already evaluated under this protocol", flush=True)
            continue
        started, cpu_started = time.perf_counter(), time.process_time()
        if name in ("pca", "pixels") and pixels is None:  # one pixel FeatureSet serves both
            pixels = pixel_features(run.splits(cfg.label_type), device, cfg.flip_train)
        data = representation_features(run, name, device, cfg.label_type, pixels=pixels, pool=cfg.pool,
                                       flip_train=cfg.flip_train)
        result, heads = evaluate_features(data, cfg, device)
        # wall and CPU (all threads) seconds: on a shared machine the two tell different stories
        result["seconds"], result["cpu_seconds"] = time.perf_counter() - started, time.process_time() - cpu_started
        result["date"] = datetime.datetime.now().isoformat(timespec="seconds")  # when these probes ran
        record["class_names"] = data.class_names
        if name == "encoder":
            _save_classifier(run, heads, result, data.class_names, cfg, info["pool"], info["weights"])
        record["representations"][name] = result
        write_json(path, record)
        print(f"{run_dir}: {name} ({result['latent_dim']}-d, {result['seconds']:.0f} s): " + ", ".join(
            f"{probe} {100 * r['test']['mean']:.2f}±{100 * r['test']['std']:.2f}"
            for probe, r in result["probes"].items()), flush=True)
    write_json(path, record)
    return record


def load_eval(run: Run | Path | str, label_type: str = "fine") -> dict:
    run = Run.of(run)
    path = run.eval_file(label_type)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `latentprobe evaluate {run.path}"
                                f"{'' if label_type == 'fine' else ' --label-type ' + label_type}` first")
    return run.read_result(path)
