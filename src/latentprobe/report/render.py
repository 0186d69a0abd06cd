"""``latentprobe report PATH...``: the report of whatever the paths hold, chosen from their files.

- a study directory (``latentprobe study``: config.yaml and latent_* runs) → the study report, in it;
- run directories with eval.json (``latentprobe evaluate``; one or many) → the comparison, in --out;
- one run with fine-tuned classifiers (``finetune``) → the frozen-vs-fine-tuned report, in the run;

``compare`` and ``mae-report`` are the names of the last two (``latentprobe report --kind``).
"""

from pathlib import Path

from latentprobe.options import CompareConfig
from latentprobe.report.compare import write_comparison
from latentprobe.report.mae_report import FINETUNED, write_mae_report
from latentprobe.report.study_report import write_study_report
from latentprobe.runs import CONFIG, Run


def report_kind(paths: list[Path], label_type: str = "fine") -> str:
    """``study``, ``comparison`` or ``classifiers``: what ``render`` will write for ``paths``."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("report needs a study directory or one or more run directories")
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such directory")
    if len(paths) == 1 and (paths[0] / CONFIG).is_file() and any(paths[0].glob("latent_*")):
        return "study"
    if len(paths) == 1 and any(file(Run(paths[0])).is_file() for _, _, file in FINETUNED):
        return "classifiers"
    if all(Run(p).eval_file(label_type).is_file() for p in paths):
        return "comparison"
    unevaluated = [str(p) for p in paths if not Run(p).eval_file(label_type).is_file()]
    raise FileNotFoundError(f"nothing to report in {', '.join(unevaluated)}: run `latentprobe evaluate` on each "
                            f"run (or `probe` / `finetune` for one run), or give a study directory")


def render(paths: list[Path], cfg: CompareConfig | None = None, kind: str | None = None) -> Path:
    """Write the report that ``paths`` hold (see the module's docstring), or the ``kind`` asked for
    (study, comparison, classifiers); returns its path. ``cfg`` (the comparison's options) applies
    to a comparison only."""
    cfg = cfg or CompareConfig()
    if cfg.out and Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out} is a file; give a folder for the report (new or a report's)")
    kind = kind or report_kind(paths, cfg.label_type)
    if kind == "study":
        return write_study_report(Path(paths[0]))
    if kind == "comparison":
        return write_comparison([Path(p) for p in paths], cfg)
    return write_mae_report(Path(paths[0]))
