"""The probe grid: seconds to train every (lr, weight decay) point of ``evaluate``'s grid.

    python benchmarks/bench_probe.py [--images 20000] [--dim 32000] [--epochs 3]
    python benchmarks/paired.py --base c3a2660 -- python benchmarks/bench_probe.py   # side by side

Synthetic features shaped like the headline latent (32,000 values, 10 classes), the headline's
probe (BatchNorm + linear, cosine lr, batch 256) over the default grid of 2 lrs × 2 weight decays.
This tree trains the grid as ``evaluate`` does now: every point a head of one pass over float16
features read from disk in batches. A version without that (git c3a2660) trains the points one
after the other over float32 features held in memory, as its ``evaluate`` did. The last line is
JSON, which ``paired.py`` reads; peak memory is the process's (the features held, or not).
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = [(1e-3, 0.0), (1e-3, 1e-4), (3e-3, 0.0), (3e-3, 1e-4)]


def features(count: int, dim: int, seed: int, chunk: int = 2048):
    """Labels (count,) and an iterator of feature chunks: class centres plus noise, rectified."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    centres = torch.randn(10, dim, generator=generator)
    chunks = ((centres[labels[i:i + chunk]] + 4 * torch.randn(len(labels[i:i + chunk]), dim,
                                                                generator=generator)).relu()
              for i in range(0, count, chunk))
    return labels, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=32000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from latentprobe.probe import heads

    splits = {"train": features(args.images, args.dim, 0), "val": features(args.images // 9, args.dim, 1)}
    options = dict(epochs=args.epochs, batch_size=256, seed=0, patience=None, schedule="cosine")
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(heads, "fit_heads"):  # features stored as float16 files, the grid in one pass
            from latentprobe.probe.store import CacheWriter, read_cache

            writer = CacheWriter(Path(tmp) / "bench")
            for name, (labels, chunks) in splits.items():
                writer.add(name, len(labels), chunks, labels)
            writer.commit({}, [str(c) for c in range(10)])
            stored, labels, _ = read_cache(Path(tmp) / "bench", {})
            train, val = (stored["train"], labels["train"]), (stored["val"], labels["val"])
            start = time.perf_counter()
            heads.fit_heads("bn_linear", train, val, 10, settings=SETTINGS, **options)
        else:  # one fit per grid point over float32 features in memory
            train, val = ((torch.cat(list(chunks)), labels) for labels, chunks in splits.values())
            start = time.perf_counter()
            for lr, weight_decay in SETTINGS:
                heads.fit_head("bn_linear", train, val, 10, lr=lr, weight_decay=weight_decay, **options)
        seconds = time.perf_counter() - start
    print(json.dumps({"grid_seconds": seconds, "images": args.images, "dim": args.dim, "epochs": args.epochs,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
