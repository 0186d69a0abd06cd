"""latentprobe run EXPERIMENT.yaml: one file, checked whole, resumed after a kill."""

from pathlib import Path

import pytest
import yaml

from latentprobe import config as configuration
from latentprobe.cli import build_parser, main
from latentprobe.experiment import load_plan
from latentprobe.options import StudyConfig, TrainConfig

ROOT = Path(__file__).parents[1]


def _experiments():
    return sorted(p for p in (ROOT / "configs").glob("*.yaml") if "out" in (yaml.safe_load(p.read_text()) or {}))


def test_every_file_in_configs_loads():
    experiments = _experiments()
    assert {p.name for p in experiments} >= {"quick.yaml", "patch_ae_headline.yaml", "mae_tiny_gpu.yaml"}
    for path in experiments:
        plan = load_plan(path)
        assert plan.study is not None or plan.runs, path
    for path in set((ROOT / "configs").glob("*.yaml")) - set(experiments):  # train --config files
        assert configuration.resolve(TrainConfig, build_parser().parse_args(["train", "--config", str(path)]))


def test_the_quick_experiment_is_the_readmes_quick_study():
    plan = load_plan(ROOT / "configs" / "quick.yaml")
    args = build_parser().parse_args(["study", "--preset", "quick", "--out", "runs/quick"])
    assert plan.study == configuration.resolve(StudyConfig, args)


def _write(path: Path, record: dict | str | bytes) -> Path:
    """An experiment file: a record as YAML, or the text or bytes given (what YAML cannot dump)."""
    if isinstance(record, bytes):
        path.write_bytes(record)
    else:
        path.write_text(record if isinstance(record, str) else yaml.safe_dump(record, sort_keys=False))
    return path


def test_an_experiment_trains_evaluates_reports_and_resumes_after_a_kill(cifar10_root, tmp_path, capsys,
                                                                           monkeypatch):
    tiny = {"model_args": {"c1": 4, "c2": 8}, "epochs": 1, "val_size": 40, "data_dir": str(cifar10_root),
            "download": False, "device": "cpu"}
    experiment = _write(tmp_path / "e.yaml", {
        "out": str(tmp_path / "out"),
        "runs": {"ae8": {"train": {**tiny, "latent_dim": 8}},
                 "ae16": {"train": {**tiny, "latent_dim": 16}, "evaluate": {"probes": ["knn"]}}},
        "evaluate": {"probes": ["linear"], "probe_epochs": 2, "probe_seeds": 1, "baselines": ["none"],
                     "device": "cpu"},
        "report": {"tsne_points": 0, "title": "Eight or sixteen?"}})
    from latentprobe.probe import evaluate as evaluation

    real = evaluation.evaluate_run
    calls = []

    def killed_on_the_second(run, cfg):
        calls.append(Path(run).name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run, cfg)

    monkeypatch.setattr(evaluation, "evaluate_run", killed_on_the_second)
    with pytest.raises(SystemExit, match="interrupted"):
        main(["run", str(experiment)])
    assert (tmp_path / "out" / "ae8" / "eval.json").is_file() and not (tmp_path / "out" / "ae16" / "eval.json").exists()
    monkeypatch.setattr(evaluation, "evaluate_run", real)
    capsys.readouterr()
    main(["run", str(experiment)])
    out = capsys.readouterr().out
    assert "ae8: finished (1/1 epochs), nothing to do" in out and "encoder already evaluated under this protocol" in out
    assert "ae16: finished (1/1 epochs), nothing to do" in out  # trained before the kill, not again
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# Eight or sixteen?") and "conv_ae 16-d" in report and "conv_ae 8-d" in report


@pytest.mark.parametrize("record, message", [
    ({"out": "x", "runs": {"a": {"train": {}}}, "evaluat": {}}, "unknown key 'evaluat' in the file"),
    ({"out": "x", "runs": {"a": {"train": {"latent_dims": 8}}}}, "unknown key 'latent_dims' in runs.a.train"),
    ({"out": "x", "runs": {"a": {"train": {"latent_dim": "big"}}}}, "runs.a.train: option latent_dim must be int"),
    ({"out": "x", "runs": {"a": {"train": {"epochs": 0}}}}, "runs.a.train: --epochs must be at least 1"),
    ({"out": "x", "runs": {"a": {"encoder": {"encoder": "missing.py:build"}}}},
     "runs.a.encoder.encoder: missing.py not found"),
    ({"out": "x", "runs": {"a": {}}}, "runs.a needs either train"),
    ({"out": "x", "study": {"preset": "quick"}, "runs": {"a": {"train": {}}}}, "not both"),
    ({"runs": {}}, "out must name the folder"),
    ({"out": "x", "runs": [1]}, "runs must map names to runs"),
    ({"out": "x", "runs": {"../../escape": {"train": {}}}}, "run name '../../escape' must be a plain folder name"),
    ({"out": "x", "runs": {".hidden": {"train": {}}}}, "run name '.hidden' must be a plain folder name"),
    ("out: x\nruns:\n  a: {train: {}}\n  a: {train: {latent_dim: 8}}\n", "'a' is given twice"),
    (b"out: x\n# \xff\xfe\n", "cannot read it"),
])
def test_a_bad_experiment_file_is_one_line_naming_the_key_and_the_file(tmp_path, record, message):
    path = _write(tmp_path / "bad.yaml", record)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path)])
    error = str(exit_.value.code)
    assert error.startswith(f"error: {path}: ") and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "x").exists()
