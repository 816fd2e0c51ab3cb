"""One declaration per option: `option(...)` puts the flags, help, group, range and choices of a dataclass field in
its metadata; the command line (`build_parser`), the value checks (`check_declared`) and docs/options.md
(`options_markdown`) are built from it, so none of them repeats a default or a range.

argparse stays the parser (the old scripts' spellings, `--no-x` for booleans the recipe fills, one-line errors);
what it lacks is a way to take its arguments from dataclass fields, which is what this adds. The libraries that do
that (simple-parsing, tyro, HfArgumentParser) either rename the flags or give no aliases and groups as we need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import UsageError
from .recipes import RECIPES, help_default


# Options some recipe sets: their defaults are the recipe's, not the field's (which stays None = "not given").
RECIPE_OPTIONS = frozenset(next(iter(RECIPES.values())).values)


@dataclass(frozen=True)
class Option:
    flags: tuple
    """The command-line spellings, the canonical one first (the others are the old scripts' and torchvision's)."""
    help: str
    group: str
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    above: bool = False
    """The minimum itself is not allowed."""
    below: bool = False
    """The maximum itself is not allowed."""
    why: str = ""
    """Said after a range message: what the limit comes from."""
    hint: str = ""
    """Said after a choices message."""
    parse: Optional[Callable[[str], Any]] = None
    """Turns the text into the value where the field's type alone cannot (`--loss-scale dynamic`)."""
    metavar: Optional[str] = None
    nargs: Optional[str] = None
    const: Any = None


def option(default: Any, *flags: str, help: str, group: str, **rules: Any) -> Any:
    """A dataclass field declared as an option; `default_factory` is not needed by any option."""
    return dataclasses.field(default=default, metadata={"option": Option(flags, help, group, **rules)})


def declared(cls) -> list[tuple[dataclasses.Field, Option]]:
    """Every field of `cls` that is an option, in declaration order (fields without `option` are internal)."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def field_types(cls) -> dict[str, type]:
    """The type inside each field's annotation (`Optional[int]` -> int)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if typing.get_origin(hint) is typing.Union and args else hint
    return out


def _range_text(o: Option) -> str:
    if o.maximum is None:
        if o.above:
            return "must be positive" if o.minimum == 0 else f"must be above {o.minimum:g}"
        return f"must be at least {o.minimum:g}" if o.minimum >= 1 else f"must be >= {o.minimum:g}"
    low = "(" if o.above else "["
    high = ")" if o.below else "]"
    return f"must be in {low}{o.minimum:g}, {o.maximum:g}{high}"


def _in_range(value: float, o: Option) -> bool:
    if o.minimum is not None and (value < o.minimum or (o.above and value == o.minimum)):
        return False
    return o.maximum is None or not (value > o.maximum or (o.below and value == o.maximum))


def check_declared(config) -> None:
    """Each set value against its declaration: choices, then range. One line naming the flag, the rule and the
    value given."""
    for f, o in declared(type(config)):
        value = getattr(config, f.name)
        if value is None or isinstance(value, bool):
            continue
        flag = next(spelling for spelling in o.flags if spelling.startswith("--"))
        if o.choices is not None and value not in o.choices:
            raise UsageError(f"unknown {f.name.replace('_', ' ')} {value!r} ({flag}): use {', '.join(o.choices)}"
                             + (f", {o.hint}" if o.hint else ""))
        if (o.minimum is not None or o.maximum is not None) and not _in_range(value, o):
            raise UsageError(f"{flag} {_range_text(o)}{': ' + o.why if o.why else ''} (got {value:g})")


def _default_text(f: dataclasses.Field, o: Option) -> str:
    if "default" in o.help:
        return ""  # the help says it, where a rule decides (the sizes, --workers)
    if f.name in RECIPE_OPTIONS:
        return f"default from --recipe: {help_default(f.name)}"
    if f.default is None:
        return "default: unset"
    if isinstance(f.default, bool):
        return "default: off" if not f.default else "default: on"
    return f"default: {f.default:g}" if isinstance(f.default, float) else f"default: {f.default}"


def help_text(f: dataclasses.Field, o: Option) -> str:
    """The help with the default (or the recipes' values) at its end; what --help and docs/options.md print."""
    default = _default_text(f, o)
    return f"{o.help} ({default})" if default else o.help


def add_declared(parser: argparse.ArgumentParser, cls) -> None:
    """An argument per declared field, in groups in declaration order; dest is the field name."""
    groups: dict[str, Any] = {}
    types = field_types(cls)
    for f, o in declared(cls):
        group = groups.get(o.group) or groups.setdefault(o.group, parser.add_argument_group(o.group))
        kind = types[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text(f, o).replace("%", "%%")}
        if kind is bool:
            # A boolean a recipe fills has --x and --no-x, so a command can turn the recipe's choice off.
            kwargs["action"] = argparse.BooleanOptionalAction if f.default is None else "store_true"
            kwargs["default"] = f.default
        else:
            kwargs.update(type=o.parse or kind, default=f.default)
            for key in ("metavar", "nargs", "const"):
                if getattr(o, key) is not None:
                    kwargs[key] = getattr(o, key)
            if o.choices is not None:
                kwargs["choices"] = o.choices
        group.add_argument(*o.flags, **kwargs)


def options_markdown(cls) -> str:
    """Every option, its spellings and help as --help prints them, one table per group (docs/options.md)."""
    out, group = [], None
    for f, o in declared(cls):
        if o.group != group:
            group = o.group
            out += ["", f"### {group}", "", "| option | what it does |", "|---|---|"]
        flags = ", ".join(f"`{flag}`" for flag in o.flags)
        out.append(f"| {flags} | {help_text(f, o).replace('|', '&#124;')} |")
    return "\n".join(out[1:]) + "\n"
