"""Reading a head's frozen config from YAML plus CLI overrides: one implementation for every head.

A head config is a frozen dataclass with a ``loop: LoopConfig`` field and an ``out_dir`` that
mirrors ``loop.out_dir``; its ``loop`` default comes from the field's ``default_factory``.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from heads.train_loop import LoopConfig

C = TypeVar("C")


def config_from_dict(cls: type[C], d: dict | None) -> C:
    """Build ``cls`` from plain data; unknown keys are listed with the valid ones."""
    d = dict(d or {})
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    loop = dict(d.pop("loop", None) or {})
    if "out_dir" in d:
        loop["out_dir"] = d["out_dir"]
    elif "out_dir" in loop:
        d["out_dir"] = loop["out_dir"]
    factory = known["loop"].default_factory
    base = asdict(factory()) if factory is not MISSING else {}
    d["loop"] = LoopConfig.from_dict({**base, **loop})
    if "splits" in d:
        d["splits"] = tuple(d["splits"])
    return cls(**d)


def load_head_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Read a YAML file (or nothing: the defaults), then apply keyword overrides (None = not given).

    ``loop=`` overrides merge into the file's ``loop`` mapping (e.g. a CLI ``--epochs``).
    """
    import yaml

    d: dict = {}
    if path is not None:
        d = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "loop" in overrides:
        overrides["loop"] = {**(d.get("loop") or {}), **{k: v for k, v in overrides["loop"].items() if v is not None}}
    d.update(overrides)
    return config_from_dict(cls, d)
