"""One source of configuration: a dataclass per command.

Values come from the dataclass defaults, then an optional YAML file (``--config``), then
command-line flags; an unknown key at any level is an error. The resolved config is printed
at the start of a run and saved beside its results.
"""

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


def _parse_list(item_type):
    def parse(text: str):
        return [item_type(part) for part in text.replace(",", " ").split()]
    return parse


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_mapping(text: str) -> dict:
    """``"mask_ratio=0.6 norm_pix_loss=true"`` → ``{"mask_ratio": 0.6, "norm_pix_loss": True}``."""
    mapping = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            mapping[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:  # e.g. a !!python tag: safe_load builds plain values only
            problem = str(err).splitlines()[0]
            raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a plain value ({problem}); use numbers, "
                                             f"true/false or text") from None
    return mapping


def _field_parser(annotation):
    """A function turning a command-line string into a value of ``annotation``."""
    origin = get_origin(annotation)
    if annotation is dict or origin is dict:
        return parse_mapping
    if origin is list:
        return _parse_list(get_args(annotation)[0])
    if origin is not None:  # Optional[X] / X | None
        inner = [a for a in get_args(annotation) if a is not type(None)]
        parse = _field_parser(inner[0])
        return lambda text: None if text.lower() in ("none", "null", "") else parse(text)
    if annotation is bool:
        return _parse_bool
    return annotation


def _is_bool(annotation) -> bool:
    """``bool`` or ``bool | None`` (None: decided elsewhere, e.g. by the run's own setting)."""
    return annotation is bool or set(get_args(annotation)) == {bool, type(None)}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One ``--flag`` per dataclass field (underscores become dashes), plus ``--config``. A boolean
    is a switch, ``--flag`` / ``--no-flag`` (``--flag true`` and ``--flag false`` still work)."""
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below")
    hints = get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if not field.init:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = field.metadata.get("help", "")
        if "(default:" not in help_text:
            shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, list) else default
            help_text = f"{help_text} (default: {shown})".strip()
        flag = "--" + field.name.replace("_", "-")
        if _is_bool(hints[field.name]):
            parser.add_argument(flag, dest=field.name, nargs="?", const=True, type=_parse_bool,
                                default=argparse.SUPPRESS, metavar="true|false", help=help_text)
            parser.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false",
                                default=argparse.SUPPRESS, help=f"turn {flag} off")
            continue
        parser.add_argument(flag, dest=field.name, type=_field_parser(hints[field.name]), default=argparse.SUPPRESS,
                            metavar=field.name.upper(), help=help_text)


def resolve(config_cls, args: argparse.Namespace | None = None, **overrides):
    """Defaults ← YAML file ← flags (← keyword overrides, for programmatic use)."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) if args is not None else None
    if config_path is not None:
        values.update(load_yaml(config_path, names))
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in names})
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {config_cls.__name__}")
    values.update(overrides)
    hints = get_type_hints(config_cls)
    for name, value in values.items():
        _check_type(name, value, hints[name])
    return config_cls(**values)


def _check_type(name: str, value, annotation) -> None:
    """A value from YAML or a keyword must have the option's type (an int may stand for a float):
    ``latent_dim: abc`` is one clear line, not a traceback deep inside a run."""
    origin = get_origin(annotation)
    if origin in (list, dict):
        kinds = (origin,)
    elif origin is not None:  # X | None
        kinds = tuple(get_origin(a) or a for a in get_args(annotation))
    else:
        kinds = (annotation,)
    wanted = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
    if float in kinds:
        kinds += (int,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(f"option {name} must be {wanted}, got {value!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be given again
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: Path) -> Any:
    """A YAML file a user wrote (a config, an experiment): plain values only (safe loading, no
    tags), every key once. Unreadable, not UTF-8 or not YAML: ValueError naming the file."""
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:  # a !!python tag too: plain values only
        raise ValueError(f"{path}: cannot read it ({' '.join(str(err).split())[:200]})") from None


def load_yaml(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        loaded = read_yaml_file(path) or {}
    except ValueError as err:
        raise SystemExit(f"error: config file {err}") from None
    if not isinstance(loaded, dict):
        raise SystemExit(f"error: config file {path} must hold a mapping of option: value")
    unknown = sorted(set(loaded) - names)
    if unknown:
        raise SystemExit(f"error: unknown option(s) {unknown} in {path}; valid: {sorted(names)}")
    return loaded


def read_saved(directory: Path, name: str = "config.yaml") -> dict[str, Any]:
    """What ``save_resolved`` wrote into a run or study directory: ``config``, ``command``, ``git_sha``."""
    path = Path(directory) / name
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read {path} ({' '.join(str(err).split())[:200]}); it is not the config a "
                         f"latentprobe command wrote: restore it or run the command again") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} holds no 'config' mapping; it is not the config a latentprobe command wrote: "
                         f"restore it or run the command again")
    return saved


# Options that say where and how a command runs, not what it computes: a run may be continued,
# and its results grouped with others, under other values of these.
RUNTIME_OPTIONS = frozenset({"data_dir", "download", "device", "out", "compile", "compile_mode"})


def changed_options(config, saved: dict, may_change=frozenset()) -> list[str]:
    """The options of ``config`` whose values differ from ``saved`` (an earlier ``to_dict``), runtime
    options and ``may_change`` aside."""
    return sorted(k for k, v in to_dict(config).items()
                  if k not in RUNTIME_OPTIONS | may_change and saved.get(k) != v)


def to_dict(config) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_line() -> str:
    """The command as a user would type it again (``python -m latentprobe`` shows as latentprobe)."""
    program = Path(sys.argv[0]).name
    if program in ("__main__.py", "latentprobe"):
        program = "latentprobe"
    return shlex.join([program, *sys.argv[1:]])


def save_resolved(config, directory: Path, name: str = "config.yaml") -> None:
    """Print the resolved config and write it (with command and git sha) into ``directory``."""
    record = {"config": to_dict(config), "command": command_line(), "git_sha": git_sha()}
    text = yaml.safe_dump(record, sort_keys=False, width=1000)
    print(text.rstrip())
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)
