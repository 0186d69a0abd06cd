"""MAE pretraining throughput: images/s of real training steps, data path included.

    OMP_NUM_THREADS=2 python benchmarks/bench_mae.py [--models mae_vit_tiny_patch4 mae_vit_tiny_patch2]
        [--batch-size 128 [256 ...]] [--steps 6] [--device auto] [--compile [--compile-mode MODE]]
        [--threads N] [--model-args "decoder_embed_dim=192 decoder_num_heads=3"] [--profile]
        [--system-malloc] [--peak-tflops X]

Each step is what `latentprobe train` does (`engine.train_one_epoch`): index a batch of uint8
images already on the device, normalise it there, forward + backward of `model.loss` (bf16
autocast on CUDA) and an AdamW step with the run's parameter groups. One epoch of warm-up steps
is run first (and compiles, with --compile); the timed epoch is ``--steps`` batches long.
Like the `latentprobe` command, it first lets glibc's malloc keep freed memory
(`engine.keep_freed_memory`); --system-malloc measures the default allocator instead.
It also prints images per CPU-second of the process (what counts when other jobs share the
cores) and the MACs per image of one training forward (torch's flop counter). With --profile, two
more steps run under torch.profiler (CPU) and the step time is split into GEMMs, GELU, attention
and the rest, with the rate the step would reach if the rest, or everything but the GEMMs, cost
nothing: the ceiling that any implementation of the same arithmetic meets on this machine.
On CUDA it also prints the peak memory of the step and the MFU: training FLOPs (3 × 2 × the
forward MACs: backward costs about twice the forward) per second over the GPU's dense bf16 peak
(``--peak-tflops``; known for H100/H200), and --profile reports how much of the step the GPU is busy
and the kernels that take its time (launch-bound steps show a GPU idle between many small kernels).
Numbers go to docs/RESULTS.md with the machine, thread count and date.
"""

import argparse
import datetime
import itertools
import os
import platform
import time

import torch
from torch.profiler import ProfilerActivity, profile

from latentprobe.config import parse_mapping
from latentprobe.data.cifar import Normalizer, load_split
from latentprobe.distributed import local_device
from latentprobe.models import create_model
from latentprobe.report.summary import count_macs
from latentprobe.training.engine import (
    COMPILE_MODES,
    Objective,
    build_optimizer,
    compile_objective,
    keep_freed_memory,
    train_one_epoch,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Profiler operator names (prefixes) of the step's kernel families on the CPU.
FAMILIES = {"GEMM": ("aten::mm", "aten::addmm", "aten::bmm"), "GELU": ("aten::gelu",),
            "attention": ("aten::_scaled_dot_product",)}


def split_step_time(step, steps: int) -> dict:
    """Seconds per step spent in each kernel family (self CPU time) and in total, over ``steps`` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    seconds = {family: sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / 1e6 / steps
               for family, prefixes in FAMILIES.items()}
    seconds["total"] = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
    return seconds


# Dense bf16 tensor-core peak (TFLOP/s, datasheet, SXM parts) by a word of the GPU's name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for word, peak in PEAK_TFLOPS.items() if word in name), None)


def gpu_busy(step, steps: int, wall_seconds: float) -> dict:
    """Kernel time per step against the step's wall time, kernel launches per step, top kernels."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    count = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.time_range.elapsed_us() / 1e6 / steps
            count += 1
    busy = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda item: -item[1])[:6]
    return {"busy_s": busy, "busy_share": busy / wall_seconds, "kernels_per_step": count / steps, "top": top}


def bench(name: str, model_args: dict, images: torch.Tensor, batch_size: int, args, device) -> dict:
    torch.compiler.reset()  # each measurement compiles afresh
    torch.manual_seed(0)
    model = create_model(name, **model_args).to(device)
    macs = count_macs(model, torch.randn(2, 3, 32, 32, device=device)) / 2
    optimizer = build_optimizer(model, "adamw", 1.5e-4 * batch_size / 256, 0.05)
    objective = Objective(model)
    if args.compile:
        objective = compile_objective(objective, args.compile_mode)
    normalizer = Normalizer("cifar10", device)
    run = dict(batch_size=batch_size, lr_fn=lambda step: 1e-4, first_step=0)
    warm = images[:batch_size * args.warmup_steps]
    train_one_epoch(objective, optimizer, warm, normalizer, generator=torch.Generator().manual_seed(0), **run)
    timed = images[:batch_size * args.steps]
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_one_epoch(objective, optimizer, timed, normalizer, generator=torch.Generator().manual_seed(1), **run)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    split = busy = None
    if args.profile:
        profiled = images[:batch_size * 2]

        def step():
            train_one_epoch(objective, optimizer, profiled, normalizer, generator=torch.Generator().manual_seed(2),
                            **run)
        if device.type == "cuda":
            busy = gpu_busy(step, 2, seconds / args.steps)
        else:
            split = split_step_time(step, 2)
    images_per_s = len(timed) / seconds
    peak = peak_tflops(device, args.peak_tflops)
    # On a shared CPU the wall-clock rate depends on the neighbours; images per CPU-second of
    # this process (x threads) estimates what the same threads give on an idle machine.
    return {"model": name, "batch_size": batch_size, "images_per_s": images_per_s,
            "images_per_cpu_s": len(timed) / cpu_seconds, "gmacs_per_image": macs / 1e9,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "split": split, "busy": busy,
            "mfu": images_per_s * 6 * macs / (peak * 1e12) if peak else None,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mae_vit_tiny_patch4", "mae_vit_tiny_patch2"])
    parser.add_argument("--model-args", type=parse_mapping, default={}, help="'key=value ...' for every model")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128], help="one or more batch sizes")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as set)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for the MFU (default: known for H100/H200/A100)")
    parser.add_argument("--profile", action="store_true", help="split the step time by kernel family (CPU)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the latentprobe command keeps freed memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = not args.system_malloc and keep_freed_memory()
    device = local_device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}  device {device} {gpu}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, compile {args.compile and args.compile_mode}, bf16 {device.type == 'cuda'}, "
          f"malloc keeps freed memory {reused}")
    count = max(args.batch_size) * max(args.steps, args.warmup_steps)
    try:
        images = load_split("cifar10", "train", download=False).images[:count]
    except Exception:  # noqa: BLE001 - a benchmark runs on random pixels as well
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    images = images.to(device)
    for name, batch_size in itertools.product(args.models, args.batch_size):
        result = bench(name, args.model_args, images, batch_size, args, device)
        gpu = (f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else "") + (
            f", peak memory {result['peak_gib']:.2f} GiB" if result["peak_gib"] is not None else "")
        print(f"{name} {args.model_args or ''} batch {batch_size}: {result['images_per_s']:.1f} images/s "
              f"(wall clock; {result['images_per_cpu_s']:.1f} per CPU-second of this process{gpu}) "
              f"({result['params_m']:.2f} M parameters, {result['gmacs_per_image']:.3f} GMACs/image forward)",
              flush=True)
        if busy := result["busy"]:
            top = "; ".join(f"{kernel[:60]} {seconds * 1e3:.2f} ms" for kernel, seconds in busy["top"])
            print(f"  GPU busy {busy['busy_s'] * 1e3:.2f} ms of a {batch_size / result['images_per_s'] * 1e3:.2f} ms "
                  f"step ({busy['busy_share']:.0%}), {busy['kernels_per_step']:.0f} kernels per step; top: {top}",
                  flush=True)
        if split := result["split"]:
            shares = ", ".join(f"{k} {v:.3f} s ({v / split['total']:.0%})" for k, v in split.items() if k != "total")
            kernels = split["GEMM"] + split["GELU"] + split["attention"]
            print(f"  per step {split['total']:.3f} s: {shares}; images/s if only GEMMs cost time: "
                  f"{batch_size / split['GEMM']:.1f}, if only GEMM + GELU + attention: "
                  f"{batch_size / kernels:.1f}", flush=True)


if __name__ == "__main__":
    main()
