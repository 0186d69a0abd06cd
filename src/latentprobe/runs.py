"""A run is a directory: config.yaml, checkpoint.pt, metrics.jsonl, TensorBoard events, PNGs,
and what the probes wrote. ``Run`` is the one place that knows its file names.

Metrics are one JSON object per epoch; plots and reports are made from these files later,
so a report can be rebuilt without retraining.
"""

import copy
import fcntl
import json
import os
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import torch

from latentprobe.checkpoint import AUTOENCODER, CheckpointError, load_checkpoint, state_digest
from latentprobe.data.cifar import Split, load_split, take, train_val_split
from latentprobe.models import create_model
from latentprobe.options import OWN_DATASETS, PROBE_OPTIONS

CONFIG = "config.yaml"
ENCODER = "encoder.yaml"  # what `evaluate --encoder` probed: the encoder SPEC, its weights and the images
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"
SPLITS = ("train", "val", "test")
# The result files' schema. Version 2 names the probes' options probe_* (one word per idea across
# commands); files without a version are version 1 and are read through ``upgrade``.
SCHEMA = 2
_OLD_SIZE_NAMES = ("feature_dim", "dim")  # the latent's size in version 1 (study probe.json, eval.json)
_OLD_PROBE_OPTIONS = {"seeds": "probe_seeds", "epochs": "probe_epochs", "lrs": "probe_lrs",
                      "weight_decays": "probe_weight_decays", "batch_size": "probe_batch_size",
                      "schedule": "probe_schedule", "patience": "probe_patience", "lr": "probe_lr",
                      "weight_decay": "probe_weight_decay", "seed": "probe_seed"}


class Run:
    """One pretraining run directory: its files, its checkpoint (read once), its model at the
    probed epoch, the data splits it was trained on, and its result files."""

    def __init__(self, path: Path | str, data_dir: str | None = None, download: bool | None = None):
        """``data_dir`` / ``download``: where this session finds the run's images and whether it may
        download them (None: as the run was trained)."""
        self.path = Path(path)
        self.data_dir = data_dir
        self.download = download

    @classmethod
    def of(cls, run: "Run | Path | str", data_dir: str | None = None, download: bool | None = None) -> "Run":
        """``run`` itself if it is a Run (its data location replaced where given), else the Run of
        that directory (an ``EncoderRun`` where ``evaluate --encoder`` made it)."""
        if not isinstance(run, Run):
            return (EncoderRun if (Path(run) / ENCODER).is_file() else cls)(run, data_dir, download)
        if (data_dir is not None and data_dir != run.data_dir) or (download is not None and download != run.download):
            run = copy.copy(run)  # keeps the checkpoint already read
            run._splits, run._pending = {}, None  # images of another location are read anew
            run.data_dir = data_dir if data_dir is not None else run.data_dir
            run.download = download if download is not None else run.download
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- file names

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    def features_dir(self, representation: str = "encoder") -> Path:
        """The cache of a representation's features (the trained ``encoder``'s, the untrained
        ``random`` one's, …): a folder of float16 files (probe/store.py)."""
        return self.path / "features" / representation

    def eval_file(self, label_type: str = "fine") -> Path:
        return self.path / ("eval.json" if label_type == "fine" else f"eval_{label_type}.json")

    def classifier_file(self, label_type: str = "fine") -> Path:
        return self.path / ("classifier.pt" if label_type == "fine" else f"classifier_{label_type}.pt")

    def finetune_file(self, frozen: bool = False) -> Path:
        return self.path / ("finetune_frozen.json" if frozen else "finetune.json")

    def finetune_dir(self, frozen: bool = False) -> Path:
        return self.path / ("finetune_frozen" if frozen else "finetune")

    # ---- what the run holds

    @cached_property
    def checkpoint(self) -> dict:
        return self.read_checkpoint()

    def read_checkpoint(self, model_name: str | None = None) -> dict:
        """The checkpoint, refused in one line unless ``latentprobe train`` wrote it (for ``model_name``)."""
        checkpoint = load_checkpoint(self.checkpoint_file, model_name=model_name, kind=AUTOENCODER)
        missing = [k for k in ("model_name", "model_config", "train_config", "model", "epoch") if k not in checkpoint]
        if missing:
            raise CheckpointError(f"{self.checkpoint_file} lacks {', '.join(missing)}: it was not written by "
                                  f"`latentprobe train`; train the run again into a new --out")
        return checkpoint

    @cached_property
    def weights(self) -> str:
        """The digest of the weights the probes read (the probed epoch's): every result made from
        them carries it, and is refused when the run holds other weights since."""
        return state_digest(self.checkpoint.get("best_model", self.checkpoint["model"]))

    @property
    def train_config(self) -> dict:
        return self.checkpoint["train_config"]

    @property
    def model_name(self) -> str:
        return self.checkpoint["model_name"]

    @property
    def probed_epoch(self) -> int:
        """The epoch whose weights the probes read: the best validation epoch when recorded."""
        return self.checkpoint.get("best_epoch", self.checkpoint["epoch"])

    def model_config(self, pool: str | None = None) -> dict:
        """The model's options; ``pool`` (ViT encoders: cls or mean) replaces the run's pooling."""
        config = dict(self.checkpoint["model_config"])
        if pool is not None:
            if "pool" not in config:
                raise ValueError(f"--pool applies to ViT encoders; {self.model_name} has one latent vector")
            config["pool"] = pool
        return config

    def untrained_model(self, pool: str | None = None) -> torch.nn.Module:
        return create_model(self.model_name, **self.model_config(pool))

    def model(self, device: torch.device | str = "cpu", pool: str | None = None) -> torch.nn.Module:
        """The trained model at the probed epoch, on ``device``, in eval mode."""
        model = self.untrained_model(pool)
        model.load_state_dict(self.checkpoint.get("best_model", self.checkpoint["model"]))
        return model.to(device).eval()

    def splits(self, label_type: str = "fine") -> dict[str, Split]:
        """The train (same subset), validation and test splits the run used, read once per label
        type (the encoder, its twin and the pixels of one evaluation share them)."""
        cache = self.__dict__.setdefault("_splits", {})
        if label_type not in cache:
            cache[label_type] = carve_splits(self.train_config, *self._read(), label_type)
        return cache[label_type]

    def _read(self) -> tuple[Split, Split]:
        return run_images(self.train_config, self.data_dir, self.download)

    def data_identity(self) -> dict:
        """What decides which images the run's splits hold: its settings, and the data files this
        session reads (``data_files``: other bytes under the same name are other data)."""
        return {**{k: self.train_config.get(k) for k in ("dataset", "val_size", "subset", "seed")},
                "files": self._files_digest}

    def data_note(self) -> str | None:
        """A line naming the data files whose bytes differ from those the run was trained on (None:
        the same, or a run that recorded none)."""
        recorded = self.checkpoint.get("data_files")
        changed = changed_files(recorded, self._files_digest) if isinstance(recorded, dict) else []
        return (f"note: {', '.join(changed)} changed since {self.path} was trained (other bytes than it read); its "
                f"features are of the files as they are now") if changed else None

    @cached_property
    def _files_digest(self) -> str | None:
        return data_files(self.train_config.get("dataset"), self.data_dir or self.train_config.get("data_dir"))

    def metrics(self) -> list[dict]:
        """One record per trained epoch (from metrics.jsonl, else from the checkpoint)."""
        return read_jsonl(self.metrics_file) or self.checkpoint.get("history", [])

    # ---- results

    def read_result(self, path: Path) -> dict:
        """A result file of this run, in the current schema whatever its age (``upgrade``)."""
        return upgrade(read_json(path), Path(path))

    def exclusive(self):
        """The one-writer lock of a run that exists: a mistyped path is refused, no folder made."""
        self.checkpoint  # noqa: B018 - read (and cached) here, so a missing or foreign one stops us first
        return exclusive(self.path)


class EncoderRun(Run):
    """The results folder of an encoder brought by the user (``evaluate --encoder``): read as a
    run whose model is that encoder, never trained here. ``encoder.yaml`` names the encoder SPEC,
    its weights, its input size and the images; an in-memory ``module`` (the Python API) takes
    the SPEC's place."""

    _pending = None  # (train, test) images read before the run was made, for its first read

    def __init__(self, path: Path | str, data_dir: str | None = None, download: bool | None = None,
                 module: torch.nn.Module | None = None, images: tuple[Split, Split] | None = None):
        super().__init__(path, data_dir, download)
        self.module, self._pending = module, images

    @classmethod
    def create(cls, path: Path | str, source: dict, module: torch.nn.Module | None = None,
               images: tuple[Split, Split] | None = None) -> "EncoderRun":
        """Write ``source`` (encoder, weights, image_size, dataset, data_dir, download, val_size,
        subset, seed) as PATH/encoder.yaml; results of another source in the folder are not reused
        (evaluate compares what made them). ``images``: the (train, test) images of ``source``,
        when already read (an image folder is decoded once)."""
        import yaml

        from latentprobe import config as configuration

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; give --encoder a folder for its results")
        if (path / CHECKPOINT).exists():
            raise ValueError(f"{path} holds a trained run; give --encoder a folder of its own")
        path.mkdir(parents=True, exist_ok=True)
        record = {"config": source, "command": configuration.command_line(), "git_sha": configuration.git_sha()}
        tmp = path / f"{ENCODER}.{os.getpid()}.tmp"
        tmp.write_text(yaml.safe_dump(record, sort_keys=False, width=1000))
        os.replace(tmp, path / ENCODER)
        return cls(path, source["data_dir"], source["download"], module=module, images=images)

    def _read(self) -> tuple[Split, Split]:
        if self._pending is not None:
            images, self._pending = self._pending, None
            return images
        return super()._read()

    @cached_property
    def source(self) -> dict:
        from latentprobe import config as configuration

        return configuration.read_saved(self.path, ENCODER)["config"]

    @cached_property
    def checkpoint(self) -> dict:
        source = self.source
        return {"model_name": source["encoder"], "epoch": None, "train_config": source,
                "model_config": {k: source.get(k) for k in ("encoder", "weights", "image_size")}}

    def model_config(self, pool: str | None = None) -> dict:
        return {**self.checkpoint["model_config"], "pool": pool}

    def untrained_model(self, pool: str | None = None) -> torch.nn.Module:
        """The same architecture with the weights its code gives it, seeded with the run's seed."""
        from latentprobe.models.external import Encoder, untrained_encoder

        source = self.source
        if self.module is None:
            return untrained_encoder(source["encoder"], source["seed"], source["image_size"], pool)
        torch.manual_seed(source["seed"])
        twin = copy.deepcopy(self.module)
        for layer in twin.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        return Encoder(twin, source["encoder"], source["image_size"], pool)

    def model(self, device: torch.device | str = "cpu", pool: str | None = None) -> torch.nn.Module:
        from latentprobe.models.external import Encoder, load_encoder

        source = self.source
        if self.module is not None:
            return Encoder(self.module, source["encoder"], source["image_size"], pool).to(device).eval()
        return load_encoder(source["encoder"], source.get("weights"), source["image_size"], pool,
                            source["seed"]).to(device).eval()

    def data_identity(self) -> dict:
        return {**super().data_identity(), "image_size": self.source["image_size"]}

    def exclusive(self):
        self.source  # noqa: B018 - read here, so a missing or foreign encoder.yaml stops us first
        return exclusive(self.path)


def data_files(dataset: str, root: str | None) -> dict | str | None:
    """The identity of a data set's files under ``root``: CIFAR's files each with the digest of its
    bytes; an image folder's every file's name, size and time; an npz's bytes. None where they are
    not there (yet)."""
    from latentprobe.data.cifar import DATASETS, data_root, dataset_files
    from latentprobe.data.images import data_digest

    if dataset in OWN_DATASETS:
        where = Path(root).expanduser() if root else None
        return data_digest(dataset, where) if where is not None and where.exists() else None
    where = data_root(root) / DATASETS[dataset].folder if dataset in DATASETS else None
    return dataset_files(dataset, where) if where is not None and where.is_dir() else None


def changed_files(before: dict | str | None, now: dict | str | None) -> list[str]:
    """The data files whose bytes differ between two ``data_files`` identities (every file, where
    they are not both per-file)."""
    if before == now:
        return []
    if isinstance(before, dict) and isinstance(now, dict):
        return [name for name in sorted({*before, *now}) if before.get(name) != now.get(name)]
    return ["the data files"]


def read_images(dataset: str, root, image_size: int | None, seed: int, download: bool = True):
    """(train, test, skipped files) of any data set: CIFAR's batch files, an image folder or an npz."""
    if dataset in OWN_DATASETS:
        from latentprobe.data.images import load_image_folder, load_npz

        if not root:
            kind = "folder of class folders" if dataset == "imagefolder" else ".npz file"
            raise ValueError(f"--dataset {dataset} needs --data-dir (the {kind})")
        return load_image_folder(root, image_size or 32, seed) if dataset == "imagefolder" else load_npz(root)
    train, test = (load_split(dataset, split, root, download=download) for split in ("train", "test"))
    return train, test, []


def run_images(train_config: dict, data_dir: str | None = None, download: bool | None = None) -> tuple[Split, Split]:
    """The training and test images of a run's data set, read from ``data_dir`` (None: the run's)
    and downloaded if missing when ``download`` (None: the run's setting)."""
    download = train_config.get("download", True) if download is None else download
    train, test, _ = read_images(train_config["dataset"], data_dir or train_config.get("data_dir"),
                                 train_config.get("image_size"), train_config["seed"], download)
    return train, test


def run_splits(train_config: dict, data_dir: str | None = None, label_type: str = "fine",
               download: bool | None = None) -> dict[str, Split]:
    """The train (same subset), validation and test splits of a run's training config."""
    return carve_splits(train_config, *run_images(train_config, data_dir, download), label_type)


def carve_splits(train_config: dict, train: Split, test: Split, label_type: str = "fine") -> dict[str, Split]:
    """The train (same subset), validation and test splits of a run's training config, from the
    data set's training and test images."""
    train, val = train_val_split(train, train_config["val_size"], seed=train_config["seed"])
    train = take(train, train_config.get("subset"), seed=train_config["seed"])
    return {name: split.with_label_type(label_type) for name, split in zip(SPLITS, (train, val, test))}


def upgrade(record, path: Path):
    """A result record in the current schema. Version 1 files (no ``schema``) name the latent's
    size ``latent_dim``, their probe options ``probe_*`` (with the defaults of options that came
    later); they, and version 2 files of its first days (git dbafa74), keep one protocol per probe
    result instead of one per file, and lose the absolute run path and host name they stored. A
    record of a newer version, or not a mapping, is one line."""
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a {type(record).__name__}, not a latentprobe result; delete it and run the "
                         f"command that wrote it again")
    version = record.get("schema", 1)
    if version == SCHEMA and not isinstance(record.get("protocol"), dict):
        return record
    if version not in (1, SCHEMA):
        raise ValueError(f"{path} has result schema {version!r}; this latentprobe reads {SCHEMA} and older: "
                         f"upgrade latentprobe, or run the command that wrote it again")
    # below: version 1, and the first days of version 2 (git dbafa74), whose protocol was one per file
    representations = record.get("representations") or {}
    for holder in [record, *representations.values()]:
        for old in _OLD_SIZE_NAMES:
            if isinstance(holder, dict) and old in holder and "latent_dim" not in holder:
                holder["latent_dim"] = holder.pop(old)
    for options in (record.get("protocol"), record.get("probe_config")):
        if isinstance(options, dict):
            for old, new in _OLD_PROBE_OPTIONS.items():
                if old in options:
                    options[new] = options.pop(old)
    if isinstance(record.get("protocol"), dict):
        protocol = {"probe_schedule": "constant", "flip_train": False, "refit": False, **record.pop("protocol")}
        for representation in representations.values():
            for name, probe in representation.get("probes", {}).items():
                if name.startswith("knn_"):
                    probe["protocol"] = {"k": probe.get("k"), "knn_temperature": probe.get("temperature"),
                                         "flip_train": protocol["flip_train"]}
                    continue
                keys = PROBE_OPTIONS + (("mlp_hidden",) if name == "mlp" else ())
                probe["protocol"] = {key: protocol.get(key) for key in keys}
                first = (probe.get("seeds") or [{}])[0]
                probe["chosen"] = {**probe.get("chosen", {}), "val_acc": first.get("val_acc"),
                                   "best_epoch": first.get("best_epoch")}
                probe.setdefault("sizes", representation.get("sizes"))
    for stale in ("run", "host"):  # where it was made: a path and a host name that mean nothing elsewhere
        record.pop(stale, None)
    record["schema"] = SCHEMA
    return record


class RunInUse(Exception):
    """Another process is writing into the run directory."""


def _lock(handle, run_dir: Path, kind: int) -> None:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        raise RunInUse(f"{run_dir} is being written by another latentprobe process (pid {holder}); "
                       f"wait for it to finish, or use another --out") from None


def check_not_in_use(run_dir: Path) -> None:
    """Refuse at once, creating nothing, a run directory that another process writes (before a
    command spends time reading data it could not write anyway)."""
    try:
        handle = open(Path(run_dir) / LOCK)
    except OSError:  # no lock file (a new run) or no folder: nobody writes it
        return
    with handle:
        _lock(handle, Path(run_dir), fcntl.LOCK_SH)
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def exclusive(run_dir: Path):
    """One writer per run directory: an advisory lock (``flock``) on RUN/.lock, held while the
    block runs. The operating system drops it when the process ends, by kill -9 too, so no stale
    lock is ever left; the file keeps the holder's pid for the message a second writer gets."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run folder; give --out a folder (new or a run's)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK, "a+")
    except OSError as error:  # read-only, no permission, disk full
        raise ValueError(f"cannot write in {run_dir} ({error.strerror}); give --out a folder you can write") from None
    with handle:
        _lock(handle, run_dir, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        for leftover in run_dir.glob("*.tmp"):  # a writer killed mid-write left it; we are the only writer now
            leftover.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parse(text: str, path: Path, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f", line {line}," if line else ""
        raise ValueError(f"{path}{where} is not valid JSON ({err.msg}); it was cut short or edited: delete it "
                         f"and run the command that wrote it again") from None


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [_parse(line, path, number) for number, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (used when a run resumes)."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, record) -> None:
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} holds binary bytes, not JSON; delete it and run the command that wrote it "
                         f"again") from None
    return _parse(text, Path(path))


def check_eval(record: dict, path: Path) -> dict:
    """``record`` (an eval.json in the current schema) if it has the shape every reader relies on:
    the run's facts and, per representation and probe, seeds with a test accuracy in [0, 1]."""
    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"{path}: {what}; it is not an eval.json that latentprobe wrote: delete it and run "
                             f"`latentprobe evaluate` again")

    for key, kind in (("model_name", str), ("latent_dim", int), ("train_config", dict), ("representations", dict)):
        need(isinstance(record.get(key), kind), f"'{key}' is missing or not a {kind.__name__}")
    for name, representation in record["representations"].items():
        need(isinstance(representation, dict) and isinstance(representation.get("probes"), dict),
             f"representation {name!r} has no 'probes' mapping")
        for probe, result in representation["probes"].items():
            seeds = result.get("seeds") if isinstance(result, dict) else None
            need(isinstance(seeds, list) and bool(seeds) and all(
                isinstance(s, dict) and isinstance(s.get("test_acc"), (int, float)) and 0 <= s["test_acc"] <= 1
                for s in seeds), f"{name} / {probe} has no seeds with a test_acc in [0, 1]")
            need(isinstance(result.get("test"), dict) and isinstance(result["test"].get("mean"), (int, float)),
                 f"{name} / {probe} has no 'test' summary")
    return record


class TensorBoard:
    """A SummaryWriter that is only opened on the writing rank and closed cleanly."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(Path(directory) / "tensorboard"))

    def scalars(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
