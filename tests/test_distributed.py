"""Device choice: a bare "cuda" is given an index before torch.cuda.set_device sees it."""

import re

import pytest
import torch

from latentprobe.distributed import local_device


def test_bare_cuda_gets_the_current_index(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device("cuda") == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]  # torch 2.11 refuses set_device(torch.device("cuda"))


@pytest.mark.parametrize("requested, message", [
    ("tpu", "unknown --device 'tpu'; use auto, cpu, cuda or cuda:N"),
    ("cuda", "--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu or auto"),
])
def test_a_device_that_cannot_be_had_is_one_clear_error(monkeypatch, requested, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=re.escape(message)):
        local_device(requested)
