import math

import pytest
import torch

from latentprobe.probe.knn import knn_predict


def brute_force(train_x, train_y, queries, num_classes, ks, temperature):
    """One query at a time, in plain Python: sort by cosine similarity, exp-weighted votes."""
    bank = [(row, math.sqrt(sum(v * v for v in row)), y) for row, y in zip(train_x.tolist(), train_y.tolist())]
    predictions = {k: [] for k in ks}
    for q in queries.tolist():
        q_norm = math.sqrt(sum(v * v for v in q))
        sims = sorted(((sum(a * b for a, b in zip(q, row)) / (q_norm * norm), y) for row, norm, y in bank),
                      key=lambda item: -item[0])
        for k in ks:
            votes = [0.0] * num_classes
            for cos, y in sims[:k]:
                votes[y] += math.exp(cos / temperature)
            predictions[k].append(max(range(num_classes), key=lambda c: votes[c]))
    return {k: torch.tensor(v) for k, v in predictions.items()}


def test_knn_matches_brute_force_reference():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=gen)
    centres = torch.randn(5, 12, generator=gen)
    train_x = centres[labels[:240]] + 1.5 * torch.randn(240, 12, generator=gen)
    queries = centres[labels[240:]] + 1.5 * torch.randn(60, 12, generator=gen)
    got = knn_predict(train_x, labels[:240], queries, 5, ks=(1, 7, 20, 240), temperature=0.1, batch_size=16)
    reference = brute_force(train_x, labels[:240], queries, 5, (1, 7, 20, 240), 0.1)
    for k in (1, 7, 20, 240):
        assert torch.equal(got[k], reference[k]), k
    assert (got[20] == labels[240:]).float().mean() > 0.5  # and it is a classifier


def test_knn_is_deterministic_and_clips_k():
    train_x, train_y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    queries = torch.randn(10, 4)
    first = knn_predict(train_x, train_y, queries, 3, ks=(200,))
    assert torch.equal(first[200], knn_predict(train_x, train_y, queries, 3, ks=(200,))[200])
    assert first[200].shape == (10,)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"ks": (0,)}, {"ks": ()}])
def test_knn_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        knn_predict(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 3), 2, **kwargs)
