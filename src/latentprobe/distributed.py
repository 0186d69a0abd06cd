"""torchrun / DistributedDataParallel support, a no-op in a single process.

Under ``torchrun`` every rank trains on its own share of one shared permutation, rank 0
alone writes checkpoints, metrics and pictures, and metrics are averaged across ranks.
"""

import os
import platform

import torch
import torch.distributed as dist

from latentprobe.options import check_device


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_device(requested: str) -> torch.device:
    """``auto`` → CUDA if present (this rank's GPU under torchrun), else CPU; CUDA asked for on a
    machine without it is one clear line."""
    check_device(requested)
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index (recent torch refuses a bare "cuda")
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def machine(device: torch.device) -> str:
    """The hardware a number was measured on, in words: the GPU's name, or the CPU's model and the
    threads torch uses (never the host's name)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model} CPU, {threads} thread{'s' if threads != 1 else ''}"


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(packed)
    packed /= dist.get_world_size()
    return dict(zip(keys, packed.tolist()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

