"""Evaluated runs gathered into the rows of a comparison.

Runs whose training settings differ only in the seed form one row: their numbers are pooled
(every probe seed of every run), which is how repeated pretraining is reported. Baselines are
rows of the same table; a baseline computed by several runs on the same data counts once. A row's
label says what the run is: its model, latent size and every model option it was trained with.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.runs import Run
from latentprobe.training.pretrain import RECORDING_OPTIONS

# Settings that do not change what a run is, only how or where it ran (or its seed).
_NOT_IDENTITY = configuration.RUNTIME_OPTIONS | RECORDING_OPTIONS | {"seed"}
BASELINE_ORDER = {"encoder": 0, "random": 1, "kmeans": 2, "pca": 3, "pixels": 4}


@dataclass
class Row:
    """One line of the comparison: a model (runs pooled over seeds), one of its stages, or a baseline."""
    label: str
    kind: str  # encoder, layer_<k> (a stage of the encoder, from 1), random, kmeans, pca or pixels
    dim: int
    evals: list[dict]  # the runs behind the row (the first one for a deduplicated baseline)
    accuracies: dict[str, list[float]] = field(default_factory=dict)  # probe → test acc per seed × run
    protocols: dict[str, list[dict]] = field(default_factory=dict)  # probe → each run's protocol for it
    last_epochs: dict[str, int] = field(default_factory=dict)  # probe → seeds still learning when stopped
    finetune: list[float] = field(default_factory=list)
    encoder: str = ""  # a layer or random-weight row: the label of its encoder's row
    family: str = ""  # an encoder row: its label without the latent size (rows of one curve share it)


def _identity(record: dict) -> str:
    settings = {k: v for k, v in record["train_config"].items() if k not in _NOT_IDENTITY}
    return json.dumps({**settings, "probe pooling": record.get("pool")}, sort_keys=True)


def _data_key(record: dict) -> dict:
    config = record["train_config"]
    return {k: config.get(k) for k in ("dataset", "val_size", "seed", "subset")} | {"labels": record["label_type"]}


def _finetune_accuracies(run: str) -> list[float]:
    path = Run(run).finetune_file()
    if not path.is_file():
        return []
    value = Run(run).read_result(path).get("test_acc")
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values if v is not None):
        raise ValueError(f"{path}: test_acc must be a fraction in [0, 1] (or a list of them), got {value!r}; "
                         f"delete it and run `latentprobe finetune` again")
    return [float(v) for v in values if v is not None]


def _settings(record: dict) -> str:
    """What the run was trained with beyond its model and size: its model options, epochs, images."""
    config = record["train_config"]
    parts = [f"{k}={v}" for k, v in config.get("model_args", {}).items() if k != "latent_dim"]
    epochs = record.get("epochs_trained", config.get("epochs"))
    if epochs is not None:
        parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if "encoder" in config:  # an encoder of your own (evaluate --encoder): its weights and images
        parts.append(f"weights {Path(config['weights']).name}" if config.get("weights") else "its own weights")
        parts.append(f"{config['dataset']} at {config['image_size']} px")
    if config.get("subset"):
        parts.append(f"{config['subset']:,} images")
    return ", ".join(parts)


def collect_rows(evals: list[dict]) -> list[Row]:
    groups: dict[str, list[dict]] = {}
    for record in evals:
        groups.setdefault(_identity(record), []).append(record)
    rows, seen = [], set()
    for members in groups.values():
        first = members[0]
        family = first["model_name"] + (f" {first['pool']} pooling" if first.get("pool") else "")
        label = f"{first['model_name']} {first['latent_dim']}-d" + (f" {first['pool']} pooling" if first.get("pool")
                                                                    else "") + f" ({_settings(first)})"
        if label in seen:  # the same in everything shown: the folder tells them apart
            label += f" [{Path(first['run']).name}]"
        seen.add(label)
        options = ", ".join(f"{k}={v}" for k, v in first["train_config"].get("model_args", {}).items()
                            if k != "latent_dim")
        rows.append(Row(label, "encoder", first["latent_dim"], members, family=f"{family} ({options})" if options
                        else family))
    baselines: dict[str, Row] = {}
    companions: dict[str, list[Row]] = {row.label: [] for row in rows}  # an encoder's stages and random twin
    counted = set()
    for row in list(rows):
        for record in row.evals:
            for kind, rep in record["representations"].items():
                if kind == "encoder":
                    _pool(row, rep)
                    continue
                if kind.startswith("layer_") or kind == "random":  # belongs to this encoder's row
                    companion = next((r for r in companions[row.label] if r.kind == kind), None)
                    if companion is None:
                        name = row.label.split(" (")[0]  # the model and size; the options are in its row
                        label = f"{name}, untrained weights" if kind == "random" else \
                            f"{name}, layer {kind[len('layer_'):]}"
                        companion = Row(label, kind, rep["latent_dim"], [record], encoder=row.label)
                        companions[row.label].append(companion)
                    _pool(companion, rep)
                    continue
                label = {"kmeans": f"k-means triangle {rep['latent_dim']}-d (2011 reference, "
                                   f"{row.label.split(' (')[0]} whitening)",
                         "pca": f"PCA of pixels {rep['latent_dim']}-d",
                         "pixels": f"raw pixels {rep['latent_dim']}-d"}[kind]
                data = _data_key(record)
                key = json.dumps([label, data], sort_keys=True)
                if key in counted:  # the same baseline on the same data, from another run
                    continue
                counted.add(key)
                # split seeds are repeats of one baseline; another data set or subset is another baseline
                group = json.dumps([label, {k: v for k, v in data.items() if k != "seed"}], sort_keys=True)
                baseline = baselines.setdefault(group, Row(label, kind, rep["latent_dim"], [record],
                                                           encoder=row.label if kind == "kmeans" else ""))
                _pool(baseline, rep)
        row.finetune = [acc for record in row.evals for acc in _finetune_accuracies(record["run"])]
    labels = [row.label for row in baselines.values()]
    for row in baselines.values():
        if labels.count(row.label) > 1:
            row.label += f" ({row.evals[0]['train_config'].get('subset') or 'all'} train images)"
    stages = [r for row in rows for r in [row, *sorted(companions[row.label], key=_companion_order)]]
    return stages + sorted(baselines.values(), key=lambda r: (BASELINE_ORDER[r.kind], r.dim, r.label))


def _companion_order(row: Row) -> tuple[int, int]:
    return (0, layer_number(row)) if row.kind.startswith("layer_") else (1, 0)


def layer_number(row: Row) -> int:
    """A registered model's stage number (an encoder of your own names its layers: 0, kept in order)."""
    layer = row.kind[len("layer_"):]
    return int(layer) if layer.isdigit() else 0


def _pool(row: Row, rep: dict) -> None:
    for probe, result in rep["probes"].items():
        row.accuracies.setdefault(probe, []).extend(s["test_acc"] for s in result["seeds"])
        protocol = result.get("protocol", {})
        row.protocols.setdefault(probe, []).append(protocol)
        limit = protocol.get("probe_epochs")
        if probe == "logistic":  # a convex problem, trained to its last epoch: still learning if not converged
            last = sum(not converged(s.get("convergence")) for s in result["seeds"])
            row.last_epochs[probe] = row.last_epochs.get(probe, 0) + last
        elif limit and not protocol.get("refit"):
            last = sum(s.get("best_epoch") == limit for s in result["seeds"])
            row.last_epochs[probe] = row.last_epochs.get(probe, 0) + last


CONVERGED = 0.01  # a logistic probe has converged when its gradient norm fell below this share of its start


def converged(convergence: dict | None) -> bool:
    """Whether a probe's objective reached its optimum: its gradient norm below 1% of where it
    started (a record without the norms counts as converged: nothing says otherwise)."""
    if not convergence:
        return True
    return convergence["gradient_norm"] <= CONVERGED * convergence["initial_gradient_norm"]

