"""latentprobe: how much does an autoencoder's hidden layer know about the image?

The Python API, for notebooks; each name is what the command of the same name runs:

    from latentprobe import EvalConfig, TrainConfig, evaluate_run, train
    run = train(TrainConfig(latent_dim=256, epochs=10, out="runs/ae256"))
    record = evaluate_run(run, EvalConfig(probes=["linear", "knn"]))

Names are imported on first use, so ``latentprobe --help`` does not wait for torch. (A name
never equals a module's: ``latentprobe.probe.evaluate`` is the module, ``evaluate_run`` its entry.)
"""

import importlib

__version__ = "0.1.0"

# public name → (module, name in it)
_API = {
    "Run": ("runs", "Run"),
    "TrainConfig": ("options", "TrainConfig"), "train": ("training.pretrain", "train"),
    "ProbeConfig": ("options", "ProbeConfig"),
    "EvalConfig": ("options", "EvalConfig"), "evaluate_run": ("probe.evaluate", "evaluate_run"),
    "load_eval": ("probe.evaluate", "load_eval"), "evaluate_encoder": ("probe.evaluate", "evaluate_encoder"),
    "FinetuneConfig": ("options", "FinetuneConfig"), "finetune_run": ("training.finetune", "finetune"),
    "CompareConfig": ("options", "CompareConfig"), "write_comparison": ("report.compare", "write_comparison"),
    "StudyConfig": ("options", "StudyConfig"), "run_study": ("study", "run_study"),
    "export_features": ("probe.export", "export_features"), "create_model": ("models", "create_model"),
    "list_models": ("models", "list_models"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'latentprobe' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(importlib.import_module(f"latentprobe.{module}"), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
