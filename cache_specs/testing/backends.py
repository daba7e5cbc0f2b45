"""A reusable conformance suite for navcache storage backends, written once.

Subclass ``BackendConformance`` with a ``backend_name`` (``tests/cache_specs/test_backends.py`` does it for the
built-in backends)::

    class TestZarr(BackendConformance):
        backend_name = "zarr"

The suite has two layers:

* the raw ``Backend`` interface (``write(part_dir, arrays, chunk_rows)`` / ``open(part_dir)``):
  dtype and shape round trips, zero rows, ragged last chunks, lazy slicing, refusal to overwrite;
* the whole path a real pipeline takes through that backend: ``write_part`` (atomic commit,
  quarantine, idempotent retries) -> ``finalize_cache`` -> ``open_cache`` (index, per-episode
  access, ``ArrayView`` indexing across part boundaries, ``load``, ``offsets``, the torch dataset,
  ``repr``), including a hypothesis property test with random episodes split into random parts;
* damage (``DamageConformance`` in ``cache_specs.testing.damage``): a shard deleted, emptied, cut or
  with a flipped byte, two part folders swapped, index and part.json disagreeing, each read through
  ``load``, ``c[...]``, the torch dataset and ``make_loader`` (stream and memory): every one raises
  ``DamagedCache`` naming the part, none returns zeros or another part's rows.

Everything runs on real files under pytest's ``tmp_path``; nothing is mocked.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..backends import BACKENDS, get_backend
from .damage import DamageConformance
from ..layout import MANIFEST, PART_JSON, PARTS, TMP_PREFIX, TRASH_PREFIX, cache_dir as layout_cache_dir, part_id
from ..manifest import IncompleteCache, finalize_cache, invalidate, read_manifest
from ..parts import EpisodeResult, read_part_meta, write_part
from ..reader import open_cache
from ..spec import ArraySpec, CacheSpec, many_rows
from ..specs import get_spec

# --------------------------------------------------------------------------------------------
# Specs and data used by the suite
# --------------------------------------------------------------------------------------------

FRAME_SPEC = CacheSpec(
    name="conf_frames",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("feat", "float16", ("D",)),
        ArraySpec("grid", "float32", ("G", "G", 2)),
        ArraySpec("idx", "int64", ()),
        ArraySpec("code", "uint8", (3,)),
        ArraySpec("mask", "bool", ()),
    ),
)
EPISODE_SPEC = CacheSpec(
    name="conf_episodes",
    version=1,
    row="episode",
    arrays=(
        ArraySpec("poses", "float32", ("T", 3)),
        ArraySpec("frame_index", "int64", ("T",)),
        ArraySpec("label", "uint8", ()),
        ArraySpec("padded", "bool", ("T",)),
        ArraySpec("emb", "float16", ("D",)),
    ),
)

#: name -> (spec, dims); the built-in specs are exercised too, with small dims.
SPECS: dict[str, tuple[CacheSpec, dict[str, int]]] = {
    "frame": (FRAME_SPEC, {"D": 5, "G": 2}),
    "episode": (EPISODE_SPEC, {"T": 4, "D": 6}),
    "builtin_poses": (get_spec("poses"), {"T": 3, "S": 2}),
    "builtin_frame_features": (get_spec("frame_features"), {"D": 4, "G": 2}),
}

ENCODER = {"id": "facebook/dinov2-small", "random_init": False}

DTYPES = ("float16", "float32", "int64", "uint8", "bool")
ROW_SHAPES = ((), (3,), (2, 3), (2, 1, 4))


def random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise the whole dtype (large int64, negative floats, both bools)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dt)
    if dt == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dt == np.int64:
        return rng.integers(-(2**40), 2**40, shape, dtype=np.int64)
    raise AssertionError(f"no generator for {dtype}")


def make_episode(spec: CacheSpec, dims: Mapping[str, int], eid: str, n: int, seed: int) -> EpisodeResult:
    """An ok episode with ``n`` rows (row="frame") or one row (row="episode")."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (dtype, shape) in spec.resolved(dims).items():
        full = shape if spec.row == "episode" else (n, *shape)
        arrays[name] = random_array(rng, dtype.str, full)
    return EpisodeResult(eid, arrays, meta={"seed": seed})


def quarantined(eid: str, reason: str) -> EpisodeResult:
    return EpisodeResult(eid, None, reason)


def episode_rows(spec: CacheSpec, r: EpisodeResult) -> int:
    return 1 if spec.row == "episode" else next(iter(r.arrays.values())).shape[0]


def expected_arrays(spec: CacheSpec, dims: Mapping[str, int], plan: Sequence[Sequence[EpisodeResult]]) -> dict[str, np.ndarray]:
    """The global arrays a reader must return: ok episodes, parts in order, rows in storage order."""
    out = {}
    for name, (dtype, shape) in spec.resolved(dims).items():
        blocks = [
            (np.asarray(r.arrays[name])[None] if spec.row == "episode" else np.asarray(r.arrays[name]))
            for part in plan
            for r in part
            if r.reason is None
        ]
        out[name] = np.concatenate(blocks) if blocks else np.zeros((0, *shape), dtype)
    return out


def build_cache(
    cdir: Path,
    backend: str,
    spec: CacheSpec,
    dims: Mapping[str, int],
    plan: Sequence[Sequence[EpisodeResult]],
    chunk_rows: int = 3,
    info: Mapping | None = None,
) -> dict:
    """Write every part of ``plan`` with ``write_part`` and finalise; return the manifest."""
    expected = {}
    for i, results in enumerate(plan):
        pid = part_id(i)
        fp = f"fp-{spec.name}-{i}"
        write_part(cdir / PARTS, pid, fp, spec, dims, results, backend=backend, chunk_rows=chunk_rows, provenance={"encoder": ENCODER})
        expected[pid] = fp
    if info is None:
        info = {"stage": "test", "backend": backend, "provenance": {"encoder": ENCODER}}
    return finalize_cache(cdir, expected, info)


def standard_plan(spec: CacheSpec, dims: Mapping[str, int]) -> list[list[EpisodeResult]]:
    """Four parts: quarantined episodes mixed in, a zero-length episode, a part with no ok rows."""
    lengths = {"a": 4, "c": 2, "d": 0, "e": 5, "f": 3, "g": 1}
    ep = {k: make_episode(spec, dims, f"ep_{k}", n, seed) for seed, (k, n) in enumerate(lengths.items())}
    return [
        [ep["a"], quarantined("ep_b", "decode error: truncated video"), ep["c"]],
        [ep["d"], ep["e"]],
        [quarantined("ep_q1", "too short: 0 frames"), quarantined("ep_q2", "missing poses")],
        [ep["f"], ep["g"]],
    ]


def leftover_temporaries(root: Path) -> list[str]:
    """Every ``.tmp-*`` / ``.trash-*`` file or folder anywhere under ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if n.startswith((TMP_PREFIX, TRASH_PREFIX)):
                found.append(os.path.join(dirpath, n))
    return found


def assert_episode_equal(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


class BackendConformance(DamageConformance):
    """Every storage backend must pass all of these (the damage checks of ``DamageConformance``
    included). Subclasses set ``backend_name``."""

    backend_name: str = ""

    @pytest.fixture
    def backend(self):
        assert self.backend_name in BACKENDS, f"{type(self).__name__}.backend_name={self.backend_name!r} is not a known backend"
        be = get_backend(self.backend_name)
        assert be.name == self.backend_name
        return be

    def _write(self, backend, tmp_path: Path, arrays: Mapping[str, np.ndarray], chunk_rows: int) -> Path:
        part_dir = tmp_path / "part"
        part_dir.mkdir()
        backend.write(part_dir, arrays, chunk_rows)
        assert (part_dir / backend.data_name).exists(), "write must put its data under part_dir/data_name"
        return part_dir

    def _read_back(self, backend, part_dir: Path, arrays: Mapping[str, np.ndarray]) -> None:
        part = backend.open(part_dir)
        try:
            assert part.names() == sorted(arrays)
            for name, want in arrays.items():
                lazy = part[name]
                assert tuple(lazy.shape) == want.shape, name
                assert np.dtype(lazy.dtype) == want.dtype, name
                got = np.asarray(lazy[...])
                assert got.dtype == want.dtype, name
                assert got.shape == want.shape, name
                np.testing.assert_array_equal(got, want, err_msg=name)
        finally:
            part.close()

    # -- raw backend interface ----------------------------------------------------------------

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_round_trip_dtypes_and_row_shapes(self, backend, tmp_path, dtype):
        rng = np.random.default_rng(1)
        arrays = {f"a{i}": random_array(rng, dtype, (7, *shape)) for i, shape in enumerate(ROW_SHAPES)}
        part_dir = self._write(backend, tmp_path, arrays, chunk_rows=3)
        self._read_back(backend, part_dir, arrays)

    def test_round_trip_mixed_dtypes_in_one_part(self, backend, tmp_path):
        rng = np.random.default_rng(2)
        arrays = {f"x_{dt}": random_array(rng, dt, (11, 2, 3)) for dt in DTYPES}
        # special float values must survive bit-exactly
        arrays["specials"] = np.resize(np.array([np.nan, np.inf, -np.inf, -0.0, 65504, 6e-8], np.float16), (11, 1))
        part_dir = self._write(backend, tmp_path, arrays, chunk_rows=4)
        self._read_back(backend, part_dir, arrays)
        part = backend.open(part_dir)
        try:
            got = np.asarray(part["specials"][...])
            assert got.view(np.uint16).tolist() == arrays["specials"].view(np.uint16).tolist()
        finally:
            part.close()

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_zero_rows(self, backend, tmp_path, dtype):
        arrays = {f"a{i}": np.zeros((0, *shape), dtype) for i, shape in enumerate(ROW_SHAPES)}
        part_dir = self._write(backend, tmp_path, arrays, chunk_rows=4)
        self._read_back(backend, part_dir, arrays)
        part = backend.open(part_dir)
        try:
            for name, want in arrays.items():
                got = np.asarray(part[name][0:0])
                assert got.shape == want.shape and got.dtype == want.dtype
        finally:
            part.close()

    @pytest.mark.parametrize("rows,chunk_rows", [(1, 4), (5, 4), (7, 3), (13, 4), (9, 1), (4, 100), (64, 64), (65, 64)])
    def test_rows_not_a_multiple_of_chunk_rows(self, backend, tmp_path, rows, chunk_rows):
        rng = np.random.default_rng(rows * 1000 + chunk_rows)
        arrays = {
            "f": random_array(rng, "float32", (rows, 3)),
            "i": random_array(rng, "int64", (rows,)),
            "b": random_array(rng, "bool", (rows, 2, 2)),
        }
        part_dir = self._write(backend, tmp_path, arrays, chunk_rows=chunk_rows)
        self._read_back(backend, part_dir, arrays)
        part = backend.open(part_dir)
        try:  # the last (partial) chunk is read on its own too
            last = max(0, rows - (rows % chunk_rows or chunk_rows))
            np.testing.assert_array_equal(np.asarray(part["f"][last:rows]), arrays["f"][last:rows])
        finally:
            part.close()

    def test_lazy_slicing_matches_full_read(self, backend, tmp_path):
        rng = np.random.default_rng(3)
        arrays = {"f": random_array(rng, "float16", (23, 4)), "i": random_array(rng, "int64", (23,)), "u": random_array(rng, "uint8", (23, 2, 2))}
        part_dir = self._write(backend, tmp_path, arrays, chunk_rows=5)
        part = backend.open(part_dir)
        try:
            for name, want in arrays.items():
                full = np.asarray(part[name][...])
                np.testing.assert_array_equal(full, want)
                bounds = [0, 1, 4, 5, 6, 10, 11, 22, 23, 30, -1, -5, -23]
                for a in bounds:
                    for b in bounds:
                        np.testing.assert_array_equal(np.asarray(part[name][a:b]), full[a:b], err_msg=f"{name}[{a}:{b}]")
                for i in (0, 4, 5, 22, -1):
                    np.testing.assert_array_equal(np.asarray(part[name][i]), full[i])
                np.testing.assert_array_equal(np.asarray(part[name][:]), full)
                np.testing.assert_array_equal(np.asarray(part[name][2:19:3]), full[2:19:3])
        finally:
            part.close()

    def test_write_refuses_a_folder_that_already_holds_data(self, backend, tmp_path):
        first = {"x": np.arange(10, dtype=np.int64)}
        part_dir = self._write(backend, tmp_path, first, chunk_rows=4)
        before = sorted(p.relative_to(part_dir) for p in part_dir.rglob("*"))
        with pytest.raises(FileExistsError):
            backend.write(part_dir, {"x": np.full(3, -1, np.int64)}, 4)
        with pytest.raises(FileExistsError):
            backend.write(part_dir, {"y": np.full(3, -1, np.int64)}, 4)
        # nothing was overwritten, nothing was added
        assert sorted(p.relative_to(part_dir) for p in part_dir.rglob("*")) == before
        self._read_back(backend, part_dir, first)

    # -- the whole write_part -> finalize_cache -> open_cache path -----------------------------

    @pytest.mark.parametrize("spec_key", list(SPECS))
    def test_cache_round_trip(self, tmp_path, spec_key):
        spec, dims = SPECS[spec_key]
        plan = standard_plan(spec, dims)
        cdir = layout_cache_dir(tmp_path, "demo", "train", spec.name)
        manifest = build_cache(cdir, self.backend_name, spec, dims, plan)
        want = expected_arrays(spec, dims, plan)
        ok = [r for part in plan for r in part if r.reason is None]
        bad = [r for part in plan for r in part if r.reason is not None]
        n_rows = sum(episode_rows(spec, r) for r in ok)
        assert manifest["counts"] == {"parts": len(plan), "episodes": len(ok) + len(bad), "ok": len(ok), "quarantined": len(bad), "rows": n_rows}
        assert not leftover_temporaries(tmp_path)

        c = open_cache(tmp_path, "demo", "train", spec.name)
        assert c.path == cdir
        self._check_index(c, spec, plan)
        self._check_episodes(c, spec, ok, bad)
        self._check_array_views(c, want, plan)
        self._check_offsets(c, spec, ok)
        self._check_torch(c, spec, ok)
        self._check_repr(c, len(ok), len(bad), n_rows, len(plan))
        c.close()

    def _check_index(self, c, spec, plan):
        import polars as pl

        idx = c.index
        assert isinstance(idx, pl.DataFrame)
        assert idx.columns == ["episode_id", "part", "start", "length", "status", "reason"]
        rows = list(idx.iter_rows(named=True))
        flat = [(part_id(i), r) for i, part in enumerate(plan) for r in part]
        assert [row["episode_id"] for row in rows] == [r.episode_id for _, r in flat]
        assert [row["part"] for row in rows] == [p for p, _ in flat]
        starts: dict[str, int] = {}
        for row, (pid, r) in zip(rows, flat):
            if r.reason is None:
                n = episode_rows(spec, r)
                assert (row["status"], row["reason"], row["length"]) == ("ok", None, n)
                assert row["start"] == starts.get(pid, 0)  # start is local to the part
                starts[pid] = starts.get(pid, 0) + n
            else:
                assert (row["status"], row["reason"], row["length"]) == ("quarantined", r.reason, 0)

    def _check_episodes(self, c, spec, ok, bad):
        assert len(c) == len(ok)
        assert c.episodes == [r.episode_id for r in ok]
        assert sorted(c.array_names) == sorted(a.name for a in spec.arrays)
        for i, r in enumerate(ok):
            assert r.episode_id in c
            assert_episode_equal(c[r.episode_id], r.arrays)
            assert_episode_equal(c[i], r.arrays)
        for got, r in zip(c, ok):
            assert_episode_equal(got, r.arrays)
        # quarantined episodes: listed with their reasons, excluded from the data
        q = c.quarantined
        assert q.columns == ["episode_id", "reason"]
        assert list(q.iter_rows()) == [(r.episode_id, r.reason) for r in bad]
        for r in bad:
            assert r.episode_id not in c
            with pytest.raises(KeyError):
                c[r.episode_id]

    def _check_array_views(self, c, want, plan):
        n = len(next(iter(want.values())))
        # global row where each part's block begins: reads that straddle them are the hard case
        boundaries = sorted({0, n} | {int(x) for x in np.cumsum([sum(int(np.asarray(next(iter(r.arrays.values()))).shape[0]) if c.spec["row"] == "frame" else 1 for r in part if r.reason is None) for part in plan])})
        rng = np.random.default_rng(7)
        for name, w in want.items():
            v = c.array(name)
            assert v.shape == w.shape and len(v) == n and v.dtype == w.dtype
            assert name in repr(v)
            ints = sorted({b + d for b in boundaries for d in (-1, 0)} & set(range(n))) + [-1, -n]
            for i in ints:
                got = v[i]
                assert np.asarray(got).dtype == w.dtype and np.shape(got) == w.shape[1:]
                np.testing.assert_array_equal(got, w[i], err_msg=f"{name}[{i}]")
            np.testing.assert_array_equal(v[np.int64(n - 1)], w[n - 1])
            for bad_i in (n, -n - 1, 10**6):
                with pytest.raises(IndexError):
                    v[bad_i]
            slices = [slice(None), slice(1, -1), slice(None, None, 2), slice(None, None, -1), slice(5, 2), slice(n + 5, None), slice(-3, None), slice(1, n, 3)]
            slices += [slice(max(0, b - 2), b + 2) for b in boundaries]
            for s in slices:
                got = v[s]
                assert got.dtype == w.dtype
                np.testing.assert_array_equal(got, w[s], err_msg=f"{name}[{s}]")
            int_arrays = [
                np.arange(n)[::-1],
                rng.integers(0, n, 2 * n),  # duplicates, unsorted, across every part
                np.array(boundaries[1:-1], dtype=np.int64) if len(boundaries) > 2 else np.array([0]),
                np.array([n - 1, 0, n - 1]),
                np.array([], dtype=np.int64),
                np.array([-1, 0, -n]),  # numpy semantics: negative entries count from the end
                rng.integers(-n, n, 3 * n),
            ]
            for ia in int_arrays:
                got = v[ia]
                assert got.shape == (len(ia), *w.shape[1:]) and got.dtype == w.dtype
                np.testing.assert_array_equal(got, w[ia], err_msg=f"{name}[{ia.tolist()}]")
            np.testing.assert_array_equal(v[[n - 1, 0]], w[[n - 1, 0]])  # a plain list works too
            mask = rng.random(n) < 0.5  # a boolean mask selects rows, as in numpy
            np.testing.assert_array_equal(v[mask], w[mask])
            with pytest.raises(IndexError):
                v[mask[:-1]]
            for bad_ia in ([0, n], [-n - 1]):
                with pytest.raises(IndexError):
                    v[np.array(bad_ia)]
            np.testing.assert_array_equal(v.to_numpy(), w)
            loaded = c.load(name)
            assert loaded.dtype == w.dtype
            np.testing.assert_array_equal(loaded, w)
        with pytest.raises(KeyError):
            c.array("no_such_array")

    def _check_offsets(self, c, spec, ok):
        starts, lengths = c.offsets()
        want_len = [episode_rows(spec, r) for r in ok]
        assert lengths.tolist() == want_len
        assert starts.tolist() == np.concatenate([[0], np.cumsum(want_len)[:-1]]).astype(int).tolist()
        for s, n, r in zip(starts, lengths, ok):  # offsets index the global arrays
            for name in c.array_names:
                block = c.array(name)[int(s) : int(s + n)]
                np.testing.assert_array_equal(block, r.arrays[name] if many_rows(spec.row) else r.arrays[name][None])

    def _check_torch(self, c, spec, ok):
        import torch

        mem = c.torch_dataset(in_memory=True)
        lazy = c.torch_dataset(in_memory=False)
        assert len(mem) == len(lazy) == len(ok)
        for i, r in enumerate(ok):
            a, b = mem[i], lazy[i]
            assert sorted(a) == sorted(b) == sorted([*r.arrays, "episode_id"])
            assert a["episode_id"] == b["episode_id"] == r.episode_id
            for name, want in r.arrays.items():
                assert isinstance(a[name], torch.Tensor) and isinstance(b[name], torch.Tensor)
                assert a[name].dtype == b[name].dtype
                assert tuple(a[name].shape) == tuple(b[name].shape) == want.shape
                assert torch.equal(a[name], b[name]), name
                np.testing.assert_array_equal(a[name].numpy(), want)
        sub = c.torch_dataset(arrays=[c.array_names[0]], in_memory=False)
        assert sorted(sub[0]) == sorted([c.array_names[0], "episode_id"])

    def _check_repr(self, c, n_ok, n_q, n_rows, n_parts):
        text = repr(c)
        assert f"{n_ok} episodes ok, {n_q} quarantined, {n_rows} rows in {n_parts} parts" in text
        assert self.backend_name in text
        assert ENCODER["id"] in text and "pretrained" in text and "RANDOM-INIT" not in text
        page = c._repr_html_()
        assert f"{n_ok} ok / {n_q} quarantined episodes, {n_rows} rows, {n_parts} parts" in page
        assert ENCODER["id"] in page and "RANDOM-INIT" not in page
        for name in c.array_names:
            assert name in text and name in page

    def test_repr_flags_a_random_init_encoder(self, tmp_path):
        spec, dims = SPECS["episode"]
        plan = [[make_episode(spec, dims, "e0", 1, 0)]]
        enc = {"id": "my/<random>&encoder", "random_init": True}
        build_cache(tmp_path, self.backend_name, spec, dims, plan, info={"backend": self.backend_name, "provenance": {"encoder": enc}})
        c = open_cache(tmp_path)
        assert "RANDOM-INIT" in repr(c) and enc["id"] in repr(c)
        page = c._repr_html_()
        assert "RANDOM-INIT" in page
        assert "my/&lt;random&gt;&amp;encoder" in page and enc["id"] not in page  # escaped
        # without provenance, nothing about an encoder is claimed
        build_cache(tmp_path / "plain", self.backend_name, spec, dims, plan, info={"backend": self.backend_name})
        c2 = open_cache(tmp_path / "plain")
        assert "encoder" not in repr(c2).lower() and "encoder" not in c2._repr_html_().lower()

    def test_open_cache_without_manifest_raises(self, tmp_path):
        spec, dims = SPECS["frame"]
        with pytest.raises(IncompleteCache):
            open_cache(tmp_path / "nothing_here")
        # parts written but never finalised: still incomplete
        write_part(tmp_path / PARTS, part_id(0), "fp", spec, dims, [make_episode(spec, dims, "e", 3, 0)], backend=self.backend_name)
        with pytest.raises(IncompleteCache):
            open_cache(tmp_path)
        with pytest.raises(ValueError):
            open_cache(tmp_path, "demo")  # dataset without split/spec

    def test_invalidate_makes_the_cache_incomplete(self, tmp_path):
        spec, dims = SPECS["frame"]
        build_cache(tmp_path, self.backend_name, spec, dims, [[make_episode(spec, dims, "e", 3, 0)]])
        assert len(open_cache(tmp_path)) == 1
        invalidate(tmp_path)
        assert not (tmp_path / MANIFEST).exists()
        with pytest.raises(IncompleteCache):
            open_cache(tmp_path)
        with pytest.raises(IncompleteCache):
            read_manifest(tmp_path)
        invalidate(tmp_path)  # idempotent

    def test_finalize_refuses_missing_or_stale_parts(self, tmp_path):
        spec, dims = SPECS["frame"]
        build_cache(tmp_path, self.backend_name, spec, dims, [[make_episode(spec, dims, "e", 3, 0)]])
        invalidate(tmp_path)
        with pytest.raises(IncompleteCache, match="part-00000"):
            finalize_cache(tmp_path, {part_id(0): "another-fingerprint"}, {})
        with pytest.raises(IncompleteCache, match="part-00001"):
            finalize_cache(tmp_path, {part_id(0): f"fp-{spec.name}-0", part_id(1): "fp"}, {})
        assert not (tmp_path / MANIFEST).exists()

    def test_write_part_same_fingerprint_is_idempotent(self, tmp_path):
        spec, dims = SPECS["frame"]
        first = [make_episode(spec, dims, "e0", 4, 0), make_episode(spec, dims, "e1", 2, 1)]
        retry = [make_episode(spec, dims, "e0", 4, 99)]  # a retried task: same fingerprint wins, data untouched
        parts = tmp_path / PARTS
        write_part(parts, part_id(0), "fp-A", spec, dims, first, backend=self.backend_name)
        meta1 = read_part_meta(parts / part_id(0))
        ino = (parts / part_id(0)).stat().st_ino
        write_part(parts, part_id(0), "fp-A", spec, dims, retry, backend=self.backend_name)
        assert read_part_meta(parts / part_id(0)) == meta1
        assert (parts / part_id(0)).stat().st_ino == ino
        assert sorted(p.name for p in parts.iterdir()) == [part_id(0)]
        finalize_cache(tmp_path, {part_id(0): "fp-A"}, {"backend": self.backend_name})
        c = open_cache(tmp_path)
        assert c.episodes == ["e0", "e1"]
        assert_episode_equal(c["e0"], first[0].arrays)
        assert not leftover_temporaries(tmp_path)

    def test_write_part_new_fingerprint_replaces_the_part(self, tmp_path):
        spec, dims = SPECS["frame"]
        old = [make_episode(spec, dims, "e0", 4, 0), make_episode(spec, dims, "e1", 2, 1)]
        new = [make_episode(spec, dims, "n0", 3, 50)]
        parts = tmp_path / PARTS
        write_part(parts, part_id(0), "fp-A", spec, dims, old, backend=self.backend_name)
        meta = write_part(parts, part_id(0), "fp-B", spec, dims, new, backend=self.backend_name)
        on_disk = read_part_meta(parts / part_id(0))
        assert on_disk["fingerprint"] == "fp-B" and on_disk == meta
        assert on_disk["n_rows"] == 3 and [e["episode_id"] for e in on_disk["episodes"]] == ["n0"]
        assert sorted(p.name for p in parts.iterdir()) == [part_id(0)]
        assert not leftover_temporaries(tmp_path)
        with pytest.raises(IncompleteCache):
            finalize_cache(tmp_path, {part_id(0): "fp-A"}, {})
        finalize_cache(tmp_path, {part_id(0): "fp-B"}, {"backend": self.backend_name})
        c = open_cache(tmp_path)
        assert c.episodes == ["n0"]
        assert_episode_equal(c["n0"], new[0].arrays)
        assert not leftover_temporaries(tmp_path)

    def test_part_json_records_what_was_written(self, tmp_path):
        spec, dims = SPECS["frame"]
        results = [make_episode(spec, dims, "e0", 4, 0), quarantined("e1", "bad"), make_episode(spec, dims, "e2", 3, 2)]
        meta = write_part(tmp_path, part_id(3), "fp", spec, dims, results, backend=self.backend_name, chunk_rows=2)
        pdir = tmp_path / part_id(3)
        assert (pdir / PART_JSON).is_file()
        assert meta["backend"] == self.backend_name and meta["part"] == part_id(3)
        assert (meta["n_rows"], meta["n_episodes"], meta["n_ok"]) == (7, 3, 2)
        assert meta["spec"] == spec.to_json(dims)
        assert meta["episodes"][0]["meta"] == {"seed": 0}
        listed = set(meta["files"])
        on_disk = {str(p.relative_to(pdir)) for p in pdir.rglob("*") if p.is_file()} - {PART_JSON}
        assert listed == on_disk and all(f.startswith(get_backend(self.backend_name).data_name) for f in listed)
        for name, rec in meta["arrays"].items():
            dtype, shape = spec.resolved(dims)[name]
            assert rec["dtype"] == dtype.str and rec["shape"] == [7, *shape]

    def test_spec_mismatch_quarantines_only_that_episode(self, tmp_path):
        spec, dims = SPECS["frame"]
        good = [make_episode(spec, dims, f"good{i}", n, i) for i, n in enumerate((3, 2, 4))]

        def broken(eid, **change):
            arrays = dict(make_episode(spec, dims, eid, 2, 77).arrays)
            for k, v in change.items():
                if v is None:
                    arrays.pop(k)
                else:
                    arrays[k] = v
            return EpisodeResult(eid, arrays)

        bad = [
            broken("wrong_dtype", feat=np.zeros((2, 5), np.float32)),
            broken("wrong_shape", grid=np.zeros((2, 2, 3, 2), np.float32)),
            broken("missing_array", mask=None),
            broken("extra_array", bonus=np.zeros(2, np.int64)),
            broken("row_count_disagrees", idx=np.zeros(3, np.int64)),
            broken("scalar_for_frame_array", idx=np.int64(5)),  # a 0-d value where [n] rows are due
        ]
        results = [good[0], *bad[:3], good[1], *bad[3:], good[2]]
        write_part(tmp_path / PARTS, part_id(0), "fp", spec, dims, results, backend=self.backend_name, chunk_rows=2)
        finalize_cache(tmp_path, {part_id(0): "fp"}, {"backend": self.backend_name})
        c = open_cache(tmp_path)
        assert c.episodes == [g.episode_id for g in good]
        reasons = dict(c.quarantined.iter_rows())
        assert sorted(reasons) == sorted(b.episode_id for b in bad)
        for eid, reason in reasons.items():
            assert reason.startswith("internal: output does not match spec"), (eid, reason)
        assert "float32" in reasons["wrong_dtype"] and "grid" in reasons["wrong_shape"] and "mask" in reasons["missing_array"]
        want = expected_arrays(spec, dims, [good])
        for name, w in want.items():
            np.testing.assert_array_equal(c.load(name), w)
        for g in good:
            assert_episode_equal(c[g.episode_id], g.arrays)

    def test_no_temporaries_left_behind(self, tmp_path):
        spec, dims = SPECS["episode"]
        parts = tmp_path / PARTS
        for i in range(3):
            write_part(parts, part_id(i), f"fp{i}", spec, dims, [make_episode(spec, dims, f"e{i}", 1, i)], backend=self.backend_name)
        write_part(parts, part_id(1), "fp1", spec, dims, [make_episode(spec, dims, "x", 1, 9)], backend=self.backend_name)  # same fp
        write_part(parts, part_id(2), "fp2b", spec, dims, [make_episode(spec, dims, "y", 1, 8)], backend=self.backend_name)  # replace
        finalize_cache(tmp_path, {part_id(0): "fp0", part_id(1): "fp1", part_id(2): "fp2b"}, {"backend": self.backend_name})
        finalize_cache(tmp_path, {part_id(0): "fp0", part_id(1): "fp1", part_id(2): "fp2b"}, {"backend": self.backend_name})
        assert leftover_temporaries(tmp_path) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["index.parquet", MANIFEST, PARTS]
        assert sorted(p.name for p in parts.iterdir()) == [part_id(i) for i in range(3)]
        assert open_cache(tmp_path).episodes == ["e0", "e1", "y"]

    def test_failed_write_leaves_no_temporary(self, tmp_path):
        spec, dims = SPECS["frame"]
        parts = tmp_path / PARTS
        # the data is written, then part.json fails (NaN is not JSON): the private folder must go
        with pytest.raises(ValueError):
            write_part(parts, part_id(0), "fp", spec, dims, [make_episode(spec, dims, "e", 3, 0)], backend=self.backend_name, provenance={"x": float("nan")})
        assert leftover_temporaries(tmp_path) == []
        assert not (parts / part_id(0)).exists()

    # -- property: random episodes, random lengths, random parts, random index arrays ---------

    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
    @given(data=st.data())
    def test_property_random_parts_read_back_identically(self, data):
        spec, dims = SPECS["frame"]
        lengths = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=8), label="lengths")
        status = data.draw(st.lists(st.booleans(), min_size=len(lengths), max_size=len(lengths)), label="ok")
        cuts = sorted(data.draw(st.sets(st.integers(1, len(lengths)), max_size=3), label="cuts") - {len(lengths)})
        chunk_rows = data.draw(st.integers(1, 5), label="chunk_rows")
        eps = [make_episode(spec, dims, f"e{i}", n, i) if okay else quarantined(f"e{i}", "q") for i, (n, okay) in enumerate(zip(lengths, status))]
        bounds = [0, *cuts, len(eps)]
        plan = [eps[a:b] for a, b in zip(bounds, bounds[1:])]
        want = expected_arrays(spec, dims, plan)
        n = len(want["idx"])
        with tempfile.TemporaryDirectory() as tmp:
            build_cache(Path(tmp), self.backend_name, spec, dims, plan, chunk_rows=chunk_rows)
            with open_cache(tmp) as c:
                assert c.episodes == [r.episode_id for r in eps if r.reason is None]
                for name, w in want.items():
                    v = c.array(name)
                    assert v.shape == w.shape
                    np.testing.assert_array_equal(v[:], w)
                    if n:
                        idx = np.asarray(data.draw(st.lists(st.integers(-n, n - 1), max_size=2 * n + 2), label=f"index[{name}]"), dtype=np.int64)
                        np.testing.assert_array_equal(v[idx], w[idx])
                        s = data.draw(st.slices(n), label=f"slice[{name}]")
                        np.testing.assert_array_equal(v[s], w[s])
                for r in eps:
                    if r.reason is None:
                        assert_episode_equal(c[r.episode_id], r.arrays)
                    else:
                        assert r.episode_id not in c
