"""A head's frozen config, one way for every head: a named preset, then a YAML file, then CLI overrides.

    cfg = load_head_config(SimHeadsConfig, PRESETS, "demo", "sim_heads.yaml", {"loop": {"epochs": 5}})

Everything goes through ``cache_specs.config.build`` (the project file's builder too), so errors name
the field (``loop.lr: expected a number, got 'x'``) and unknown names list the valid ones with the
closest. A head config has an ``out_dir`` that its ``loop.out_dir`` mirrors; a file that sets only
``loop.out_dir`` sets both.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dataclasses import asdict, replace

from navcache.cache_specs.config import build, check_name, merge, read_yaml, unknown_name

C = TypeVar("C")


class HeadConfig:
    """What every head's frozen config dataclass shares (mixed in): plain-data round trip, and the
    paths normalised with ``loop.out_dir`` mirroring ``out_dir`` (call ``_normalise`` in ``__post_init__``).
    ``dataset`` and ``splits`` name folders under ``cache_root``, so they are checked as the project
    file's names are (``check_name``): ``dataset: ../../x`` is a ConfigError naming the field."""

    def _need(self, ok: bool, name: str, msg: str) -> None:
        """ValueError naming the field, the rule and the value when ``ok`` is false."""
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} {msg}, got {getattr(self, name)!r}")

    def _need_splits(self) -> None:
        """``splits`` is (train split, val split), two non-empty names."""
        self._need(len(self.splits) == 2 and all(isinstance(s, str) and s for s in self.splits), "splits", "must be (train_split, val_split)")

    def _normalise(self) -> None:
        check_name("dataset", self.dataset, "dataset")
        object.__setattr__(self, "splits", tuple(self.splits))
        for i, split in enumerate(self.splits):
            check_name("split", split, f"splits[{i}]")
        for name in ("cache_root", "out_dir"):
            object.__setattr__(self, name, str(getattr(self, name)))
        if str(self.loop.out_dir) != self.out_dir:
            object.__setattr__(self, "loop", replace(self.loop, out_dir=self.out_dir))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["splits"] = list(self.splits)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        return build(cls, d)


def preset(presets: Mapping[str, C], name: str, head: str = "head") -> C:
    """``presets[name]``; an unknown name is a ConfigError listing the presets and the closest."""
    if name not in presets:
        raise unknown_name(f"{head} preset", name, sorted(presets))
    return presets[name]


def given(overrides: Mapping[str, Any] | None) -> dict:
    """``overrides`` without the None values (CLI options not given), nested mappings included."""
    out = {}
    for k, v in (overrides or {}).items():
        if isinstance(v, Mapping):
            v = given(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


def load_head_config(cls: type[C], presets: Mapping[str, C], preset_name: str = "demo", path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None, head: str = "head") -> C:
    """``preset_name``'s config, with the YAML file at ``path`` and then ``overrides`` (None = not given) on top."""
    base = preset(presets, preset_name, head)
    data = read_yaml(path, f"{head} config file") if path is not None else {}
    data = merge(data, given(overrides))
    loop = data.get("loop")
    if "out_dir" not in data and isinstance(loop, Mapping) and "out_dir" in loop:
        data["out_dir"] = loop["out_dir"]
    return build(cls, data, "", base=base)
