"""One declaration per option: `option(...)` puts the flags, help, group, default, range and choices of a dataclass
field in its metadata; the command line (`add_declared`), the value checks (`check_value`), the `--config` file's
keys and docs/options.md (`options_markdown`) are built from it, so none of them repeats a default or a range.

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
from .recipes import RECIPE_OPTIONS, help_default


@dataclass(frozen=True)
class Option:
    flags: tuple
    """The command-line spellings, the canonical one first (the others are the old scripts' and torchvision's)."""
    help: str
    group: str
    default: Any = None
    """The value when neither the recipe (for RECIPE_OPTIONS), a --config file nor the command line gives one."""
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

    @property
    def long_flag(self) -> str:
        return next(spelling for spelling in self.flags if spelling.startswith("--"))

    @property
    def key(self) -> str:
        """The name in a --config file and in the saved run.yaml: the canonical long flag without its dashes."""
        return self.long_flag[2:]


def option(default: Any, *flags: str, help: str, group: str, **rules: Any) -> Any:
    """A dataclass field declared as an option. The field itself has no default: a config is only ever built
    complete (vgg16/resolve.py), and the declared default is one of the layers it is built from."""
    return dataclasses.field(metadata={"option": Option(flags, help, group, default, **rules)})


def declared(cls) -> list[tuple[dataclasses.Field, Option]]:
    """Every field of `cls` that is an option, in declaration order (fields without `option` are internal)."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def field_types(cls) -> dict[str, tuple[type, bool]]:
    """(the type inside each field's annotation, whether it may be None): `Optional[int]` -> (int, True)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        out[name] = (args[0] if optional and args else hint, optional)
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


TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def typed_value(o: Option, value: Any, *, kind: type, optional: bool, where: str) -> Any:
    """`value` as the option's type, as a --config file gives it (YAML's own types), or one line naming `where`
    (the file and key) and the type wanted. Text goes through the option's own parse where it has one
    (`loss-scale: dynamic`)."""
    if value is None:
        if optional:
            return None
        raise UsageError(f"{where} cannot be empty (null): give {TYPE_NAMES.get(kind, kind.__name__)}")
    if isinstance(value, str) and o.parse is not None:
        return o.parse(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as text; it is the number every reader means
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UsageError(f"{where} must be {TYPE_NAMES.get(kind, kind.__name__)}"
                     + (" or empty (null)" if optional else "") + f" (got {value!r})")


def check_value(o: Option, value: Any, where: str) -> None:
    """One value against its declaration: choices, then range. One line naming where the value came from (the
    flag, or the file and key), the rule and the value given."""
    if value is None or isinstance(value, bool):
        return
    if o.choices is not None and value not in o.choices:
        raise UsageError(f"{where}: unknown value {value!r}: use {', '.join(map(str, o.choices))}"
                         + (f", {o.hint}" if o.hint else ""))
    if (o.minimum is not None or o.maximum is not None) and not _in_range(value, o):
        raise UsageError(f"{where} {_range_text(o)}{': ' + o.why if o.why else ''} (got {value:g})")


def _default_text(f: dataclasses.Field, o: Option) -> str:
    if "default" in o.help:
        return ""  # the help says it, where a rule decides (the sizes, --workers)
    if f.name in RECIPE_OPTIONS:
        return f"default from --recipe: {help_default(f.name)}"
    if o.default is None:
        return "default: unset"
    if isinstance(o.default, bool):
        return "default: off" if not o.default else "default: on"
    return f"default: {o.default:g}" if isinstance(o.default, float) else f"default: {o.default}"


def help_text(f: dataclasses.Field, o: Option) -> str:
    """The help with the default (or the recipes' values) at its end; what --help and docs/options.md print."""
    default = _default_text(f, o)
    return f"{o.help} ({default})" if default else o.help


def add_declared(parser: argparse.ArgumentParser, cls) -> dict[str, Any]:
    """An argument per declared field, in groups in declaration order; dest is the field name. Nothing is put in
    the namespace for an option not given (argparse.SUPPRESS), so the command line is one layer among others.
    Returns the argument groups by name, for the caller's own arguments."""
    groups: dict[str, Any] = {}
    types = field_types(cls)
    for f, o in declared(cls):
        group = groups.get(o.group) or groups.setdefault(o.group, parser.add_argument_group(o.group))
        kind = types[f.name][0]
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text(f, o).replace("%", "%%"),
                                  "default": argparse.SUPPRESS}
        if kind is bool:
            # A boolean a recipe fills has --x and --no-x, so a command can turn the recipe's choice off.
            kwargs["action"] = argparse.BooleanOptionalAction if f.name in RECIPE_OPTIONS else "store_true"
        else:
            kwargs["type"] = o.parse or kind
            for key in ("metavar", "nargs", "const"):
                if getattr(o, key) is not None:
                    kwargs[key] = getattr(o, key)
            if o.choices is not None:
                kwargs["choices"] = o.choices
        group.add_argument(*o.flags, **kwargs)
    return groups


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
