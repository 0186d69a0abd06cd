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
def knn_predict(train_features, train_labels: torch.Tensor, queries, num_classes: int,
                ks: tuple[int, ...] = (20, 200), temperature: float = 0.07, batch_size: int = 512,
                bank_chunk: int = 16384) -> dict[int, torch.Tensor]:
    """Predicted labels of ``queries`` (Q, D) for every k in ``ks``: ``{k: (Q,) int64}``.

    The features may be tensors or FeatureMatrix files. Runs on the device of ``train_labels``;
    the training features are read once, ``bank_chunk`` rows at a time, and every query keeps its
    running top k; queries go through in batches so that a (batch, bank_chunk) similarity
    matrix, not a (Q, N) one, bounds the memory.
    """
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be positive, got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"kNN needs k >= 1, got {list(ks)}")
    device = train_labels.device
    k_max = min(max(ks), len(train_features))
    query = torch.cat([F.normalize(queries[i:i + batch_size].to(device).float(), dim=1)
                       for i in range(0, len(queries), batch_size)])  # (Q, D), unit rows
    best = torch.full((len(query), 0), -float("inf"), device=device)  # (Q, ≤ k_max) most similar first
    best_labels = torch.zeros((len(query), 0), dtype=torch.long, device=device)
    for start in range(0, len(train_features), bank_chunk):
        bank = F.normalize(train_features[start:start + bank_chunk].to(device).float(), dim=1)  # (b, D)
        bank_labels = train_labels[start:start + bank_chunk].to(device)
        tops, top_labels = [], []
        for q in range(0, len(query), batch_size):
            similarity = torch.cat([best[q:q + batch_size], query[q:q + batch_size] @ bank.T], dim=1)
            labels = torch.cat([best_labels[q:q + batch_size], bank_labels.expand(len(similarity), -1)], dim=1)
            top, index = similarity.topk(min(k_max, similarity.shape[1]), dim=1)
            tops.append(top)
            top_labels.append(labels.gather(1, index))
        best, best_labels = torch.cat(tops), torch.cat(top_labels)
    weights = (best / temperature).exp()
    predictions = {}
    for k in ks:
        k_used = min(k, k_max)
        votes = torch.zeros(len(query), num_classes, device=device)
        votes.scatter_add_(1, best_labels[:, :k_used], weights[:, :k_used])  # (Q, C)
        predictions[k] = votes.argmax(dim=1).cpu()
    return predictions
