"""Device choice: a bare "cuda" is given an index before torch.cuda.set_device sees it."""

import torch

from latentprobe.distributed import local_device


def test_bare_cuda_gets_the_current_index(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device("cuda") == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]  # torch 2.11 refuses set_device(torch.device("cuda"))
