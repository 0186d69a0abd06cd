"""The Run object: one place for a run directory's files; results round-trip in one schema,
and run directories written before it still read."""

import pytest
from conftest import write_cifar10
from eval_helpers import train_tiny_run

from latentprobe.checkpoint import CheckpointError
from latentprobe.runs import Run, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_knows_its_files_model_and_splits(tmp_path):
    data = write_cifar10(tmp_path / "data", per_batch=40, test=50)
    run = Run(train_tiny_run(data, tmp_path / "run"))
    assert run.checkpoint_file.is_file() and run.config_file.is_file() and run.metrics_file.is_file()
    assert run.model_name == "conv_ae" and run.probed_epoch == run.checkpoint["best_epoch"]
    model = run.model("cpu")
    assert not model.training and model.latent_dim == 16
    splits = Run.of(run, str(data)).splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [140, 60, 50]
    assert [m["epoch"] for m in run.metrics()] == list(range(1, run.checkpoint["epoch"] + 1))
    assert Run.of(run) is run and Run.of(str(run.path)).path == run.path
    with pytest.raises(ValueError, match="--pool applies to ViT encoders"):
        run.model_config(pool="mean")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Run(tmp_path / "empty").checkpoint
    from latentprobe.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "bare" / "checkpoint.pt", kind="autoencoder", model_name="conv_ae",
                    model=run.checkpoint["model"], epoch=1)  # no configs
    with pytest.raises(CheckpointError, match="lacks model_config, train_config: it was not written by"):
        Run(tmp_path / "bare").model()
    from latentprobe.training.pretrain import TrainConfig, train
    with pytest.raises(CheckpointError, match="lacks model_config, train_config"):  # resuming it: no KeyError
        train(TrainConfig(model="conv_ae", data_dir=str(data), download=False, val_size=40, out=str(tmp_path / "bare")))


def test_a_saved_config_with_a_yaml_tag_is_one_line_for_the_reports(tmp_path):
    from latentprobe.cli import main

    (tmp_path / "study" / "latent_8").mkdir(parents=True)
    (tmp_path / "study" / "config.yaml").write_text('config: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path / "study")])
    assert str(stop.value.code).startswith("error: cannot read") and "\n" not in str(stop.value.code)
    assert "restore it or run the command again" in str(stop.value.code)
    (tmp_path / "study" / "config.yaml").write_text("- a list\n")
    with pytest.raises(SystemExit, match="holds no 'config' mapping"):
        main(["report", str(tmp_path / "study")])


def test_old_result_files_read_in_the_one_schema(tmp_path):
    """eval.json of version 1 (``dim``, one protocol per file, unprefixed options) reads as version 2."""
    run = Run(tmp_path)
    probe = {"chosen": {"lr": 1e-3, "weight_decay": 0.0}, "seeds": [{"best_epoch": 15, "val_acc": 0.8, "test_acc": 0.79}]}
    write_json(run.eval_file(), {"latent_dim": 8, "run": "/home/someone/runs/x", "host": "vm (x86_64)",
                                 "representations": {"pixels": {"dim": 3072, "sizes": {"train": 9}, "probes": {
                                     "bn_linear": probe, "knn_20": {"k": 20, "temperature": 0.07, "seeds": []}}}},
                                 "protocol": {"seeds": 3, "epochs": 15, "lrs": [1e-3], "schedule": "cosine"}})
    record = run.read_result(run.eval_file())
    pixels = record["representations"]["pixels"]
    assert pixels["latent_dim"] == 3072 and record["schema"] == 2 and "protocol" not in record
    assert pixels["probes"]["bn_linear"]["protocol"] == {
        "probe_lrs": [1e-3], "probe_weight_decays": None, "probe_epochs": 15, "probe_patience": None,
        "probe_schedule": "cosine", "probe_batch_size": None, "probe_seeds": 3, "flip_train": False, "refit": False}
    assert pixels["probes"]["bn_linear"]["chosen"] == {"lr": 1e-3, "weight_decay": 0.0, "val_acc": 0.8, "best_epoch": 15}
    assert pixels["probes"]["knn_20"]["protocol"] == {"k": 20, "knn_temperature": 0.07, "flip_train": False}
    assert "run" not in record and "host" not in record  # a path and a host name from another machine
    write_json(run.eval_file(), {"schema": 2, "run": "/x", "representations": {"encoder": {"probes": {  # dbafa74
        "bn_linear": dict(probe)}}}, "protocol": {"probe_seeds": 3, "probe_epochs": 15, "flip_train": True}})
    record = run.read_result(run.eval_file())
    assert record["representations"]["encoder"]["probes"]["bn_linear"]["protocol"]["probe_epochs"] == 15
    assert "protocol" not in record and "run" not in record
    write_json(run.eval_file(), {"schema": 7})
    with pytest.raises(ValueError, match="result schema 7; this latentprobe reads 2 and older"):
        run.read_result(run.eval_file())
    write_json(run.eval_file(), [])
    with pytest.raises(ValueError, match="eval.json holds a list, not a latentprobe result"):
        run.read_result(run.eval_file())


def test_a_study_of_unevaluated_runs_is_refused_in_one_line(tmp_path):
    from latentprobe.cli import main

    data = write_cifar10(tmp_path / "data", per_batch=40, test=50)
    study = tmp_path / "study"
    train_tiny_run(data, study / "latent_16")  # probed by an older latentprobe: probe.json, no eval.json
    (study / "config.yaml").write_text("config: {dataset: cifar10}\ncommand: latentprobe study\n")
    with pytest.raises(SystemExit) as stop:
        main(["report", str(study)])
    assert str(stop.value.code).startswith("error: ") and "holds no evaluated latent_* runs" in str(stop.value.code)


def test_a_corrupt_result_file_is_named_in_one_line(tmp_path, capsys):
    from latentprobe.cli import main

    run = Run(tmp_path)
    run.eval_file().write_text('{"latent_dim": 8, "representations": {')  # cut short
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path), "--out", str(tmp_path / "report")])
    message = str(exit_info.value)
    assert message.startswith(f"error: {run.eval_file()} is not valid JSON") and "\n" not in message


def test_report_picks_what_the_paths_hold(tmp_path):
    from latentprobe.report.render import report_kind

    study, evaluated, other, classifiers = (tmp_path / n for n in ("study", "evaluated", "other", "classifiers"))
    (study / "latent_16").mkdir(parents=True)
    (study / "config.yaml").write_text("config: {}\n")
    for run in (evaluated, other):
        run.mkdir()
        (run / "eval.json").write_text("{}")
    classifiers.mkdir()
    (classifiers / "finetune.json").write_text("{}")
    assert report_kind([study]) == "study"
    assert report_kind([evaluated]) == report_kind([evaluated, other]) == "comparison"
    assert report_kind([classifiers]) == "classifiers"
    with pytest.raises(FileNotFoundError, match="nothing to report in .*classifiers: run `latentprobe evaluate`"):
        report_kind([evaluated, classifiers])  # a comparison needs every run evaluated
    with pytest.raises(FileNotFoundError, match="missing: no such directory"):
        report_kind([tmp_path / "missing"])


@pytest.mark.parametrize("content, message", [
    (b"[]", "holds a list, not a latentprobe result"),
    (b"{}", "'model_name' is missing or not a str"),
    (b'{"schema": 2, "model_name": "conv_ae", "latent_dim": 8, "train_config": {}, "representations": '
     b'{"encoder": {"probes": {"linear": {"test": {"mean": 0.5}}}}}}', "encoder / linear has no seeds"),
    (b'{"schema": 2, "model_name": "conv_ae", "latent_dim": 8, "train_config": {}, "representations": '
     b'{"encoder": {"probes": {"linear": {"seeds": [{"test_acc": 7}], "test": {"mean": 7}}}}}}',
     "has no seeds with a test_acc in [0, 1]"),
    (bytes(range(256)), "holds binary bytes, not JSON"),
])
def test_a_result_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path, content, message):
    from latentprobe.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval.json").write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    error = str(stop.value.code)
    assert error.startswith(f"error: {tmp_path / 'run' / 'eval.json'}") and message in error and "\n" not in error
