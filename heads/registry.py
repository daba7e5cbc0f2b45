"""Every head, by CLI name: one line each, imported only when asked for (``navcache --help`` imports nothing).

Adding a head is one folder ``heads/<name>/`` laid out like its siblings plus one line in ``HEADS``::

    configuration.py  Config (a frozen dataclass), PRESETS {name: Config}, READS (cache spec names per split)
    data.py           caches -> in-memory tensors
    model.py          the nn.Modules
    train.py          the Task for ``heads.train_loop.run_loop``
    predict.py        read_checkpoint(path) -> dict; predict_split(checkpoint, cache_root, dataset, split, out, ...)
    __init__.py       the head's interface: Config, PRESETS, READS, load_config, train_head, read_checkpoint, predict_split

The CLI reads a head's ``READS`` for its dataset and splits to bring those caches up to date first
(the demo only); a head itself only ever reads caches.
"""
from __future__ import annotations

import importlib
from types import ModuleType

HEADS: dict[str, str] = {
    "flow-expert": "navcache.heads.flow_expert",
    "gru-motion": "navcache.heads.gru_motion",
    "heatmaps": "navcache.heads.heatmaps",
    "sim-heads": "navcache.heads.sim_heads",
    "velocity-head": "navcache.heads.velocity_head",
}


def check(name: str) -> str:
    """``name`` if it is a registered head; else a ConfigError listing the heads and the closest."""
    from navcache.cache_specs.config import unknown_name  # here, so the CLI can list HEADS without importing cache_specs

    if name not in HEADS:
        raise unknown_name("head", name, sorted(HEADS))
    return name


def get(name: str) -> ModuleType:
    """The head's package (its interface, see the module docstring), imported now."""
    return importlib.import_module(HEADS[check(name)])


def reads(head: ModuleType, dataset: str, splits, config=None) -> list[tuple[str, str, str]]:
    """[(dataset, split, spec name)] of every cache ``head`` reads for those splits: the head's own
    ``reads(dataset, splits, config)`` where it has one (a head reading other datasets' caches too,
    named in its ``config``), else its ``READS`` for ``dataset``."""
    if callable(getattr(head, "reads", None)):
        return list(head.reads(dataset, splits, config))
    return [(dataset, split, spec) for split in splits for spec in head.READS]
