"""``latentprobe run EXPERIMENT.yaml``: one file names what to train, probe and report.

An experiment file holds either a study::

    out: runs/quick
    study: {preset: quick}                       # any option of `latentprobe study`

or named runs, each trained (``train``: options of `latentprobe train`) or an encoder of your
own (``encoder``: the ``--encoder``, ``--weights``, ``--dataset`` … options of evaluate), probed
under the shared ``evaluate`` options (a run's own ``evaluate`` overrides them) and reported
together (``report``: options of `latentprobe report`)::

    out: runs/families
    evaluate: {probes: [bn_linear, knn], probe_seeds: 3}
    runs:
      conv256: {train: {latent_dim: 256, epochs: 10}}
      mine: {encoder: {encoder: examples/my_encoder.py:build}}
    report: {title: Which family makes the best detector?}

Runs go to OUT/NAME, the report to OUT (OUT/report.md). What is done is skipped (a finished
run is not trained again; probe results are reused under the same protocol), so a run killed
half-way continues where it stopped. The whole file is checked before anything starts: an
unknown key, a wrong type or a missing file is one line naming the key and the file.
"""

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.options import CompareConfig, EvalConfig, StudyConfig, TrainConfig

TOP_KEYS = ("out", "study", "runs", "evaluate", "report")
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a folder of its own under out: no path, no ".."
RUN_KEYS = ("train", "encoder", "evaluate")
ENCODER_KEYS = ("encoder", "weights", "dataset", "data_dir", "image_size", "val_size", "subset", "seed", "pool")


@dataclass
class Plan:
    """What an experiment file asks for, every option checked."""
    out: Path
    study: StudyConfig | None
    runs: dict[str, tuple[TrainConfig | None, EvalConfig]]
    report: CompareConfig


def _mapping(value, where: str, path: Path, allowed: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where} must be a mapping of options, got {value!r}")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} in {where}; allowed: {', '.join(allowed)}")
    return value


def _fields(config_cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config_cls) if f.init)


def _options(config_cls, values, where: str, path: Path, **fixed):
    """``values`` (a mapping of ``config_cls``'s options, checked) with ``fixed`` set, resolved."""
    try:
        return configuration.resolve(config_cls, None, **{**_mapping(values, where, path, _fields(config_cls)),
                                                          **fixed})
    except (ValueError, TypeError) as error:
        if str(error).startswith(f"{path}: "):  # already said with its place
            raise
        raise ValueError(f"{path}: {where}: {error}") from None


def _check_files(encoder: dict, where: str, path: Path) -> None:
    """The encoder's file and its weights exist (a module path is imported only when it runs)."""
    if not encoder.get("encoder"):
        raise ValueError(f"{path}: {where}.encoder needs encoder: SPEC (docs/USING_YOUR_OWN.md)")
    spec = str(encoder["encoder"])
    module_file = spec.rpartition(":")[0] if ":" in spec else spec
    for key, file in (("encoder", module_file), ("weights", encoder.get("weights"))):
        if file and (key == "weights" or file.endswith(".py")) and not Path(file).expanduser().is_file():
            raise ValueError(f"{path}: {where}.encoder.{key}: {file} not found")


def load_plan(path: Path | str) -> Plan:
    """The experiment in ``path``, checked whole (types, keys, files named) before anything runs."""
    path = Path(path)
    top = _mapping(configuration.read_yaml_file(path), "the file", path, TOP_KEYS)
    if not isinstance(top.get("out"), str):
        raise ValueError(f"{path}: out must name the folder the experiment writes, e.g. out: runs/mine")
    out = Path(top["out"])
    if ("study" in top) == ("runs" in top):
        raise ValueError(f"{path}: give either study (a latent-size study) or runs (named runs), not "
                         f"{'both' if 'study' in top else 'neither'}")
    report = _options(CompareConfig, top.get("report"), "report", path, out=str(out))
    if "study" in top:
        return Plan(out, _options(StudyConfig, top["study"], "study", path, out=str(out)), {}, report)
    shared = _mapping(top.get("evaluate"), "evaluate", path, _fields(EvalConfig))
    names = tuple(top["runs"]) if isinstance(top["runs"], dict) else ()
    if not names:
        raise ValueError(f"{path}: runs must map names to runs, e.g. runs: {{ae256: {{train: {{latent_dim: 256}}}}}}")
    runs = {}
    for name, entry in _mapping(top["runs"], "runs", path, names).items():
        where = f"runs.{name}"
        if not (isinstance(name, str) and RUN_NAME.fullmatch(name)):
            raise ValueError(f"{path}: run name {name!r} must be a plain folder name under out (letters, digits, "
                             f"'.', '_', '-'; not starting with '.')")
        entry = _mapping(entry, where, path, RUN_KEYS)
        if ("train" in entry) == ("encoder" in entry):
            raise ValueError(f"{path}: {where} needs either train (options of latentprobe train) or encoder "
                             f"(an encoder of your own), not {'both' if 'train' in entry else 'neither'}")
        evaluate = {**shared, **_mapping(entry.get("evaluate"), f"{where}.evaluate", path, _fields(EvalConfig))}
        train = None
        if "train" in entry:
            train = _options(TrainConfig, entry["train"], f"{where}.train", path, out=str(out / name))
        else:
            encoder = _mapping(entry["encoder"], f"{where}.encoder", path, ENCODER_KEYS)
            _check_files(encoder, where, path)
            evaluate.update(encoder)
        runs[name] = (train, _options(EvalConfig, evaluate, f"{where}.evaluate", path))
    return Plan(out, None, runs, report)


def run_experiment(path: Path | str) -> Path:
    """Train what is missing, evaluate what is not evaluated, write the report; returns its path."""
    plan = load_plan(path)
    if plan.study is not None:
        from latentprobe.study import run_study

        run_study(plan.study)
        return plan.out / "report.md"
    from latentprobe.probe.evaluate import evaluate_encoder, evaluate_run
    from latentprobe.report.render import render
    from latentprobe.training.pretrain import train

    for name, (train_cfg, eval_cfg) in plan.runs.items():
        folder = plan.out / name
        print(f"== {name} ==", flush=True)
        if train_cfg is not None:
            train(train_cfg)  # a finished run says so and returns
            evaluate_run(folder, eval_cfg)
        else:
            evaluate_encoder(eval_cfg.encoder, folder, eval_cfg)
    return render([plan.out / name for name in plan.runs], plan.report, kind="comparison")
