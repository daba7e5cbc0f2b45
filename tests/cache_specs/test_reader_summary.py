"""``open_cache(...)``'s summary on the demo's real caches: bytes on disk, rows per part,
provenance of every cache kind, class balance of labelled caches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from navcache.cache_specs import open_cache
from navcache.cache_specs.labels import LABELS
from navcache.cache_specs.layout import PARTS, read_json
from navcache.cache_specs.reader import iter_caches


def _caches(root: Path) -> dict[str, Path]:
    """{spec name: one complete train cache of it}."""
    out = {}
    for d in iter_caches(root):
        if d.parent.name == "train" and (d / "manifest.json").exists():
            out.setdefault(d.name, d)
    return out


def _files_bytes(d: Path) -> int:
    return sum(os.stat(os.path.join(p, f)).st_size for p, _, fs in os.walk(d) for f in fs)


def test_demo_has_every_cache_kind(demo_cache_root):
    assert {"frame_features", "geometry", "rover_meta"} <= set(_caches(demo_cache_root))


@pytest.mark.parametrize("spec", ["frame_features", "geometry", "rover_meta", "poses", "keyframes"])
def test_disk_size_and_part_rows(demo_cache_root, spec):
    d = _caches(demo_cache_root).get(spec)
    if d is None:
        pytest.skip(f"the demo builds no {spec} cache")
    c = open_cache(d)
    s = c.summary()
    total = _files_bytes(d)
    assert s["disk"]["total_bytes"] == total
    assert f"{total} bytes" in repr(c) and f"{total} bytes" in c._repr_html_()
    # per array and per part: the sizes the parts' part.json record, which are the data files' sizes
    part_ids = sorted(p.name for p in (d / PARTS).iterdir() if not p.name.startswith("."))
    metas = {p: read_json(d / PARTS / p / "part.json") for p in part_ids}
    data_bytes = sum(os.stat(d / PARTS / p / rel).st_size for p, m in metas.items() for rel in m["files"])
    assert sum(s["disk"]["arrays"].values()) == data_bytes
    assert {p: v["rows"] for p, v in s["disk"]["parts"].items()} == {p: m["n_rows"] for p, m in metas.items()}
    if c.manifest["backend"].startswith("zarr"):
        for name in c.array_names:
            on_disk = sum(os.stat(f).st_size for p in part_ids for f in (d / PARTS / p / "data.zarr" / name).rglob("*") if f.is_file())
            assert s["disk"]["arrays"][name] == on_disk
    rows = [m["n_rows"] for m in metas.values()]
    text = repr(c)
    if len(rows) <= 4:
        for p, n in zip(part_ids, rows):
            assert f"{p} {n} rows" in text and f"{p} {n} rows" in c._repr_html_()
    else:
        line = f"min {min(rows)} / median {int(np.median(rows))} / max {max(rows)} over {len(rows)} parts"
        assert line in text and line in c._repr_html_()


def test_geometry_provenance_names_its_provider(demo_cache_root):
    c = open_cache(_caches(demo_cache_root)["geometry"])
    prov = c.manifest["provenance"]["geometry"]
    text, page = repr(c), c._repr_html_()
    assert f"provider={prov['provider']}" in text and f"provider={prov['provider']}" in page
    if prov["provider"] == "vggt":
        assert f"id={prov['id']}" in text
        assert ("RANDOM-INIT" in text) == bool(prov.get("random_init"))


def test_encoder_provenance_still_shown(demo_cache_root):
    c = open_cache(_caches(demo_cache_root)["frame_features"])
    enc = c.manifest["provenance"]["encoder"]
    assert f"id={enc['id']}" in repr(c) and "RANDOM-INIT" in repr(c)


def test_rover_meta_class_balance_matches_bincount(demo_cache_root):
    c = open_cache(_caches(demo_cache_root)["rover_meta"])
    text, page = repr(c), c._repr_html_()
    for label, names in LABELS.items():
        counts = np.bincount(c.load(label), minlength=len(names))
        assert c.summary()["class_balance"][label] == dict(zip(names, counts.tolist()))
        line = f"{label}: " + " ".join(f"{n}={k}" for n, k in zip(names, counts))
        assert line in text and line in page
    assert sum(c.summary()["class_balance"]["risk"].values()) == len(c)


def test_unlabelled_cache_has_no_class_balance(demo_cache_root):
    c = open_cache(_caches(demo_cache_root)["frame_features"])
    assert c.summary()["class_balance"] == {}


def test_summary_fits_one_screen(demo_cache_root):
    for d in _caches(demo_cache_root).values():
        text = repr(open_cache(d))
        lines = text.replace(str(demo_cache_root.parent), "<tmp>").splitlines()  # tmp paths are long
        assert len(lines) <= 30 and max(map(len, lines)) <= 140, text


def test_vggt_provenance_line():
    from navcache.cache_specs.describe import provenance_lines

    line, = provenance_lines({"geometry": {"provider": "vggt", "id": "facebook/VGGT-1B", "architecture": "vggt.models.vggt:VGGT", "random_init": False}})
    assert line == "geometry: provider=vggt id=facebook/VGGT-1B architecture=vggt.models.vggt:VGGT (pretrained)"
