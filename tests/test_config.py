import argparse

import pytest

from latentprobe import config as configuration
from latentprobe.training.pretrain import TrainConfig


def _parse(argv):
    parser = argparse.ArgumentParser()
    configuration.add_config_arguments(parser, TrainConfig)
    return parser.parse_args(argv)


def test_defaults_then_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nlr: 0.01\nmodel_args: {c1: 8}\n")
    cfg = configuration.resolve(TrainConfig, _parse(["--config", str(path), "--lr", "0.002", "--no-download"]))
    assert (cfg.epochs, cfg.lr, cfg.model_args, cfg.download) == (7, 0.002, {"c1": 8}, False)
    assert cfg.batch_size == TrainConfig().batch_size


def test_flag_types():
    cfg = configuration.resolve(TrainConfig, _parse(["--model-args", "mask_ratio=0.6 norm_pix_loss=true",
                                                     "--subset", "none", "--compile", "yes"]))
    assert cfg.model_args == {"mask_ratio": 0.6, "norm_pix_loss": True}
    assert cfg.subset is None and cfg.compile is True


def test_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit, match="unknown option.*learning_rate"):
        configuration.resolve(TrainConfig, _parse(["--config", str(path)]))
    with pytest.raises(SystemExit):
        _parse(["--learning-rate", "0.1"])
    with pytest.raises(ValueError, match="unknown option"):
        configuration.resolve(TrainConfig, None, learning_rate=0.1)


def test_resolved_config_is_saved(tmp_path):
    cfg = configuration.resolve(TrainConfig, None, epochs=2)
    configuration.save_resolved(cfg, tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert "epochs: 2" in text and "command:" in text
