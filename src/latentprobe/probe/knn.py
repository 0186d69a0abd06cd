"""Weighted k-nearest-neighbour classifier over cached features (cosine similarity).

Each query takes its k most similar training features; neighbour j votes for its class with
weight exp(s_j / T), s_j the cosine similarity and T the temperature, so close neighbours
count for more than far ones. There is nothing to train and no randomness: the same features
give the same predictions, which is why kNN results carry a standard deviation of 0 over probe
seeds. Several k are answered from one top-k search (the largest k).
"""

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int, ks: tuple[int, ...] = (20, 200), temperature: float = 0.07,
                batch_size: int = 512) -> dict[int, torch.Tensor]:
    """Predicted labels of ``queries`` (Q, D) for every k in ``ks``: ``{k: (Q,) int64}``.

    Runs on the device of ``train_features``; queries go through in batches so that the
    (batch, N) similarity matrix, not a (Q, N) one, bounds the memory.
    """
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be positive, got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"kNN needs k >= 1, got {list(ks)}")
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)  # (N, D), unit rows
    bank_labels = train_labels.to(device)
    k_max = min(max(ks), len(bank))
    predictions = {k: [] for k in ks}
    for start in range(0, len(queries), batch_size):
        query = F.normalize(queries[start:start + batch_size].to(device).float(), dim=1)  # (B, D)
        similarity, index = (query @ bank.T).topk(k_max, dim=1)  # (B, k_max), most similar first
        weights = (similarity / temperature).exp()
        neighbour_labels = bank_labels[index]  # (B, k_max)
        for k in ks:
            k_used = min(k, k_max)
            votes = torch.zeros(len(query), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])  # (B, C)
            predictions[k].append(votes.argmax(dim=1))
    return {k: torch.cat(parts).cpu() for k, parts in predictions.items()}
