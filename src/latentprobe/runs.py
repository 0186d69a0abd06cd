"""A run is a directory: config.yaml, checkpoint.pt, metrics.jsonl, TensorBoard events, PNGs.

Metrics are one JSON object per epoch; plots and reports are made from these files later,
so a report can be rebuilt without retraining.
"""

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"


class RunInUse(Exception):
    """Another process is writing into the run directory."""


@contextmanager
def exclusive(run_dir: Path):
    """One writer per run directory: an advisory lock (``flock``) on RUN/.lock, held while the
    block runs. The operating system drops it when the process ends, by kill -9 too, so no stale
    lock is ever left; the file keeps the holder's pid for the message a second writer gets."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunInUse(f"{run_dir} is being written by another latentprobe process (pid {holder}); "
                           f"wait for it to finish, or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Rewrite a whole JSON-lines file atomically (used when a run resumes)."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, record) -> None:
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class TensorBoard:
    """A SummaryWriter that is only opened on the writing rank and closed cleanly."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(Path(directory) / "tensorboard"))

    def scalars(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
