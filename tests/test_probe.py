import torch

from latentprobe.probe.features import FeatureSet
from latentprobe.probe.heads import ProbeConfig, train_probe


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs far apart in 16-d: linearly separable."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    centres = torch.eye(16)[:4] * 6
    return centres[labels] + torch.randn(n, 16, generator=gen), labels


def test_linear_probe_separates_a_separable_set():
    splits = {name: _separable(n, seed) for name, n, seed in (("train", 800, 0), ("val", 200, 1), ("test", 400, 2))}
    data = FeatureSet({k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()},
                      ["a", "b", "c", "d"])
    for head in ("linear", "bn_linear"):
        result = train_probe(data, ProbeConfig(head=head, probe_epochs=20, probe_batch_size=32, probe_seed=0))
        assert result.test_acc > 0.95, head
        assert result.val_acc == max(h["val_acc"] for h in result.history)
        assert result.confusion.sum() == 400 and result.confusion.trace() == round(result.test_acc * 400)
