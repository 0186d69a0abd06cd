"""Dense encoding of the patch autoencoder: images/s and feature memory.

    python benchmarks/bench_patch_ae.py [--filters 4000] [--images 50000] [--encoding soft_threshold]

Times what feature extraction does (`engine.extract` over `model.encode`: every 6×6 patch of
each image contrast-normalised, whitened, encoded, and sum-pooled per quadrant) on real CIFAR-10
training images, and reports the features' size (N × latent_dim float32) beside the process's
peak resident memory, to show that K = 4,000 fits a 24 GiB machine. The filters are untrained
(speed does not depend on their values); the whitening is fitted as `train` fits it.
Results go to docs/RESULTS.md with the machine and date.
"""

import argparse
import platform
import resource
import time

import torch

from latentprobe.data.cifar import Normalizer, load_split
from latentprobe.distributed import local_device
from latentprobe.models import create_model
from latentprobe.training.engine import extract, keep_freed_memory, prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=4000)
    parser.add_argument("--encoding", default="soft_threshold", choices=["relu", "soft_threshold"])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    keep_freed_memory()  # as the latentprobe command does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = local_device(args.device)
    per_filter = 8 if args.encoding == "soft_threshold" else 4
    model = create_model("patch_ae", latent_dim=per_filter * args.filters, encoding=args.encoding).to(device).eval()
    images = load_split("cifar10", "train").images[:args.images].to(device)
    normalizer = Normalizer("cifar10", device)
    prepare_model(model, images, normalizer, seed=0)
    extract(model.encode, images[:100], normalizer)  # warm-up
    start = time.perf_counter()
    features = extract(model.encode, images, normalizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {device}")
    print(f"patch_ae K={args.filters} {args.encoding}: {len(images)} images → {tuple(features.shape)} in "
          f"{seconds:.1f} s = {len(images) / seconds:.1f} images/s; features {features.numel() * 4 / 2**30:.2f} GiB "
          f"(50,000 images: {50_000 * features.shape[1] * 4 / 2**30:.2f} GiB); peak resident {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
