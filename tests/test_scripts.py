"""Every script and benchmark runs, in its tiny mode, so none can rot unseen (synthetic CIFAR files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_cifar10

ROOT = Path(__file__).parents[1]
TINY = {  # each script with arguments that make it run in seconds
    "benchmarks/bench_patch_ae.py": [["encode", "--filters", "16", "--images", "16"],
                                     ["train", "--filters", "16", "--images", "64"]],
    "benchmarks/bench_startup.py": [["--repeats", "1"]],
    "benchmarks/bench_probe.py": [["--images", "300", "--dim", "64", "--epochs", "1"]],
    "benchmarks/bench_conv_ae.py": [["--latent-dim", "16", "--images", "128", "--batch-size", "32",
                                     "--probe-images", "300"]],
    "benchmarks/bench_mae.py": [["--models", "mae_vit_micro_patch4", "--batch-size", "4", "--steps", "1",
                                 "--warmup-steps", "1"]],
    "scripts/cifar_to_folder.py": [["--count", "30", "--out", "{tmp}/png"]],
    "scripts/screen_conv_ae.py": [["tiny", "--latent-dim", "8", "--epochs", "1", "--val-size", "40", "--out", "{tmp}"]],
    "scripts/screen_two_layers.py": [["120", "4", "16", "--iterations", "2", "--whitening-patches", "2000", "--test"]],
    "scripts/screen_patch_dictionaries.py": [["120", "4", "kmeans_triangle", "wta_soft:1", "wta_soft_standardised",
                                              "kmeans_triangle_before", "--val-images", "40",
                                              "--whitening-patches", "2000", "--probe-epochs", "2"]],
}


def test_every_script_and_benchmark_is_listed():
    found = {str(p.relative_to(ROOT)) for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py")}
    assert found == set(TINY) | {"benchmarks/paired.py"}


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("scripts") / "data", per_batch=40, test=40)


@pytest.mark.parametrize("script, args", [(s, a) for s, runs in TINY.items() for a in runs],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:30])
def test_the_script_runs_in_its_tiny_mode(script, args, synthetic_data, tmp_path):
    env = {**os.environ, "LATENTPROBE_DATA": str(synthetic_data), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(ROOT / script), *(a.replace("{tmp}", str(tmp_path)) for a in args)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_paired_runs_two_versions_in_turn_with_their_ratio(tmp_path):
    command = [sys.executable, "-c", "import json, latentprobe; print(json.dumps({'answer': 42}))"]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/paired.py"), "--base", "HEAD", "--pairs", "1",
                             "--", *command], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "answer" in result.stdout and "ratio 1.000" in result.stdout


@pytest.mark.parametrize("script", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.sh")))
def test_the_shell_benchmarks_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0
    assert json.dumps(script)  # named in RESULTS with the command that runs it
