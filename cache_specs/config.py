"""The one config system: frozen dataclasses built from plain data (YAML, CLI overrides), errors naming the field.

    cfg = build(SimHeadsConfig, {"loop": {"lr": "x"}}, base=PRESETS["demo"])
    # ConfigError: loop.lr: expected a number, got 'x'

Used for the project file (``pipeline.config``), stage and source settings, and every head's config
(``heads.configs``). Hand-rolled on purpose (~150 lines): pydantic would add a second config system
beside the frozen dataclasses every component is built from, and we need messages of the form
``stages.frame-features.pool_grid: expected an integer, got 'two'`` and
``unknown field 'pool' (valid: ...); did you mean 'pool_grid'?``.
Supports str, int, float, bool, Path, tuples (fixed or ``...``), Optional, Literal, dicts and nested
dataclasses. A ``__post_init__`` that raises ValueError/TypeError becomes a ConfigError prefixed with
the field path of that dataclass.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["ConfigError", "SAFE_NAME", "build", "check_name", "coerce", "merge", "parse_assignments", "read_yaml", "suggest",
           "to_plain", "unknown_name"]


def suggest(name: object, valid: Iterable[object]) -> str:
    """``"; did you mean 'x'?"`` for the closest valid name (difflib ratio >= 0.6), else ``""``."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_name(what: str, name: object, valid: Iterable[object], where: str = "") -> ConfigError:
    """``[where: ]unknown <what> 'name' (valid: a, b); did you mean 'a'?`` as a ConfigError."""
    valid = [str(v) for v in valid]
    return ConfigError(_at(where, f"unknown {what} {name!r} (valid: {', '.join(valid)}){suggest(name, valid)}"))


#: dataset, split and stage names: each becomes one folder under the cache root
#: (``<cache_root>/<dataset>/<split>/<spec>``), so nothing that could leave it or hide there
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(what: str, name: object, where: str) -> str:
    """``name`` when it is a safe ``what`` name (``SAFE_NAME``, no ``..``); ConfigError naming
    ``where`` otherwise, e.g. ``datasets.nav.splits[0]: invalid split name '../x' (...)``."""
    if isinstance(name, str) and SAFE_NAME.fullmatch(name) and ".." not in name:
        return name
    raise ConfigError(_at(where, f"invalid {what} name {name!r}: a {what} name is a folder under the cache root, "
                                 "so it uses letters, digits, '.', '_' and '-', starts with a letter or digit, "
                                 "has no '..' and at most 128 characters"))


def _at(where: str, msg: str) -> str:
    return f"{where}: {msg}" if where else msg


def _join(where: str, name: object) -> str:
    return f"{where}.{name}" if where else str(name)


def build(cls: type, data: Any, where: str = "", base: Any = None) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``data``; ``where`` is the field path for messages.

    ``base``: an instance of ``cls`` (a preset) whose values stand in for the fields ``data`` leaves
    out. A nested dataclass given as a mapping is merged the same way over its default (the base's
    value, else the field's default), so ``loop: {lr: 0.01}`` keeps the other ``loop`` settings.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(_at(where, f"expected a mapping, got {type(data).__name__}"))
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((str(n) for n in data if n not in fields))
    if unknown:  # the first in sorted order: the same message whatever order the file lists keys in
        raise unknown_name("field", unknown[0], sorted(fields), where)
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in data:
            if base is not None:
                kwargs[name] = getattr(base, name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: required field missing")
            continue
        value, tp = data[name], hints[name]
        if isinstance(value, Mapping) and isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, path, base=getattr(base, name) if base is not None else _field_default(f))
        else:
            kwargs[name] = coerce(tp, value, path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks name the field; we add where it sits
        raise ConfigError(_at(where, str(e))) from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked (and where lossless, converted: int -> float, list -> tuple) against type ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{suggest(value, args)}")
        return value
    if origin is tuple:
        return _tuple(args, value, where)
    if origin in (dict, typing.Mapping, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return _scalar(tp, value, where)


def _tuple(args: tuple, value: Any, where: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if args and (len(args) != 2 or args[1] is not Ellipsis):  # tuple[str, str]: a fixed length
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    return tuple(coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{where}: unsupported field type {tp}")


def to_plain(obj: Any) -> Any:
    """The inverse of ``build``: JSON/YAML-ready plain data (used for fingerprints and resolved configs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------
# plain data in: YAML files and ``key.path=value`` overrides


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The mapping at the top of a YAML file ({} for an empty file); ConfigError otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def parse_assignments(items: Sequence[str]) -> dict:
    """``["loop.lr=0.01", "K=2"]`` -> ``{"loop": {"lr": 0.01}, "K": 2}``; values are read as YAML scalars."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. loop.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: not a YAML value: {e}") from None
        *parents, last = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is set to a value and used as a mapping")
        node[last] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
