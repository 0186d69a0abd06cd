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
from dataclasses import dataclass
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.options import CompareConfig, EvalConfig, StudyConfig, TrainConfig

TOP_KEYS = ("out", "study", "runs", "evaluate", "report")
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


def _options(config_cls, values: dict, where: str, path: Path):
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    _mapping(values, where, path, tuple(names))
    try:
        return configuration.resolve(config_cls, None, **values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {where}: {error}") from None


def load_plan(path: Path | str) -> Plan:
    """The experiment in ``path``, checked whole (types, keys, files named) before anything runs."""
    import yaml

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the experiment file ({' '.join(str(error).split())[:200]})") from None
    top = _mapping(loaded, "the file", path, TOP_KEYS)
    if not isinstance(top.get("out"), str):
        raise ValueError(f"{path}: out must name the folder the experiment writes, e.g. out: runs/mine")
    out = Path(top["out"])
    if ("study" in top) == ("runs" in top):
        raise ValueError(f"{path}: give either study (a latent-size study) or runs (named runs), not "
                         f"{'both' if 'study' in top else 'neither'}")
    report = _options(CompareConfig, {"out": str(out), **_mapping(top.get("report"), "report", path,
                                                                   tuple(f.name for f in dataclasses.fields(
                                                                       CompareConfig)))}, "report", path)
    if "study" in top:
        study = _options(StudyConfig, {**_mapping(top["study"], "study", path, tuple(
            f.name for f in dataclasses.fields(StudyConfig))), "out": str(out)}, "study", path)
        return Plan(out, study, {}, report)
    shared = _mapping(top.get("evaluate"), "evaluate", path, tuple(f.name for f in dataclasses.fields(EvalConfig)))
    runs = {}
    names = tuple(top["runs"]) if isinstance(top["runs"], dict) else ()
    if not names:
        raise ValueError(f"{path}: runs must map names to runs, e.g. runs: {{ae256: {{train: {{latent_dim: 256}}}}}}")
    for name, entry in _mapping(top["runs"], "runs", path, names).items():
        where = f"runs.{name}"
        entry = _mapping(entry, where, path, RUN_KEYS)
        if ("train" in entry) == ("encoder" in entry):
            raise ValueError(f"{path}: {where} needs either train (options of latentprobe train) or encoder "
                             f"(an encoder of your own), not {'both' if 'train' in entry else 'neither'}")
        own = _mapping(entry.get("evaluate"), f"{where}.evaluate", path, tuple(shared) + tuple(
            f.name for f in dataclasses.fields(EvalConfig)))
        train = None
        if "train" in entry:
            train = _options(TrainConfig, {**_mapping(entry["train"], f"{where}.train", path, tuple(
                f.name for f in dataclasses.fields(TrainConfig))), "out": str(out / name)}, f"{where}.train", path)
            evaluate = _options(EvalConfig, {**shared, **own}, f"{where}.evaluate", path)
        else:
            encoder = _mapping(entry["encoder"], f"{where}.encoder", path, ENCODER_KEYS)
            for key in ("encoder", "weights"):
                target = encoder.get(key)
                if key == "encoder" and not target:
                    raise ValueError(f"{path}: {where}.encoder needs encoder: SPEC (docs/USING_YOUR_OWN.md)")
                file = str(target).rpartition(":")[0] if key == "encoder" and ":" in str(target) else target
                if file and (file.endswith(".py") or key == "weights") and not Path(file).expanduser().is_file():
                    raise ValueError(f"{path}: {where}.encoder.{key}: {file} not found")
            evaluate = _options(EvalConfig, {**shared, **own, **encoder}, f"{where}.evaluate", path)
        runs[name] = (train, evaluate)
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
