"""cache_specs.config: the one builder behind the project file and every head config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from navcache.cache_specs.config import build, parse_assignments, read_yaml, to_plain
from navcache.cache_specs.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    epochs: int = 10

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"Inner.epochs must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    splits: tuple[str, str] = ("train", "val")
    sizes: tuple[int, ...] = ()
    root: Path | None = None
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))


def test_nested_mapping_merges_over_the_field_default_and_over_a_base():
    assert build(Outer, {"inner": {"epochs": 3}}).inner == Inner(lr=0.5, epochs=3)  # lr from the default_factory
    base = Outer(name="preset", inner=Inner(lr=0.25, epochs=7))
    got = build(Outer, {"inner": {"epochs": 2}, "sizes": [1, 2]}, base=base)
    assert got == Outer(name="preset", sizes=(1, 2), inner=Inner(lr=0.25, epochs=2))
    assert build(Outer, {}, base=base) == base
    assert to_plain(got) == {"name": "preset", "splits": ["train", "val"], "sizes": [1, 2], "root": None, "inner": {"lr": 0.25, "epochs": 2}}


@pytest.mark.parametrize("data, message", [
    ({"inner": {"lr": "x"}}, "inner.lr: expected a number, got 'x'"),
    ({"inner": {"epochs": 0}}, "inner: Inner.epochs must be >= 1, got 0"),  # __post_init__, with the path
    ({"splits": ["a", "b", "c"]}, "splits: expected 2 items, got 3"),
    ({"sizes": [1, "two"]}, "sizes[1]: expected an integer, got 'two'"),
    ({"nmae": "y"}, "unknown field 'nmae' (valid: inner, name, root, sizes, splits); did you mean 'name'?"),
    ({"inner": {"epoch": 2}}, "inner: unknown field 'epoch' (valid: epochs, lr); did you mean 'epochs'?"),
    ({"inner": 3}, "inner: expected a mapping, got int"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        build(Outer, data)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)  # a bad value: callers catching ValueError keep working


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(ConfigError) as e:
        build(Outer, {"zzzz": 1})
    assert "did you mean" not in str(e.value)


def test_assignments_and_yaml(tmp_path):
    assert parse_assignments(["loop.lr=0.01", "K=2", "splits=[a, b]", "llm=null", "name=demo"]) == {
        "loop": {"lr": 0.01}, "K": 2, "splits": ["a", "b"], "llm": None, "name": "demo"}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_assignments([bad])
    with pytest.raises(ConfigError, match="used as a mapping"):
        parse_assignments(["a=1", "a.b=2"])
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        read_yaml(p)
    p.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    p.write_text("")
    assert read_yaml(p) == {}
