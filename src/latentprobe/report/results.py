"""Evaluated runs gathered into the rows of a comparison.

Runs whose training settings differ only in the seed form one row: their numbers are pooled
(every probe seed of every run), which is how repeated pretraining is reported. Baselines are
rows of the same table; a baseline computed by several runs on the same data counts once.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.runs import Run, read_json
from latentprobe.training.pretrain import RECORDING_OPTIONS

# Settings that do not change what a run is, only how or where it ran (or its seed).
_NOT_IDENTITY = configuration.RUNTIME_OPTIONS | RECORDING_OPTIONS | {"seed"}


@dataclass
class Row:
    """One line of the comparison: a model (runs pooled over seeds) or a baseline."""
    label: str
    kind: str  # encoder, layer_<k> (a stage of the encoder, from 1), random, kmeans, pca or pixels
    dim: int
    evals: list[dict]  # the runs behind the row (the first one for a deduplicated baseline)
    accuracies: dict[str, list[float]] = field(default_factory=dict)  # probe → test acc per seed × run
    finetune: list[float] = field(default_factory=list)
    encoder: str = ""  # a layer row: the label of its encoder's row


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
    value = read_json(path).get("test_acc")
    return [float(v) for v in (value if isinstance(value, list) else [value]) if v is not None]


def _settings_apart(earlier: dict, record: dict) -> str:
    """``key=value`` for each training or model setting of ``record`` that ``earlier`` does not share."""
    def flat(r: dict) -> dict:
        config = {k: v for k, v in r["train_config"].items() if k not in _NOT_IDENTITY | {"model_args"}}
        return {**config, **r["train_config"].get("model_args", {})}
    mine, theirs = flat(record), flat(earlier)
    return ", ".join(f"{k}={v}" for k, v in mine.items() if theirs.get(k) != v)


def collect_rows(evals: list[dict]) -> list[Row]:
    groups: dict[str, list[dict]] = {}
    for record in evals:
        groups.setdefault(_identity(record), []).append(record)
    rows, seen_labels = [], {}
    for members in groups.values():
        first = members[0]
        label = f"{first['model_name']} {first['latent_dim']}-d"
        if first.get("pool"):  # ViT encoders: which tokens the probes read
            label += f" {first['pool']} pooling"
        if label in seen_labels:  # same model and size, other settings: name what differs
            label += f" ({_settings_apart(seen_labels[label], first) or Path(first['run']).name})"
        seen_labels.setdefault(label, first)
        rows.append(Row(label, "encoder", first["latent_dim"], members))
    baselines: dict[str, Row] = {}
    layers: dict[str, list[Row]] = {row.label: [] for row in rows}  # an encoder's stages, probed by --layers
    counted = set()
    for row in list(rows):
        for record in row.evals:
            for kind, rep in record["representations"].items():
                if kind == "encoder":
                    _pool(row, rep)
                    continue
                if kind.startswith("layer_"):
                    layer = next((r for r in layers[row.label] if r.kind == kind), None)
                    if layer is None:
                        layer = Row(f"{row.label}, layer {kind.split('_')[1]}", kind, rep["latent_dim"], [record],
                                    encoder=row.label)
                        layers[row.label].append(layer)
                    _pool(layer, rep)
                    continue
                label = {"random": f"random-weight {row.label}",  # same architecture as its row
                         "kmeans": f"k-means triangle {rep['latent_dim']}-d ({row.label} whitening)",
                         "pca": f"PCA of pixels {rep['latent_dim']}-d", "pixels": f"raw pixels {rep['latent_dim']}-d"}[kind]
                data = _data_key(record)
                key = json.dumps([label, data], sort_keys=True)
                if key in counted:  # the same baseline on the same data, from another run
                    continue
                counted.add(key)
                # split seeds are repeats of one baseline; another data set or subset is another baseline
                group = json.dumps([label, {k: v for k, v in data.items() if k != "seed"}], sort_keys=True)
                baseline = baselines.setdefault(group, Row(label, kind, rep["latent_dim"], [record]))
                _pool(baseline, rep)
        row.finetune = [acc for record in row.evals for acc in _finetune_accuracies(record["run"])]
    labels = [row.label for row in baselines.values()]
    for row in baselines.values():
        if labels.count(row.label) > 1:
            row.label += f" ({row.evals[0]['train_config'].get('subset') or 'all'} train images)"
    order = {"encoder": 0, "random": 1, "kmeans": 2, "pca": 3, "pixels": 4}
    stages = [r for row in rows for r in [row, *sorted(layers[row.label], key=layer_number)]]
    return stages + sorted(baselines.values(), key=lambda r: (order[r.kind], r.dim, r.label))


def layer_number(row: Row) -> int:
    return int(row.kind.split("_")[1])


def _pool(row: Row, rep: dict) -> None:
    for probe, result in rep["probes"].items():
        row.accuracies.setdefault(probe, []).extend(s["test_acc"] for s in result["seeds"])
