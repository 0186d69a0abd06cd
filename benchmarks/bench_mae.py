"""MAE pretraining throughput: images/s of real training steps, data path included.

    OMP_NUM_THREADS=2 python benchmarks/bench_mae.py [--models mae_vit_tiny_patch4 mae_vit_tiny_patch2]
        [--batch-size 128] [--steps 6] [--device auto] [--compile] [--threads N]
        [--model-args "decoder_embed_dim=192 decoder_num_heads=3"]

Each step is what `latentprobe train` does (`engine.train_one_epoch`): index a batch of uint8
images already on the device, normalise it there, forward + backward of `model.loss` (bf16
autocast on CUDA) and an AdamW step with the run's parameter groups. One epoch of warm-up steps
is run first (and compiles, with --compile); the timed epoch is ``--steps`` batches long.
It also prints images per CPU-second of the process (what counts when other jobs share the
cores) and the MACs per image of one training forward (torch's flop counter). Numbers go to
docs/RESULTS.md with the machine, thread count and date.
"""

import argparse
import datetime
import os
import platform
import time

import torch

from latentprobe.config import _parse_mapping
from latentprobe.data import Normalizer, load_split
from latentprobe.distributed import local_device
from latentprobe.engine import Objective, build_optimizer, train_one_epoch
from latentprobe.models import create_model
from latentprobe.summary import count_macs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, model_args: dict, images: torch.Tensor, args, device) -> dict:
    torch.manual_seed(0)
    model = create_model(name, **model_args).to(device)
    macs = count_macs(model, torch.randn(2, 3, 32, 32, device=device)) / 2
    optimizer = build_optimizer(model, "adamw", 1.5e-4 * args.batch_size / 256, 0.05)
    objective = Objective(model)
    if args.compile:
        objective = torch.compile(objective)
    normalizer = Normalizer("cifar10", device)
    run = dict(batch_size=args.batch_size, lr_fn=lambda step: 1e-4, first_step=0)
    warm = images[:args.batch_size * args.warmup_steps]
    train_one_epoch(objective, optimizer, warm, normalizer, generator=torch.Generator().manual_seed(0), **run)
    timed = images[:args.batch_size * args.steps]
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_one_epoch(objective, optimizer, timed, normalizer, generator=torch.Generator().manual_seed(1), **run)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # On a shared CPU the wall-clock rate depends on the neighbours; images per CPU-second of
    # this process (x threads) estimates what the same threads give on an idle machine.
    return {"model": name, "images_per_s": len(timed) / seconds,
            "images_per_cpu_s": len(timed) / cpu_seconds, "gmacs_per_image": macs / 1e9,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mae_vit_tiny_patch4", "mae_vit_tiny_patch2"])
    parser.add_argument("--model-args", type=_parse_mapping, default={}, help="'key=value ...' for every model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as set)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = local_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}  device {device} {gpu}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, batch {args.batch_size}, compile {args.compile}, bf16 {device.type == 'cuda'}")
    count = args.batch_size * max(args.steps, args.warmup_steps)
    try:
        images = load_split("cifar10", "train", download=False).images[:count]
    except Exception:  # noqa: BLE001 - a benchmark runs on random pixels as well
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    images = images.to(device)
    for name in args.models:
        result = bench(name, args.model_args, images, args, device)
        print(f"{name} {args.model_args or ''}: {result['images_per_s']:.1f} images/s "
              f"(wall clock; {result['images_per_cpu_s']:.1f} per CPU-second of this process) "
              f"({result['params_m']:.2f} M parameters, {result['gmacs_per_image']:.3f} GMACs/image forward)",
              flush=True)


if __name__ == "__main__":
    main()
