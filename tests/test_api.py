"""The Python API: the README's example runs as written, on real CIFAR-10."""

import importlib
import re
from pathlib import Path

import pytest

import latentprobe

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_api_name_resolves_and_none_hides_a_module():
    for name in latentprobe.__all__:
        assert callable(getattr(latentprobe, name)), name
    importlib.import_module("latentprobe.probe.evaluate")  # now the module is an attribute of the package too
    assert latentprobe.evaluate_run.__module__ == "latentprobe.probe.evaluate"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        latentprobe.nope


@pytest.mark.slow
def test_the_readme_python_example_runs(real_data_root, tmp_path, monkeypatch, capsys):
    block = re.search(r"## From Python.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATENTPROBE_DATA", str(real_data_root))
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    accuracy = float(re.search(r"linear probe ([\d.]+)%", printed).group(1))
    assert printed.startswith("conv_ae 64-d latent") and 15 < accuracy < 60  # above chance (10%), a 1-epoch AE
    assert (tmp_path / "runs/api_demo/eval.json").is_file()
