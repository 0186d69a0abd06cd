"""The ``latentprobe`` command: one sub-command per stage.

    latentprobe run      configs/quick.yaml                  an experiment file, end to end
    latentprobe study    [--preset quick|standard|full]     the latent-size study, end to end
    latentprobe train    --model conv_ae --latent-dim 256 --out runs/ae256
    latentprobe evaluate runs/ae256 [--probe-seeds 3]        probes and baselines → eval.json
    latentprobe report   runs/ae64 runs/ae256 --out runs/compare
    latentprobe finetune runs/mae_micro [--freeze-encoder]
    latentprobe export   runs/ae256 --split test
    latentprobe predict  runs/ae256 cat.jpg dog.png
    latentprobe models | summary MODEL

``probe`` is evaluate's one-probe, one-seed case (the study's detector); ``compare`` and
``mae-report`` are cases of ``report``, kept as names.

This module parses only: it imports no heavy library, so ``--help`` and an argument error answer
at once; each handler imports its command where it runs.
"""

import argparse
import errno
import os
import sys
from pathlib import Path

from latentprobe import config as configuration
from latentprobe import options


def cmd_train(args, cfg) -> None:
    import dataclasses

    from latentprobe.training.pretrain import train

    if args.seeds is None:
        train(cfg)
        return
    for seed in range(cfg.seed, cfg.seed + args.seeds):  # one resumable run per seed: OUT/seed_S
        train(dataclasses.replace(cfg, seed=seed, out=str(Path(cfg.out) / f"seed_{seed}")))


def cmd_probe(args, cfg) -> None:
    from latentprobe.probe.evaluate import evaluate_run
    from latentprobe.report.study_report import write_probe_figures

    record = evaluate_run(Path(args.run), cfg.evaluation())
    result = record["representations"]["encoder"]["probes"][cfg.head]
    write_probe_figures(Path(args.run), cfg.head, result, record["class_names"])
    print(f"{args.run}: {cfg.head} probe on {record['latent_dim']}-d latents: validation accuracy "
          f"{100 * result['chosen']['val_acc']:.2f}%, test accuracy {100 * result['test']['mean']:.2f}% "
          f"(epoch {result['chosen']['best_epoch']})")


def cmd_study(args, cfg) -> None:
    from latentprobe.study import run_study

    run_study(cfg)


def cmd_run(args, cfg) -> None:
    from latentprobe.experiment import run_experiment

    print(f"report: {run_experiment(Path(args.experiment))}")


def cmd_report(args, cfg) -> None:
    from latentprobe.report.render import render

    print(render([Path(path) for path in args.paths], cfg, kind=args.kind))


def cmd_evaluate(args, cfg) -> None:
    if not cfg.encoder:
        options.check_run_options(cfg)  # before the heavy imports: a stray option is one line at once
    from latentprobe.probe.evaluate import evaluate_encoder, evaluate_run

    if cfg.encoder:
        if len(args.runs) != 1:
            sys.exit(f"error: --encoder takes one folder, where its results go; got {len(args.runs)}")
        evaluate_encoder(cfg.encoder, Path(args.runs[0]), cfg)
        return
    for run in args.runs:
        evaluate_run(Path(run), cfg)


def cmd_export(args, cfg) -> None:
    from latentprobe.probe.export import export_features

    export_features(Path(args.run), **configuration.to_dict(cfg))


def cmd_predict(args, cfg) -> None:
    from latentprobe.probe.export import predict_files

    failed = predict_files(Path(args.run), [Path(p) for p in args.images], **configuration.to_dict(cfg))
    if failed:
        sys.exit(f"error: {failed} of {len(args.images)} image(s) could not be read")


def cmd_models(args, cfg) -> None:
    from latentprobe.models import describe_model, list_models

    for name in list_models():
        print(f"{name:28s} {describe_model(name)}")


def cmd_summary(args, cfg) -> None:
    from latentprobe.report.summary import model_summary

    print(model_summary(args.model, **configuration.to_dict(cfg)))


def cmd_finetune(args, cfg) -> None:
    from latentprobe.report.mae_report import write_mae_report
    from latentprobe.training.finetune import finetune

    finetune(Path(args.run), cfg)
    if os.environ.get("RANK", "0") == "0":  # rank 0 (or no torchrun) writes the report
        print(f"report: {write_mae_report(Path(args.run))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentprobe", description=__doc__.split("\n\nThis module")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, config, handler, *, aliases=(), positionals=()):
        sub = commands.add_parser(name, help=help, description=help, aliases=list(aliases))
        for args, kwargs in positionals:
            sub.add_argument(*args, **kwargs)
        if config is not None:
            configuration.add_config_arguments(sub, config)
        sub.set_defaults(handler=handler, options=config)
        return sub

    run = (("run",), dict(help="a run directory made by `latentprobe train`"))
    command("run", "an experiment file end to end: train what is missing, evaluate what is not, report "
            "(configs/ holds one per leaderboard row)", None, cmd_run,
            positionals=[(("experiment",), dict(help="a YAML file naming a study or runs (docs/USING_YOUR_OWN.md)"))])
    command("study", "the latent-size study end to end: train, probe, report", options.StudyConfig, cmd_study)
    train = command("train", "pretrain an autoencoder into a run directory (resumable)", options.TrainConfig,
                    cmd_train)
    train.add_argument("--seeds", type=int, default=None, metavar="N", help=(
        "repeat pretraining with seeds SEED … SEED+N-1, one run each in OUT/seed_S (default: one run in OUT)"))
    command("evaluate", "probes (linear, BN + linear, logistic, MLP, kNN) and baselines over a run's latents, "
            "repeated seeds → RUN/eval.json", options.EvalConfig, cmd_evaluate,
            positionals=[(("runs",), dict(nargs="+", help="run directories made by `latentprobe train` (with "
                                                          "--encoder: the folder its results go to)"))])
    command("probe", "evaluate's one-probe, one-seed case (the study's detector) → RUN/eval.json",
            options.ProbeConfig, cmd_probe, positionals=[run])
    report = command("report", "the report of what the paths hold: a study, evaluated runs (a comparison), or "
                     "one run's frozen and fine-tuned classifiers", options.CompareConfig, cmd_report,
                     aliases=("compare", "mae-report"),
                     positionals=[(("paths",), dict(nargs="+", help="a study directory, or run directories"))])
    report.add_argument("--kind", choices=("study", "comparison", "classifiers"), default=None,
                        help="which report, when the paths could give more than one (default: what they hold; "
                             "`compare` means comparison, `mae-report` classifiers)")
    command("finetune", "a classifier on a run's encoder, fine-tuned end to end (or frozen); torchrun-ready",
            options.FinetuneConfig, cmd_finetune, positionals=[run])
    command("export", "write a split's features, labels and class names to .npz", options.ExportConfig, cmd_export,
            positionals=[run])
    command("predict", "classify image files with a run's encoder and its saved probe", options.PredictConfig,
            cmd_predict, positionals=[run, (("images",), dict(nargs="+", help="image files of any size and mode"))])
    command("models", "list the registered models", None, cmd_models)
    command("summary", "torchinfo summary of a model: layers, shapes, parameters, MACs", options.SummaryConfig,
            cmd_summary, positionals=[(("model",), dict(help="model name (`latentprobe models`)"))])
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the input is wrong", shown as one line without a traceback (imported only
    when an error needs sorting: the modules that define them import torch)."""
    from latentprobe.checkpoint import CheckpointError, WriteError
    from latentprobe.data.download import DataError
    from latentprobe.runs import RunInUse
    from latentprobe.training.engine import TrainingError

    return DataError, CheckpointError, TrainingError, RunInUse, WriteError


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("compare", "mae-report"):
        args.kind = args.kind or {"compare": "comparison", "mae-report": "classifiers"}[args.command]
    try:
        cfg = configuration.resolve(args.options, args) if args.options else None  # checked before any import
        if args.command == "train" and args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
        if not os.environ.get("LATENTPROBE_SYSTEM_MALLOC"):
            from latentprobe.training.engine import keep_freed_memory

            keep_freed_memory()  # CPU steps stop page-faulting large activations in anew (see engine)
        args.handler(args, cfg)
    except KeyboardInterrupt:
        sys.exit("interrupted; run the same command again to continue from the last checkpoint")
    except Exception as err:  # noqa: BLE001 - sorted here: the user's mistakes are one line, the rest raise
        mistake = isinstance(err, (ValueError, FileNotFoundError)) or isinstance(err, _user_errors()) or \
            isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)
        if mistake and isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
            err = f"{err.filename}: {err.strerror}; free space or choose a folder you can write, then run again"
        if os.environ.get("LATENTPROBE_DEBUG") or not mistake:
            raise
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
