"""Tiny runs for the evaluation tests: 1-epoch conv autoencoders on synthetic CIFAR folders."""

import pickle
from pathlib import Path

import numpy as np

from latentprobe.probe.evaluate import EvalConfig
from latentprobe.training.pretrain import TrainConfig, train

# A protocol small enough for tests: every code path, a few seconds.
FAST = dict(probe_seeds=2, probe_epochs=4, probe_patience=2, probe_lrs=[1e-2], probe_weight_decays=[0.0, 1e-4],
            knn_k=[3, 10], mlp_hidden=32, device="cpu", threads=1)


def numbers(probes: dict) -> dict:
    """Probe results without the seconds they took (the one field two equal runs differ in)."""
    return {name: {k: v for k, v in probe.items() if k != "seconds"} for name, probe in probes.items()}


def fast_config(**overrides) -> EvalConfig:
    return EvalConfig(**{**FAST, **overrides})


def train_tiny_run(data_root: Path, out: Path, *, dataset: str = "cifar10", seed: int = 0,
                   latent_dim: int = 16, val_size: int = 60) -> Path:
    return train(TrainConfig(model="conv_ae", latent_dim=latent_dim, model_args={"c1": 4, "c2": 8},
                             dataset=dataset, data_dir=str(data_root), download=False, val_size=val_size,
                             epochs=1, batch_size=64, seed=seed, device="cpu", out=str(out)))


def write_noisy_cifar10(root: Path, per_batch: int = 400, test: int = 1000, noise: float = 110.0) -> Path:
    """CIFAR-10 layout where each class is a smooth random pattern under heavy noise, so that
    probes land well below 100 % and differences between classifiers would show."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    prototypes = np.kron(rng.normal(0, 1, (10, 3, 4, 4)), np.ones((1, 1, 8, 8)))  # (10, 3, 32, 32)

    def dump(name: str, record: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(record, f, protocol=2)

    dump("batches.meta", {"label_names": [f"class_{i}" for i in range(10)]})
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        images = 128 + 25 * prototypes[labels] + rng.normal(0, noise, (n, 3, 32, 32))
        dump(name, {"labels": labels.tolist(),
                    "data": np.clip(images, 0, 255).astype(np.uint8).reshape(n, -1)})
    return root
