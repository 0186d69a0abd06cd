import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from latentprobe.training import engine

# A fresh process runs twenty "steps" that each allocate a few large tensors (over glibc's 32 MiB
# mmap threshold) and prints the page faults of the last fifteen. By default glibc maps each such
# block anew and unmaps it on free, so every step faults all its pages in again; once freed
# memory is kept, the heap grows in the first steps (and now and then later, when fragments do
# not fit) and is reused otherwise.
LAST_STEPS_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from latentprobe.training.engine import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def step():
        hidden = torch.ones(12 << 20)  # 48 MiB
        return (hidden * 2).sum().item() + torch.ones(9 << 20).sum().item()
    for _ in range(5):
        step()
    before = faults()
    for _ in range(15):
        step()
    print(faults() - before)
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning applies to glibc only")
def test_kept_memory_is_reused_without_page_faults():
    def last_steps_faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", LAST_STEPS_FAULTS, mode], env={**os.environ, "OMP_NUM_THREADS": "1"},
                                capture_output=True, text=True, check=True)
        return int(result.stdout)

    pages = (2 * (12 << 20) + (9 << 20)) * 4 // 4096  # the step's three float32 blocks: 132 MiB
    system = last_steps_faults("system")
    assert system > 10 * pages
    assert last_steps_faults("keep") < system / 5


def test_keep_freed_memory_does_nothing_outside_glibc(monkeypatch):
    monkeypatch.setattr(engine.platform, "libc_ver", lambda: ("", ""))
    assert engine.keep_freed_memory() is False


@pytest.mark.parametrize("opt_out", [False, True])
def test_the_command_keeps_freed_memory_unless_told_not_to(monkeypatch, capsys, opt_out):
    from latentprobe import cli

    calls = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append(True))  # the command imports it on start
    if opt_out:
        monkeypatch.setenv("LATENTPROBE_SYSTEM_MALLOC", "1")
    else:
        monkeypatch.delenv("LATENTPROBE_SYSTEM_MALLOC", raising=False)
    cli.main(["models"])
    assert "conv_ae" in capsys.readouterr().out
    assert calls == ([] if opt_out else [True])


def test_compile_objective_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; use one of default, reduce-overhead"):
        engine.compile_objective(torch.nn.Linear(2, 2), "fast")


def test_optimizer_is_fused_on_cuda_only():
    optimizer = engine.build_optimizer(torch.nn.Linear(2, 2), "adamw", 1e-3, 0.05)
    assert not optimizer.defaults["fused"]  # CPU parameters: the default implementation
