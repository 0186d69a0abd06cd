"""The patch autoencoder's two long stages: dense encoding and training, with their speed limits.

    python benchmarks/bench_patch_ae.py encode [--filters 4000] [--images 2000] [--precision bfloat16]
    python benchmarks/bench_patch_ae.py train  [--filters 4000] [--images 12800] [--precision bfloat16]
    python benchmarks/paired.py --base c3a2660 -- python benchmarks/bench_patch_ae.py encode   # side by side

``encode`` times what feature extraction does (``engine.extract`` over ``model.encode``: every
6×6 patch of each image contrast-normalised, whitened, encoded, sum-pooled per quadrant) on real
CIFAR-10 images; it reports images/s, the GFLOP/s of the encoding's one large matrix product
(2 · 729 positions · 108 · K per image) and, measured in the same process, the GFLOP/s of a plain
``torch.mm`` of the same shape and dtype, so the distance to the machine's own limit shows
(``--precision bfloat16``: the model's option, and a bfloat16 ``torch.mm``). ``train`` times
training steps (the model's loss, backward, Adam) at batch 32, the headline's setting. The
filters are untrained (speed does not depend on their values); the whitening is fitted as
``train`` fits it. The last line is JSON, which ``paired.py`` reads; peak memory is the process's.
"""

import argparse
import json
import platform
import resource
import time

import torch

from latentprobe.data.cifar import Normalizer, load_split
from latentprobe.models import create_model
from latentprobe.training.engine import extract, keep_freed_memory, prepare_model

POSITIONS, PATCH_DIM = 27 * 27, 3 * 6 * 6


def mm_gflops(rows: int, filters: int, dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """GFLOP/s of ``torch.mm`` of (rows, 108) by (108, filters): the encoding's product, alone."""
    a, b = torch.randn(rows, PATCH_DIM, dtype=dtype), torch.randn(PATCH_DIM, filters, dtype=dtype)
    out = torch.empty(rows, filters, dtype=dtype)
    torch.mm(a, b, out=out)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        count += 1
    return 2 * rows * PATCH_DIM * filters * count / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["encode", "train"])
    parser.add_argument("--filters", type=int, default=4000)
    parser.add_argument("--images", type=int, default=None, help="default: 2,000 to encode, 12,800 to train")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                        help="the model's precision option (default: the model's own default)")
    args = parser.parse_args()
    keep_freed_memory()  # as the latentprobe command does
    if args.threads:
        torch.set_num_threads(args.threads)
    count = args.images or (2000 if args.stage == "encode" else 12800)
    torch.manual_seed(0)
    # passed only when asked: a base commit without the option runs the benchmark too
    precision = {"precision": args.precision} if args.precision else {}
    model = create_model("patch_ae", latent_dim=8 * args.filters, activation="winner_take_all", winners=1,
                         encoding="soft_threshold", **precision)
    images = load_split("cifar10", "train").images[:max(count, 5000)]
    normalizer = Normalizer("cifar10")
    prepare_model(model, images[:5000], normalizer, seed=0)
    images = images[:count]
    result = {"filters": args.filters, "images": count, **precision}
    if args.stage == "encode":
        model.eval()
        extract(model.encode, images[:200], normalizer)  # warm-up (and any compilation)
        start = time.perf_counter()
        extract(model.encode, images, normalizer)
        seconds = time.perf_counter() - start
        gflop = 2 * POSITIONS * PATCH_DIM * args.filters * count / 1e9
        result |= {"images_per_s": count / seconds, "gflops": gflop / seconds,
                   "mm_gflops": mm_gflops(8 * POSITIONS, args.filters, getattr(torch, args.precision or "float32"))}
        result["percent_of_mm"] = 100 * result["gflops"] / result["mm_gflops"]
    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        batches = normalizer(images).split(32)

        def step(x):
            loss, _ = model.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for x in batches[:10]:  # warm-up
            step(x)
        start = time.perf_counter()
        for x in batches:
            step(x)
        result["images_per_s"] = count / (time.perf_counter() - start)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
