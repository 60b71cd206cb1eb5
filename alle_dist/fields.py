"""Typed dataclass fields from YAML and from the command line: the machinery under `config`'s stage
configs, kept apart so each stage's config reads as its fields and their checks.

`build` checks every value against the field's annotation (a wrong type is one line naming the
key); `add_flags` generates `--field-name` flags from the same annotations, every default None so an
unset flag leaves the YAML value (defaults < YAML < command line), and `overrides` reads them back.
Imports argparse and yaml-free stdlib only, so `alle-dist --help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from .errors import ConfigError


def section_name(cls: type) -> str:
    """The YAML section (`train`) a stage config reads, named in every message about its keys."""
    return getattr(cls, "SECTION", cls.__name__)


def build(cls: type, section: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None):
    """cls from defaults < section < overrides (None values in overrides are ignored); every value is
    checked against the field's annotation first, so a wrong type is one line naming the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(section or {})
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{section_name(cls)}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
    values.update({k: v for k, v in (overrides or {}).items() if k in names and v is not None})
    hints = typing.get_type_hints(cls)
    prefix = section_name(cls)
    values = {k: _typed(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` as the annotation `hint` says (int, float, str, bool, X | None, tuple[X, ...]), or ConfigError."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return _typed_tuple(value, args, where)
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: type, where: str) -> Any:
    if hint is float and isinstance(value, str):
        try:   # YAML 1.1 reads `lr: 1e-4` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}.get(hint, lambda v: True)
    if not ok(value):
        raise ConfigError(f"{where}: {value!r} is not {_KIND.get(hint, hint)}")
    return float(value) if hint is float else value


def _typed_tuple(value: Any, args: tuple, where: str) -> tuple:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if isinstance(value, str) and variadic:   # `backbones: densenet201,resnet50`
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {value!r} is not a list; give a list, e.g. [a, b]")
    if not variadic and len(value) != len(args):
        raise ConfigError(f"{where}: {list(value)} has {len(value)} values; give {len(args)}")
    kinds = [args[0]] * len(value) if variadic else list(args)
    return tuple(_scalar(v, k, where) for v, k in zip(value, kinds))


def add_flags(parser: argparse.ArgumentParser, cls: type, fields: dict[str, str | None],
              extra: dict[str, dict] | None = None) -> None:
    """`--field-name` for each named field of `cls` (help text per field; None = none), typed from its
    annotation: int / float / str, bool → --x / --no-x, tuples → comma-separated values. Every
    default is None, so an unset flag leaves the YAML value (defaults < YAML < CLI); the help shows
    the dataclass default. `extra` adds argparse keywords per field (choices, metavar)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, text in fields.items():
        kwargs = {"default": None, "dest": name, **_flag_type(hints[name], f"{section_name(cls)}.{name}")}
        kwargs["help"] = _help(text, defaults[name])
        kwargs.update((extra or {}).get(name, {}))
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values the command line gave for `cls`'s fields (unset flags are None and left out)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def _flag_type(hint: Any, where: str) -> dict[str, Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint, args = args[0], list(typing.get_args(args[0]))
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is tuple:
        n = None if args[-1] is Ellipsis else len(args)
        return {"type": _comma_list(args[0], n, where), "metavar": ",".join(["X"] * (n or 2)) + ("" if n else ",...")}
    return {"type": hint, **({"metavar": {int: "N", float: "X"}[hint]} if hint in (int, float) else {})}


def _comma_list(kind: type, n: int | None, where: str):
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            values = ()
        if not values or (n is not None and len(values) != n):
            count = f"{n} comma-separated" if n else "comma-separated"
            raise argparse.ArgumentTypeError(f"{text!r}: give {count} {kind.__name__} values for {where}")
        return values
    parse.__name__ = f"{kind.__name__} list"   # argparse names the type in its error message
    return parse


def _help(text: str | None, default: Any) -> str | None:
    if text is None or "default" in text or default in (dataclasses.MISSING, None):
        return text
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{text} (default: {default})" if text else f"default: {default}"
