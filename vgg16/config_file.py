"""The run's options as a file: `--config FILE` reads one, every run writes its resolved options as
OUTPUT/run.yaml in the same format, so `--config OUTPUT/run.yaml` runs it again (flags given beside it win).

The format is YAML, one `key: value` line per option, the key being the option's long flag without its dashes
(`batch-size: 64`; the field name, `batch_size`, is read too). timm's train.py and Lightning's CLI do the same
(`args.yaml`, `config.yaml`); PyYAML comes with Accelerate.
"""

from __future__ import annotations

import datetime
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig
from .errors import RunFailure, UsageError, write_failure
from .options import declared, field_types, typed_value

RUN_CONFIG = "run.yaml"


def _keys() -> dict[str, tuple]:
    """Every key a file may use -> (field name, its Option)."""
    out = {}
    for f, o in declared(TrainConfig):
        out[o.key] = out[f.name] = (f.name, o)
    return out


def _did_you_mean(key: str) -> str:
    """' (did you mean lr?)' for a key close to any spelling of an option (`learning_rate` -> lr)."""
    spellings = {}
    for f, o in declared(TrainConfig):
        spellings.update({flag.lstrip("-"): o.key for flag in o.flags if flag.startswith("--")}, **{f.name: o.key})
    close = difflib.get_close_matches(key.replace("_", "-"), list(spellings), n=1, cutoff=0.75)
    return f" (did you mean {spellings[close[0]]}?)" if close else ""


def read_config_file(path: str) -> dict[str, Any]:
    """The options a --config file gives (field name -> value, typed), or one line naming the file, the key and
    the rule it breaks. The values' choices and ranges are checked with the rest (vgg16.resolve)."""
    where = f"--config {path}"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{where}: must hold 'option: value' lines (as run.yaml does), not a {type(data).__name__}")
    keys, types, out = _keys(), field_types(TrainConfig), {}
    for key, value in data.items():
        if str(key) not in keys:
            raise UsageError(f"{where}: unknown option {key!r}" + _did_you_mean(str(key))
                             + "; the keys are the flags of --help without their dashes")
        name, o = keys[str(key)]
        kind, optional = types[name]
        out[name] = typed_value(o, value, kind=kind, optional=optional, where=f"{where}: {o.key}")
    return out


def config_yaml(cfg: TrainConfig, command: str) -> str:
    """run.yaml's text: a header (the command, the date, the versions), then every option in --help's order."""
    import accelerate
    import torch
    import torchvision

    from . import __version__

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = [
        "# Every option of this run with the value it ran with: the defaults, then recipe "
        f"{cfg.recipe} for {cfg.arch}, then --config, then the command line.",
        "# Run it again: accelerate launch train_vgg16.py --config THIS_FILE [--output-dir NEW] [--any-flag VALUE]",
        f"# command: {command}",
        f"# date: {now}",
        f"# versions: vgg16 {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"accelerate {accelerate.__version__}",
    ]
    values = {o.key: getattr(cfg, f.name) for f, o in declared(TrainConfig)}
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def write_run_config(cfg: TrainConfig, output_dir: Path, command: str) -> Path:
    """OUTPUT/run.yaml, written whole or not at all (a temporary file renamed over it)."""
    path = output_dir / RUN_CONFIG
    temporary = path.with_name(f".{RUN_CONFIG}.{os.getpid()}")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_text(config_yaml(cfg, command))
        os.replace(temporary, path)
    except OSError as e:
        raise RunFailure(f"could not write {path} ({write_failure(e)}): free space on that disk or choose another "
                         "--output-dir") from None
    return path
