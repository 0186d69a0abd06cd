"""The ``latentprobe`` command: one sub-command per stage.

    latentprobe train   --model conv_ae --latent-dim 256 --out runs/ae256
    latentprobe probe   runs/ae256
    latentprobe study   [--preset quick|standard|full]
    latentprobe report  runs/study
    latentprobe evaluate runs/ae256 [--seeds 3]
    latentprobe compare runs/ae64 runs/ae256 --out runs/compare
    latentprobe export  runs/ae256 --split test
    latentprobe predict runs/ae256 cat.jpg dog.png
    latentprobe models
    latentprobe summary   mae_vit_tiny_patch4
    latentprobe finetune  runs/mae_micro [--freeze-encoder]
    latentprobe mae-report runs/mae_micro
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from latentprobe import config as configuration
from latentprobe.checkpoint import CheckpointError
from latentprobe.data.cifar import DataError
from latentprobe.models import describe_model, list_models
from latentprobe.probe.evaluate import EvalConfig, evaluate_run
from latentprobe.probe.export import ExportConfig, PredictConfig, export_features, predict_files
from latentprobe.probe.heads import ProbeConfig, probe_run
from latentprobe.report.compare import CompareConfig, write_comparison
from latentprobe.report.mae_report import write_mae_report
from latentprobe.report.render import render
from latentprobe.report.study_report import write_probe_figures
from latentprobe.report.summary import SummaryConfig, model_summary
from latentprobe.runs import RunInUse
from latentprobe.study import StudyConfig, run_study
from latentprobe.training.engine import TrainingError, keep_freed_memory
from latentprobe.training.finetune import FinetuneConfig, finetune
from latentprobe.training.pretrain import TrainConfig, train

# Errors that mean "the input is wrong": shown as one line, without a traceback.
USER_ERRORS = (DataError, CheckpointError, TrainingError, RunInUse, FileNotFoundError, ValueError)


def cmd_train(args) -> None:
    cfg = configuration.resolve(TrainConfig, args)
    if args.seeds is None:
        train(cfg)
        return
    if args.seeds < 1:
        sys.exit("error: --seeds must be at least 1")
    for seed in range(cfg.seed, cfg.seed + args.seeds):  # one resumable run per seed: OUT/seed_S
        train(dataclasses.replace(cfg, seed=seed, out=str(Path(cfg.out) / f"seed_{seed}")))


def cmd_probe(args) -> None:
    cfg = configuration.resolve(ProbeConfig, args)
    record = probe_run(args.run, cfg)
    write_probe_figures(Path(args.run), record)
    print(f"{args.run}: {cfg.head} detector on {record['latent_dim']}-d latents: validation accuracy "
          f"{record['val_acc']:.4f}, test accuracy {record['test_acc']:.4f} (epoch {record['best_epoch']})")


def cmd_study(args) -> None:
    run_study(configuration.resolve(StudyConfig, args))


def cmd_report(args) -> None:
    print(render([Path(path) for path in args.paths], configuration.resolve(CompareConfig, args)))


def cmd_evaluate(args) -> None:
    cfg = configuration.resolve(EvalConfig, args)
    for run in args.runs:
        evaluate_run(Path(run), cfg)


def cmd_compare(args) -> None:
    print(write_comparison([Path(run) for run in args.runs], configuration.resolve(CompareConfig, args)))


def cmd_export(args) -> None:
    export_features(Path(args.run), **configuration.to_dict(configuration.resolve(ExportConfig, args)))


def cmd_predict(args) -> None:
    cfg = configuration.resolve(PredictConfig, args)
    failed = predict_files(Path(args.run), [Path(p) for p in args.images], **configuration.to_dict(cfg))
    if failed:
        sys.exit(f"error: {failed} of {len(args.images)} image(s) could not be read")


def cmd_models(args) -> None:
    for name in list_models():
        print(f"{name:28s} {describe_model(name)}")


def cmd_summary(args) -> None:
    print(model_summary(args.model, **configuration.to_dict(configuration.resolve(SummaryConfig, args))))


def cmd_finetune(args) -> None:
    finetune(Path(args.run), configuration.resolve(FinetuneConfig, args))
    if os.environ.get("RANK", "0") == "0":  # rank 0 (or no torchrun) writes the report
        print(f"report: {write_mae_report(Path(args.run))}")


def cmd_mae_report(args) -> None:
    print(write_mae_report(Path(args.run)))


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="latentprobe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="pretrain an autoencoder into a run directory (resumable)")
    configuration.add_config_arguments(train, TrainConfig)
    train.add_argument("--seeds", type=int, default=None,
                       help="repeat pretraining with seeds SEED … SEED+N-1, one run each in OUT/seed_S")
    train.set_defaults(handler=cmd_train)

    probe = commands.add_parser("probe", help="train the detector on a run's cached latents")
    probe.add_argument("run", help="run directory made by `latentprobe train`")
    configuration.add_config_arguments(probe, ProbeConfig)
    probe.set_defaults(handler=cmd_probe)

    study = commands.add_parser("study", help="the latent-size study with its report")
    configuration.add_config_arguments(study, StudyConfig)
    study.set_defaults(handler=cmd_study)

    report = commands.add_parser("report", help="the report of what the paths hold: a study, evaluated runs "
                                                "(comparison), or one run's frozen / fine-tuned classifiers")
    report.add_argument("paths", nargs="+", help="a study directory, or run directories")
    configuration.add_config_arguments(report, CompareConfig)  # they shape a comparison
    report.set_defaults(handler=cmd_report)

    evaluate = commands.add_parser("evaluate", help="linear / MLP / kNN probes and baselines, repeated seeds")
    evaluate.add_argument("runs", nargs="+", help="run directories made by `latentprobe train`")
    configuration.add_config_arguments(evaluate, EvalConfig)
    evaluate.set_defaults(handler=cmd_evaluate)

    compare = commands.add_parser("compare", help="one Markdown + HTML report over evaluated runs "
                                                  "(`report` picks it for evaluated runs)")
    compare.add_argument("runs", nargs="+", help="evaluated run directories")
    configuration.add_config_arguments(compare, CompareConfig)
    compare.set_defaults(handler=cmd_compare)

    export = commands.add_parser("export", help="write a split's features, labels and class names to .npz")
    export.add_argument("run")
    configuration.add_config_arguments(export, ExportConfig)
    export.set_defaults(handler=cmd_export)

    predict = commands.add_parser("predict", help="classify image files with a run's encoder + classifier")
    predict.add_argument("run")
    predict.add_argument("images", nargs="+", help="image files of any size and mode")
    configuration.add_config_arguments(predict, PredictConfig)
    predict.set_defaults(handler=cmd_predict)

    models = commands.add_parser("models", help="list the registered models")
    models.set_defaults(handler=cmd_models)

    summary = commands.add_parser("summary", help="torchinfo summary of a model: layers, shapes, parameters, MACs")
    summary.add_argument("model", help="model name (latentprobe models)")
    configuration.add_config_arguments(summary, SummaryConfig)
    summary.set_defaults(handler=cmd_summary)

    finetune = commands.add_parser("finetune", help="classifier on a run's encoder, fine-tuned end to end "
                                                    "(or frozen); torchrun-ready")
    finetune.add_argument("run", help="run directory made by `latentprobe train`")
    configuration.add_config_arguments(finetune, FinetuneConfig)
    finetune.set_defaults(handler=cmd_finetune)

    mae_report = commands.add_parser("mae-report", help="frozen vs fine-tuned classifiers of a run, side by side "
                                                        "(`report` picks it for such a run)")
    mae_report.add_argument("run")
    mae_report.set_defaults(handler=cmd_mae_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not os.environ.get("LATENTPROBE_SYSTEM_MALLOC"):
        keep_freed_memory()  # CPU steps stop page-faulting large activations in anew (see engine)
    try:
        args.handler(args)
    except USER_ERRORS as err:
        if os.environ.get("LATENTPROBE_DEBUG"):
            raise
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted; run the same command again to continue from the last checkpoint")


if __name__ == "__main__":
    main()
