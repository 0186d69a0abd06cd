"""``latentprobe evaluate``: every probe over every representation of a run, on cached features.

Representations: the run's trained encoder and the baselines (the same encoder with its
untrained initial weights, the 2011 k-means reference for patch models, PCA of the pixels to the
latent size, raw pixels). Probes: the study's linear head, the linear head after BatchNorm (MAE's
protocol), logistic regression on standardised features (trained to convergence), the BatchNorm
linear head of low rank across a pooled latent's codes, an MLP with one hidden layer, and weighted
cosine kNN.

Protocol, for each trained probe: every (lr, weight decay) of the grid is trained with seed 0
for at most ``probe_epochs`` epochs, all in one pass over the features per epoch, each keeping
the epoch of its best validation accuracy (stopping after ``probe_patience`` epochs without
improvement). The grid point with the best validation accuracy is then trained with seeds 0 …
N-1 (seed 0 is the grid run itself), and each seed's probe reads the test set once. With
``refit`` each seed instead trains on the training and validation images together, for the
chosen setting's epochs, before its one reading of the test set. kNN has no training and no
randomness; it is run once per k.

Results go to RUN/eval.json (eval_coarse.json for CIFAR-100's coarse labels), written after
every representation. Each probe's result carries its ``protocol`` (the options that decide its
numbers): a later call reuses a result whose protocol is asked for again, computes what is
missing, and keeps what it was not asked about, so ``latentprobe probe`` (one probe, one
setting, one seed) and a full evaluation share one file. The best linear probe on the encoder
(by validation accuracy) is saved as RUN/classifier.pt for ``predict``.
"""

import datetime
import itertools
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from latentprobe import config as configuration
from latentprobe.checkpoint import CLASSIFIER, save_checkpoint, weights_digest
from latentprobe.distributed import local_device, machine
from latentprobe.metrics import confusion_matrix, fmt, mean_std
from latentprobe.options import PROBE_OPTIONS, EvalConfig, check_run_options
from latentprobe.probe.features import (
    FeatureSet,
    layer_names,
    pixel_features,
    representation_features,
)
from latentprobe.probe.heads import LOGISTIC_TOLERANCE, fit_heads, predict
from latentprobe.probe.knn import knn_predict
from latentprobe.probe.store import ConcatRows
from latentprobe.runs import SCHEMA, EncoderRun, Run, check_eval, write_json

LINEAR_PROBES = ("bn_linear", "logistic", "low_rank", "linear")  # the kinds a classifier.pt can hold


def probe_names(cfg: EvalConfig) -> list[str]:
    """The result names ``cfg`` asks for: each trained probe, and ``knn_K`` for every k."""
    return [p for p in cfg.probes if p != "knn"] + ([f"knn_{k}" for k in cfg.knn_k] if "knn" in cfg.probes else [])


def probe_protocol(cfg: EvalConfig, probe: str) -> dict:
    """The options that decide the numbers of ``probe`` (a saved result is reused only under them)."""
    if probe.startswith("knn_"):
        return {"k": int(probe.split("_")[1]), "knn_temperature": cfg.knn_temperature, "flip_train": cfg.flip_train}
    protocol = {name: getattr(cfg, name) for name in PROBE_OPTIONS}
    if probe == "logistic":  # solved by L-BFGS (results without "solver" were trained by Adam): no lr, batch, seed
        solved = ("probe_weight_decays", "probe_epochs", "flip_train", "refit")
        return {**{name: protocol[name] for name in solved}, "solver": "lbfgs", "tolerance": LOGISTIC_TOLERANCE}
    shape = {"mlp": {"mlp_hidden": cfg.mlp_hidden}, "low_rank": {"probe_rank": cfg.probe_rank}}
    return {**protocol, **shape.get(probe, {})}


def _summary(values: list[float]) -> dict:
    return dict(zip(("mean", "std", "n"), mean_std(values)))


def _fit(kind: str, train, val, num_classes: int, cfg: EvalConfig, *, settings: list[tuple[float, float]],
         seed: int, device, epochs: int | None = None, start=None, regions: int = 1) -> list:
    """``fit_heads`` under the protocol's options, printing each head's outcome as it ends (``val``
    None: a refit for ``epochs``, the last kept); ``regions``: the latent's values per code."""
    started = time.perf_counter()
    fits = fit_heads(kind, train, val, num_classes, settings=settings, epochs=epochs or cfg.probe_epochs,
                     batch_size=cfg.probe_batch_size, seed=seed,
                     patience=cfg.probe_patience if val is not None else None, hidden=cfg.mlp_hidden,
                     schedule=cfg.probe_schedule, device=device, desc=f"{kind} seed {seed}", start=start,
                     rank=cfg.probe_rank, regions=regions)
    for fit, (lr, weight_decay) in zip(fits, settings):
        unit = "pass" if kind == "logistic" else "epoch"  # the logistic probe is solved, in passes over the features
        outcome = (f"validation {100 * fit.val_acc:.2f}% ({unit} {fit.best_epoch})" if val is not None
                   else f"refit on training + validation, {fit.best_epoch} {unit}{'es' if unit == 'pass' else 's'}")
        setting = f"weight decay {weight_decay:g}" if kind == "logistic" else \
            f"lr {lr:g} weight decay {weight_decay:g} seed {seed}"
        print(f"  {kind} {setting}: {outcome}, gradient norm "
              f"{fit.convergence['gradient_norm']:.3g} (from {fit.convergence['initial_gradient_norm']:.3g}), "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return fits


def trained_probe(kind: str, train, val, test, num_classes: int, cfg: EvalConfig, device,
                  regions: int = 1) -> tuple[dict, tuple]:
    """The grid on validation (seed 0, every setting in one pass over the features), then every
    seed at the chosen point (refit on training + validation with ``cfg.refit``) reads the test
    set once. Returns the record and (seed-0 probe, chosen setting). ``regions``: the latent's
    values per code (the low_rank probe's layout)."""
    started = time.perf_counter()
    solved = kind == "logistic"  # solved, not trained: no learning rate, and its optimum takes no seed
    settings = [(None, weight_decay) for weight_decay in cfg.probe_weight_decays] if solved else \
        list(itertools.product(cfg.probe_lrs, cfg.probe_weight_decays))
    fits = _fit(kind, train, val, num_classes, cfg, settings=settings, seed=0, device=device, regions=regions)
    grid = [{"lr": lr, "weight_decay": weight_decay, "best_epoch": fit.best_epoch, "val_acc": fit.val_acc}
            for fit, (lr, weight_decay) in zip(fits, settings)]
    chosen_fit, chosen = max(zip(fits, grid), key=lambda item: item[1]["val_acc"])  # first of equals wins
    point = [(chosen["lr"], chosen["weight_decay"])]
    both = (ConcatRows(train[0], val[0]), torch.cat([train[1], val[1].to(train[1].device)]))
    seeds, first = [], None
    for seed in range(1 if solved else cfg.probe_seeds):
        if cfg.refit:  # the choice made, the validation images join the training ones
            fit = _fit(kind, both, None, num_classes, cfg, settings=point, seed=seed, device=device,
                       epochs=None if solved else chosen["best_epoch"], start=chosen_fit.head if solved else None,
                       regions=regions)[0]
        else:
            fit = chosen_fit if seed == 0 else _fit(kind, train, val, num_classes, cfg, settings=point, seed=seed,
                                                    device=device, regions=regions)[0]
        predictions = predict(fit.head, test[0]).cpu()  # the one reading of the test set
        seeds.append({"seed": seed, "best_epoch": fit.best_epoch, "val_acc": fit.val_acc,
                      "test_acc": (predictions == test[1]).float().mean().item(), "convergence": fit.convergence,
                      **({"history": fit.history} if seed == 0 else {})})
        if seed == 0:
            first, confusion = fit, confusion_matrix(test[1], predictions, num_classes)
    record = {"protocol": probe_protocol(cfg, kind), "sizes": _sizes(train, val, test), "grid": grid,
              "chosen": chosen, **({"deterministic": True} if solved else {}),
              "seeds": seeds, "test": _summary([s["test_acc"] for s in seeds]), "confusion": confusion.tolist(),
              "seconds": time.perf_counter() - started}
    return record, (first.head.cpu(), chosen)


def _sizes(train, val, test) -> dict:
    return {"train": len(train[1]), "val": len(val[1]), "test": len(test[1])}


def knn_probes(train, val, test, num_classes: int, cfg: EvalConfig, ks: list[int]) -> dict:
    """One record per k; no seeds: kNN has neither training nor randomness."""
    started = time.perf_counter()
    args = dict(num_classes=num_classes, ks=tuple(ks), temperature=cfg.knn_temperature)
    on_val, on_test = knn_predict(*train, val[0], **args), knn_predict(*train, test[0], **args)
    records = {}
    for k in ks:
        test_acc = (on_test[k] == test[1]).float().mean().item()
        records[f"knn_{k}"] = {"protocol": probe_protocol(cfg, f"knn_{k}"), "sizes": _sizes(train, val, test),
                               "deterministic": True,
                               "seeds": [{"val_acc": (on_val[k] == val[1].cpu()).float().mean().item(),
                                          "test_acc": test_acc}],
                               "test": _summary([test_acc]),
                               "confusion": confusion_matrix(test[1], on_test[k], num_classes).tolist(),
                               "seconds": time.perf_counter() - started}
    return records


def evaluate_features(data: FeatureSet, cfg: EvalConfig, device: torch.device,
                      probes: list[str] | None = None) -> tuple[dict, dict]:
    """The ``probes`` (result names; default: all of ``cfg``'s) over one FeatureSet: (their records,
    seed-0 probes and chosen settings by kind)."""
    probes = probe_names(cfg) if probes is None else probes
    data = data.to(device)  # in-memory features stay on the device for every probe below
    train = (data.features["train"], data.labels["train"])
    val = (data.features["val"], data.labels["val"])
    test = (data.features["test"], data.labels["test"].cpu())
    num_classes = len(data.class_names)
    records, heads = {}, {}
    for kind in (p for p in probes if not p.startswith("knn_")):
        records[kind], heads[kind] = trained_probe(kind, train, val, test, num_classes, cfg, device, data.regions)
    ks = [int(p.split("_")[1]) for p in probes if p.startswith("knn_")]
    if ks:
        records.update(knn_probes(train, val, test, num_classes, cfg, ks))
    return records, heads


def _encoder_params(model) -> int:
    """Parameters that ``encode`` uses: those that get a gradient from one tiny forward pass."""
    model.zero_grad(set_to_none=True)
    size = getattr(model, "config", {}).get("image_size") or getattr(model, "config", {}).get("img_size", 32)
    with torch.enable_grad():
        latent = model.encode(torch.zeros(2, 3, size, size, device=next(model.parameters()).device))
        if latent.requires_grad:  # else its latent depends on no parameter at all
            latent.sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def run_info(run: Run, device, pool: str | None = None) -> dict:
    """What a result needs to say about the run it came from: model, sizes, the probed epoch and
    its reconstruction, the weights' digest, training time (the steps alone, and the epochs' wall
    time with validation and pictures where the run recorded it) and the hardware."""
    model = run.model(device, pool)
    history = run.metrics()
    probed = next((h for h in history if h.get("epoch") == run.probed_epoch), history[-1] if history else {})
    wall = [h.get("epoch_wall_seconds") for h in history]
    return {"model_name": run.model_name, "latent_dim": model.latent_dim,
            "params": sum(p.numel() for p in model.parameters()), "encoder_params": _encoder_params(model),
            "train_config": run.train_config, "model_config": run.checkpoint["model_config"],
            "pool": getattr(model, "pool", None), "weights": weights_digest(model),
            "epochs_trained": run.checkpoint["epoch"], "probed_epoch": run.probed_epoch,
            "val_mse": probed.get("val_mse"), "val_psnr": probed.get("val_psnr"),
            "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history) if history else None,
            "train_wall_seconds": sum(wall) if wall and None not in wall else None,
            "trained_on": next((h["machine"] for h in reversed(history) if "machine" in h), None)}


def _save_classifier(run: Run, heads: dict, records: dict, class_names: list[str], cfg: EvalConfig,
                     pool: str | None, weights: str) -> str | None:
    """The best (by validation accuracy at the chosen setting) of the seed-0 linear probes just
    trained on the encoder, as RUN/classifier.pt; returns its kind."""
    linear = [kind for kind in LINEAR_PROBES if kind in heads]
    if not linear:
        return None
    kind = max(linear, key=lambda k: records[k]["chosen"]["val_acc"])
    head, chosen = heads[kind]
    saved_as = "bn_linear" if kind == "low_rank" else kind  # the BN + linear head it folds into
    save_checkpoint(run.classifier_file(cfg.label_type), kind=CLASSIFIER, head=saved_as,
                    in_dim=head.linear.in_features, num_classes=len(class_names), hidden=cfg.mlp_hidden,
                    state_dict=head.folded_state(), class_names=class_names, label_type=cfg.label_type, pool=pool,
                    lr=chosen["lr"], weight_decay=chosen["weight_decay"], weights=weights,
                    val_acc=chosen["val_acc"], test_acc=records[kind]["seeds"][0]["test_acc"])
    return kind


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
    run = Run.of(run, cfg.data_dir, cfg.download)
    if not isinstance(run, EncoderRun):
        check_run_options(cfg)
    with cpu_threads(cfg.threads), run.exclusive():
        return _evaluate_run(run, cfg)


def _evaluate_run(run: Run, cfg: EvalConfig) -> dict:
    device = local_device(cfg.device)
    path = run.eval_file(cfg.label_type)
    info = run_info(run, device, cfg.pool)
    if not info["train_config"].get("val_size"):
        raise ValueError(f"{run.path} was trained with val_size 0; the probes need a validation split "
                         f"to choose their settings (train with --val-size > 0)")
    if cfg.flip_train and info["model_config"].get("flip_invariant"):
        raise ValueError(f"{run.path} has a flip-invariant latent (an image and its mirror image give the same), so "
                         f"--flip-train would only repeat every training row; leave it off")
    print(f"{run.path}: evaluating {', '.join(probe_names(cfg))} on {device}", flush=True)
    previous = check_eval(run.read_result(path), path) if path.exists() else {}
    # results are kept only for the same weights, images, labels and pooling
    identity = ("weights", "train_config", "pool")
    data = run.data_identity()
    if note := run.data_note():  # the run was trained on other bytes
        print(note, flush=True)
    same = all(previous.get(k) == info[k] for k in identity) and previous.get("label_type") == cfg.label_type \
        and previous.get("data", data) == data  # files of older results carry no data identity
    record = {"schema": SCHEMA, **info, "data": data, "label_type": cfg.label_type, "machine": machine(device),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": configuration.command_line(),
              "git_sha": configuration.git_sha(), "class_names": previous.get("class_names") if same else None,
              "representations": previous.get("representations", {}) if same else {}}
    pixels = None
    for name in ["encoder", *layer_names(run, cfg.layers, cfg.pool), *cfg.baselines]:
        done = record["representations"].get(name, {"probes": {}})
        missing = [p for p in probe_names(cfg) if done["probes"].get(p, {}).get("protocol") != probe_protocol(cfg, p)]
        if not missing:
            print(f"{run.path}: {name} already evaluated under this protocol", flush=True)
            continue
        started = time.perf_counter()
        if name in ("pca", "pixels") and pixels is None:  # one pixel FeatureSet serves both
            pixels = pixel_features(run.splits(cfg.label_type), device, cfg.flip_train)
        data = representation_features(run, name, device, cfg.label_type, pixels=pixels, pool=cfg.pool,
                                       flip_train=cfg.flip_train)
        records, heads = evaluate_features(data, cfg, device, missing)
        record["class_names"] = data.class_names
        done = {**done, "latent_dim": data.dim, "probes": {**done["probes"], **records},  # who read it last
                "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": record["command"],
                "git_sha": record["git_sha"]}
        if name == "encoder":
            done["classifier"] = _save_classifier(run, heads, records, data.class_names, cfg, info["pool"],
                                                  info["weights"]) or done.get("classifier")
        record["representations"][name] = done
        write_json(path, record)
        print(f"{run.path}: {name} ({done['latent_dim']}-d, {time.perf_counter() - started:.0f} s): " + ", ".join(
            f"{probe} {fmt([seed['test_acc'] for seed in r['seeds']])}" for probe, r in records.items()),
            flush=True)
    write_json(path, record)
    return load_eval(run, cfg.label_type)


def evaluate_encoder(encoder: "str | torch.nn.Module", out: Path | str, cfg: EvalConfig) -> dict:
    """Probe an encoder of your own under the same protocol as a run: ``encoder`` is a SPEC
    (models/external.py) or an ``nn.Module`` mapping a normalised image batch to its latent; the
    images are ``cfg.dataset`` (CIFAR, an image folder or an npz). The encoder and the images are
    checked before ``out`` is made; ``out`` then holds encoder.yaml, the cached features and
    eval.json, and reads as a run (``latentprobe report OUT``)."""
    from latentprobe.models.external import DEFAULT_IMAGE_SIZE, Encoder, EncoderError, declared_size, load_encoder
    from latentprobe.options import DATASETS
    from latentprobe.runs import read_images

    module = encoder if isinstance(encoder, torch.nn.Module) else None
    spec = encoder if module is None else f"python:{type(module).__name__}"
    if module is None:
        model = load_encoder(spec, cfg.weights, cfg.image_size, cfg.pool, cfg.seed)
    else:
        model = Encoder(module.eval(), spec, cfg.image_size or declared_size(module) or DEFAULT_IMAGE_SIZE, cfg.pool)
    if cfg.layers:
        model.check_layers(cfg.layers)
    size = model.config["image_size"]
    dataset = cfg.dataset or "cifar10"
    train, test, skipped = read_images(dataset, cfg.data_dir, size, cfg.seed, cfg.download is not False)
    val_size = cfg.val_size or (5000 if dataset in DATASETS else max(1, len(train) // 10))
    if val_size >= len(train):
        raise ValueError(f"--val-size {val_size}: the training split holds {len(train)} images; give fewer")
    source = {"encoder": spec, "weights": cfg.weights, "image_size": size, "dataset": dataset,
              "data_dir": cfg.data_dir, "download": cfg.download is not False, "val_size": val_size,
              "subset": cfg.subset, "seed": cfg.seed}
    made = not Path(out).exists()
    run = EncoderRun.create(out, source, module, images=(train, test))
    listing = run.path / "skipped_images.txt"
    listing.unlink(missing_ok=True)
    if skipped:
        listing.write_text("".join(f"{line}\n" for line in skipped))
        print(f"{len(skipped)} image file(s) could not be read and were skipped (e.g. {skipped[0]}); "
              f"all are listed in {listing}", flush=True)
    try:
        return evaluate_run(run, cfg)
    except EncoderError:  # the encoder failed on the images: a folder this command made holds nothing to keep
        if made and not run.eval_file().exists():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def load_eval(run: Run | Path | str, label_type: str = "fine") -> dict:
    """RUN/eval.json (or eval_coarse.json), with ``run`` set to the path it was read from (a copied
    run reports itself, never the original it was copied from)."""
    run = Run.of(run)
    path = run.eval_file(label_type)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `latentprobe evaluate {run.path}"
                                f"{'' if label_type == 'fine' else ' --label-type ' + label_type}` first")
    record = check_eval(run.read_result(path), path)
    if not isinstance(run, EncoderRun) and run.checkpoint_file.is_file():  # a run trained again since
        if run.weights != record.get("weights"):
            raise ValueError(f"{path} was made from other weights than {run.checkpoint_file} holds now (the run "
                             f"was trained again or further); run `latentprobe evaluate {run.path}` again")
    return {**record, "run": str(run.path)}
