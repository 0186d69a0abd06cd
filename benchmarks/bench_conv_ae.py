"""Conv-autoencoder training throughput, data-path overhead, and linear-probe time.

    python benchmarks/bench_conv_ae.py [--latent-dim 256] [--images 10000] [--device auto]

Prints images/s of a real training epoch (`engine.train_one_epoch`: batching, normalisation,
forward, backward, Adam step), the share of that epoch spent outside forward/backward/step
(target on CPU: at most 15%), and the time of the study's linear probe over cached latents
(45,000 × latent features, 30 epochs). Results go to docs/RESULTS.md with the machine and date.
"""

import argparse
import os
import platform
import time

import torch

from latentprobe.data.cifar import Normalizer, load_split
from latentprobe.distributed import local_device
from latentprobe.models import create_model
from latentprobe.probe.features import FeatureSet
from latentprobe.options import ProbeConfig
from latentprobe.probe.evaluate import evaluate_features
from latentprobe.training.engine import Objective, autocast, train_one_epoch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_only(model, optimizer, batch: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` forward/backward/step on one pre-normalised batch."""
    device = batch.device
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device):
            loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-dim", type=int, default=256)
    parser.add_argument("--images", type=int, default=10000, help="images in the timed epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--probe-images", type=int, default=45000, help="training latents of the timed probe")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = local_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")

    try:
        images = load_split("cifar10", "train", download=False).images[:args.images]
    except Exception:  # noqa: BLE001 - a benchmark runs on random pixels as well
        images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    images = images.to(device)
    normalizer = Normalizer("cifar10", device)
    torch.manual_seed(0)
    model = create_model("conv_ae", latent_dim=args.latent_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    objective = Objective(model)

    warm = images[:args.batch_size * 4]
    train_one_epoch(objective, optimizer, warm, normalizer, batch_size=args.batch_size,
                    generator=torch.Generator().manual_seed(0), lr_fn=lambda s: 1e-3, first_step=0)
    sync(device)
    start = time.perf_counter()
    stats = train_one_epoch(objective, optimizer, images, normalizer, batch_size=args.batch_size,
                            generator=torch.Generator().manual_seed(1), lr_fn=lambda s: 1e-3, first_step=0)
    sync(device)
    epoch_seconds = time.perf_counter() - start
    steps = -(-len(images) // args.batch_size)
    compute = compute_only(model, optimizer, normalizer(images[:args.batch_size]), steps)
    outside = max(0.0, 1.0 - compute / epoch_seconds)
    print(f"conv_ae latent {args.latent_dim}: {stats['images_per_s']:.0f} images/s "
          f"({len(images)} images in {epoch_seconds:.2f} s, batch {args.batch_size})")
    print(f"time outside forward/backward/step: {100 * outside:.1f}% of the epoch "
          f"(compute alone {compute:.2f} s)")

    gen = torch.Generator().manual_seed(0)
    count = args.probe_images
    sizes = {"train": count, "val": max(1, count // 9), "test": max(1, 2 * count // 9)}  # as 45,000 / 5,000 / 10,000
    data = FeatureSet({k: torch.randn(n, args.latent_dim, generator=gen) for k, n in sizes.items()},
                      {k: torch.randint(0, 10, (n,), generator=gen) for k, n in sizes.items()},
                      [str(i) for i in range(10)])
    start = time.perf_counter()
    evaluate_features(data, ProbeConfig(probe_epochs=30).evaluation(), device)
    sync(device)
    print(f"linear probe, {args.probe_images:,} x {args.latent_dim} cached latents, 30 epochs: "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
