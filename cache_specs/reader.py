"""``open_cache``: the one-line way into a cache, from a notebook, the CLI or a trainer.

    >>> from cache_specs import open_cache
    >>> c = open_cache("navcache_cache/demo_rover/train/frame_features")
    >>> c.index                      # polars DataFrame, one row per episode
    >>> c["clip_00012"]["cls"]       # numpy arrays of one episode
    >>> c.array("cls")[100:200]      # lazy view over all parts
    >>> c.load("cls")                # whole array in memory (what trainers use)
    >>> c.read(["clip_00012", "clip_00400"])  # a batch of episodes, rows back to back
    >>> ds = c.torch_dataset()       # torch Dataset of per-episode dicts

Reads go straight to the backend's ``read_into``, one per run of adjacent stored rows, into the
returned arrays; parts stay open between reads (``max_open`` of them, least recently used closed
first). Uncompressed chunks are copied out of memory-mapped files (``backends.mapped``: a random
episode read is a numpy copy per array, ``bench/reader_random_access.py``), zstd ones read with
``preadv`` and decoded (``backends.zarr_direct``), gzip ones by HDF5. Callers always get arrays of
their own, never views into a map. Open parts, maps included, belong to the process that opened
them: a forked child (DataLoader worker, torchrun) opens its own on first use.

A part is read only after ``integrity``'s checks (its files as recorded, its part.json the one the
manifest vouches for, the index rows into it matching it); damage raises ``DamagedCache`` naming
the part and ``navcache verify --repair``, never reads as zeros or as another part's rows.
"""
from __future__ import annotations

import hashlib
import html
import io
import os
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import describe
from .errors import DamagedCache
from .integrity import REPAIR, check_part_meta, damaged, raise_on_files, read_part_json
from .layout import INDEX, MANIFEST, PART_JSON, PARTS, cache_dir as _cache_dir
from .manifest import MANIFEST_SHA_KEY, manifest_checksum, read_manifest
from .parts import READABLE_PART_FORMATS, open_part_data


class ArrayView:
    """A lazy, read-only view of one array across all parts, in index order of ok episodes.

    Supports ``len``, ``shape``, ``dtype``, integer and slice indexing, and integer-array indexing.
    """

    def __init__(self, reader: "CacheReader", name: str):
        self._r, self.name = reader, name
        spec = reader.manifest["spec"]["arrays"][name]
        self.dtype = np.dtype(spec["dtype"])
        self._row_shape = tuple(spec["shape"])
        ok = reader._ok_rows
        self._ok = ok
        self.shape = (int(ok["n_rows"]),) + self._row_shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(key)
            return self._rows(np.array([k]))[0]
        if isinstance(key, slice):
            return self._rows(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == np.bool_:  # a boolean mask, as in numpy (not rows 0 and 1)
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            key = np.flatnonzero(key)
        rows = key.astype(np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)  # negative entries count from the end
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        return self._rows(rows)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Global rows [n] -> their values [n, *row_shape], one ``read_into`` per run of adjacent rows
        of a part (``CacheReader._runs``)."""
        out = np.empty((len(rows),) + self._row_shape, self.dtype)
        if len(rows):
            self._r._fill(self._r._runs(rows), {self.name: out})
        return out

    def to_numpy(self) -> np.ndarray:
        return self[:]

    def __repr__(self) -> str:
        return f"ArrayView({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class CacheReader:
    """A complete cache opened for reading. Thread-safe for reads; open once per process."""

    def __init__(self, path: Path, check_index: bool = True, max_open: int | None = None):
        """``check_index=False``: a part's index rows are not compared with its part.json (the
        other checks stay). For a DataLoader worker whose parent loader checked every part: the
        check reads the index with polars, whose thread pool deadlocks in a forked child.

        ``max_open``: parts kept open between reads (least recently used closed first). An open
        part holds its array handles (a map per array for uncompressed zarr, a file descriptor per
        array for zstd zarr, one per part for HDF5, plus its map for uncompressed datasets), so a
        read does not look its array up again. Default: what a quarter of the
        process's file-descriptor limit allows (one per array a part), between 8 and 1024: a
        random read that must reopen its part costs several times the read itself."""
        self.path = Path(path)
        self._check_index = check_index
        self.manifest: dict = read_manifest(self.path)
        if MANIFEST_SHA_KEY in self.manifest and self.manifest[MANIFEST_SHA_KEY] != manifest_checksum(self.manifest):
            raise DamagedCache(f"{self.path}: {MANIFEST} differs from its own checksum (edited or corrupt); {REPAIR}")
        self._open: OrderedDict[str, list] = OrderedDict()  # part -> [PartData, readers using it, evicted]
        self._pid = os.getpid()  # the process the open parts belong to
        self._inherited: list = []  # a parent's open parts, seen from a forked child: never used nor closed here
        self._max_open = max_open if max_open is not None else _default_max_open(len(self.manifest["spec"]["arrays"]))
        self._lock = threading.Lock()
        self._checked: dict[str, dict] = {}  # part -> its part.json, once it passed ``integrity``'s checks

    # -- metadata ---------------------------------------------------------------------------
    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def stats(self) -> dict:
        """Split-level statistics the producing stage computed at finalisation (e.g. telemetry mean/std)."""
        return self.manifest.get("stats", {})

    @cached_property
    def index(self):
        """polars DataFrame: episode_id, part, start, length, status, reason."""
        import polars as pl

        raw = (self.path / INDEX).read_bytes()
        want = self.manifest.get("index_sha256")
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            raise DamagedCache(f"{self.path}: {INDEX} differs from the one the manifest recorded; {REPAIR}")
        return pl.read_parquet(io.BytesIO(raw))

    @cached_property
    def episodes(self) -> list[str]:
        """Ids of the ok (not quarantined) episodes, in storage order."""
        return self._ok["episode_id"].to_list()

    @property
    def quarantined(self):
        import polars as pl

        return self.index.filter(pl.col("status") == "quarantined").select("episode_id", "reason")

    @cached_property
    def _ok(self):
        import polars as pl

        return self.index.filter(pl.col("status") == "ok")

    @cached_property
    def _pos(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.episodes)}

    @cached_property
    def _ok_rows(self) -> dict:
        """Global row numbering: ok episodes in index order, each episode's rows in storage order.
        Per ok episode: global start, length, part (number into ``parts``) and start in its part."""
        lengths = self._ok["length"].to_numpy().astype(np.int64)
        ep_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
        parts, ep_part = np.unique(self._ok["part"].to_numpy().astype(str), return_inverse=True) if len(lengths) else (np.zeros(0, str), np.zeros(0, np.int64))
        return {
            "parts": [str(p) for p in parts],
            "ep_part": ep_part.astype(np.int64).reshape(-1),
            "ep_local": self._ok["start"].to_numpy().astype(np.int64),
            "n_rows": int(lengths.sum()),
            "ep_start": ep_start,
            "ep_len": lengths,
        }

    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of each ok episode's rows in the global arrays (row="frame" caches)."""
        return self._ok_rows["ep_start"], self._ok_rows["ep_len"]

    @property
    def array_names(self) -> list[str]:
        return list(self.spec["arrays"])

    # -- data ---------------------------------------------------------------------------------
    @cached_property
    def _index_rows(self) -> dict[str, list[tuple[str, int, int, str]]]:
        """part -> the index rows (episode id, start, length, status) that point into it."""
        out: dict[str, list] = {}
        t = self.index
        for eid, part, start, length, status in zip(*(t[c].to_list() for c in ("episode_id", "part", "start", "length", "status"))):
            out.setdefault(part, []).append((eid, start, length, status))
        return out

    def part_meta(self, part: str) -> dict:
        """``part``'s part.json, after ``integrity``'s checks (once per reader): its bytes are
        what the manifest recorded, every index row into it matches it, and its files are all
        there with their recorded sizes. DamagedCache naming the part otherwise."""
        if part not in self._checked:
            pdir = self.path / PARTS / part
            record = self.manifest.get("parts", {}).get(part)
            if record is None:
                raise DamagedCache(f"{self.path}: the index names part {part}, which the manifest does not list; {REPAIR}")
            raw, meta = read_part_json(pdir)
            if meta.get("format") not in READABLE_PART_FORMATS:
                raise damaged(pdir, f"{PART_JSON} has format {meta.get('format')!r}, not one of {', '.join(READABLE_PART_FORMATS)}")
            check_part_meta(pdir, raw, meta, record, self._index_rows.get(part, ()) if self._check_index else ())
            raise_on_files(pdir, meta)
            self._checked[part] = meta
        return self._checked[part]

    def check(self) -> None:
        """Run ``part_meta``'s checks on every part the manifest lists (a listing per part, no
        data read): DamagedCache naming the first damaged part. Trainers call it before the first
        batch, so damage stops a run at its start rather than mid-epoch."""
        for part in sorted(self.manifest.get("parts", {})):
            self.part_meta(part)

    def _acquire(self, part: str) -> list:
        """``part``'s LRU entry [PartData, reads using it, evicted], opened if needed, held by one
        more read until ``_release``. A part evicted while another thread reads it is closed when
        that read ends. (Two methods, not a context manager: a random batch takes one per part,
        and a generator-based ``with`` costs more than the read of a small array.)"""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            entry = self._open.get(part)
            if entry is None:
                entry = self._open[part] = [self.open_part(part), 0, False]
                while len(self._open) > self._max_open:
                    old = self._open.popitem(last=False)[1]
                    old[2] = True
                    if old[1] == 0:
                        old[0].close()
            else:
                self._open.move_to_end(part)
            entry[1] += 1
        return entry

    def _release(self, entry: list) -> None:
        with self._lock:
            entry[1] -= 1
            if entry[2] and entry[1] == 0:
                entry[0].close()

    def _forked(self) -> None:
        """In a forked child: start with no open part and a fresh lock (the parent's may have been
        held by one of its threads at the fork). The parent's parts stay referenced, untouched:
        closing an inherited HDF5 handle or map here is the parent's business."""
        self._inherited.append(self._open)
        self._open, self._lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()

    def _runs(self, rows: np.ndarray) -> list[tuple[int, int, int, Any]]:
        """Global rows [n] -> (part number, lo, hi, destination) per run of adjacent rows of one
        part; destination: the first of n output positions the run fills in order (an int), or
        the positions themselves (an int array) when they are not consecutive. Rows map through
        the episode holding each: parts may hold dead rows, and the episodes of a part need not
        be adjacent in index order."""
        ok = self._ok_rows
        ep = np.searchsorted(ok["ep_start"], rows, side="right") - 1  # zero-length episodes never win
        local = ok["ep_local"][ep] + (rows - ok["ep_start"][ep])
        which = ok["ep_part"][ep]
        order = np.lexsort((local, which))
        w, loc = which[order], local[order]
        brk = np.flatnonzero((w[1:] != w[:-1]) | (loc[1:] != loc[:-1] + 1)) + 1
        runs = []
        for a, b in zip(np.concatenate([[0], brk]).tolist(), np.concatenate([brk, [len(order)]]).tolist()):
            dst = order[a:b]
            in_order = dst[-1] - dst[0] == b - a - 1 and (b - a < 3 or bool((np.diff(dst) == 1).all()))
            runs.append((int(w[a]), int(loc[a]), int(loc[b - 1]) + 1, int(dst[0]) if in_order else dst))
        return runs

    def _fill(self, runs: Sequence[tuple[int, int, int, Any]], outs: dict[str, np.ndarray]) -> None:
        """Read ``runs`` (``_runs``) of every array in ``outs`` ({name: [n, *row_shape]}) into it,
        part by part: a run in output order is decoded straight into its rows, others are
        read into a scratch array and scattered."""
        parts = self._ok_rows["parts"]
        by_part: dict[int, list] = {}
        for r in runs:
            by_part.setdefault(r[0], []).append(r)
        for pi, group in by_part.items():  # each part opened (or found open) once per call
            spans = [(lo, hi, dst) for _, lo, hi, dst in group if isinstance(dst, int)]
            entry = self._acquire(parts[pi])
            try:
                data = entry[0]
                for name, out in outs.items():
                    if spans:
                        data.read_runs(name, spans, out)  # one call per array and part
                    for _, lo, hi, dst in group:
                        if not isinstance(dst, int):
                            tmp = np.empty((hi - lo,) + out.shape[1:], out.dtype)
                            data.read_into(name, lo, hi, tmp)
                            out[dst] = tmp
            finally:
                self._release(entry)

    def open_part(self, part: str):
        """One part's arrays (``PartData``), opened afresh and NOT cached: the caller closes it.
        Checked first (``part_meta``); reads raise DamagedCache where a chunk fails its checksum.

        For readers that manage their own bounded set of open parts (``cache_specs.streaming``)
        and for worker processes, which must not inherit handles across a fork.
        """
        meta = self.part_meta(part)
        return open_part_data(self.path / PARTS / part, meta, files_checked=True)

    def chunk_rows(self, name: str, part: str) -> int:
        """Rows per stored chunk of array ``name`` in ``part`` (the unit a read decodes)."""
        if name not in self.spec["arrays"]:
            raise KeyError(f"no array {name!r}; arrays: {self.array_names}")
        data = self.open_part(part)
        try:
            return data.chunk_rows(name)
        finally:
            data.close()

    def array(self, name: str) -> ArrayView:
        if name not in self.spec["arrays"]:
            raise KeyError(f"no array {name!r}; arrays: {self.array_names}")
        return ArrayView(self, name)

    def load(self, name: str) -> np.ndarray:
        return self.array(name).to_numpy()

    def __len__(self) -> int:
        return len(self.episodes)

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._pos

    def __getitem__(self, key: str | int) -> dict[str, np.ndarray]:
        """All arrays of one episode (id or position): {name: [length, *row_shape]}. For
        row="episode" caches the row axis is dropped."""
        out = self.read([key])
        return {k: v[0] for k, v in out.items()} if self.spec["row"] == "episode" else out

    def read(self, keys: Sequence[str | int], arrays: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The rows of episodes ``keys`` (ids or positions among the ok episodes), back to back
        in the order given: {name: [sum of their lengths, *row_shape]} (``arrays``: all by
        default). Frame caches with F rows an episode reshape to [len(keys), F, ...].

        One read per run of adjacent stored rows: a batch of episodes that sit next to each other
        on disk is one read per part and array; a random batch is one read per episode and array."""
        names = list(arrays) if arrays is not None else self.array_names
        rows = self._row_specs
        for n in names:
            if n not in rows:
                raise KeyError(f"no array {n!r}; arrays: {self.array_names}")
        part, local, length = self._episode_lists
        n_eps, pos = len(length), self._pos
        runs, total = [], 0
        for k in keys:  # plain Python: a one-episode read must not pay numpy's per-call overhead
            i = pos[k] if isinstance(k, str) else int(k)
            if not -n_eps <= i < n_eps:
                raise IndexError(f"episode position {k} out of range for {n_eps} episodes")
            i += n_eps if i < 0 else 0
            if length[i]:
                runs.append((part[i], local[i], local[i] + length[i], total))
                total += length[i]
        outs = {n: np.empty((total, *rows[n][0]), rows[n][1]) for n in names}
        self._fill(_merge_adjacent(runs), outs)
        return outs

    @cached_property
    def _row_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {n: (tuple(a["shape"]), np.dtype(a["dtype"])) for n, a in self.spec["arrays"].items()}

    @cached_property
    def _episode_lists(self) -> tuple[list[int], list[int], list[int]]:
        """Per ok episode: part number, start in its part, length (lists, for ``read``)."""
        ok = self._ok_rows
        return ok["ep_part"].tolist(), ok["ep_local"].tolist(), ok["ep_len"].tolist()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def torch_dataset(self, arrays: Sequence[str] | None = None, in_memory: bool = True):
        from .torch_dataset import CacheDataset

        return CacheDataset(self, arrays, in_memory=in_memory)

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry[2] = True  # a part still being read closes when its last read ends
                if entry[1] == 0:
                    entry[0].close()
            self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- display ------------------------------------------------------------------------------
    @cached_property
    def _disk(self) -> dict:
        return describe.disk_usage(self.path, list(self.manifest.get("parts", {})), self.array_names)

    @cached_property
    def class_balance(self) -> dict:
        """``{label: {class name: count}}`` over ok episodes (labelled caches; else empty)."""
        return describe.class_balance(self.spec["arrays"], self.load)

    def summary(self) -> dict:
        """JSON-ready description: spec, counts, arrays, bytes on disk (dead rows included),
        rows per part, provenance and, for labelled caches, class balance."""
        m = self.manifest
        return {
            "path": str(self.path),
            "stage": m.get("stage"),
            "spec": f"{self.spec['name']} v{self.spec['version']} (row={self.spec['row']})",
            "backend": m.get("backend"),
            "counts": m["counts"],
            "arrays": {n: f"{a['dtype']} {tuple(a['shape'])}" for n, a in self.spec["arrays"].items()},
            "disk": self._disk,
            "provenance": m.get("provenance", {}),
            "class_balance": self.class_balance,
        }

    def _lines(self, s: dict) -> list[str]:
        """The lines repr and HTML share below the header: parts, provenance, class balance."""
        lines = [describe.part_rows_line(s["disk"]["parts"])]
        lines += describe.provenance_lines(s["provenance"])
        lines += [describe.balance_line(k, v) for k, v in s["class_balance"].items()]
        return lines

    def __repr__(self) -> str:
        s = self.summary()
        c, d = s["counts"], s["disk"]
        lines = [
            f"<navcache {s['spec']} at {s['path']}>",
            f"  {c['ok']} episodes ok, {c['quarantined']} quarantined, {c['rows']} rows in {c['parts']} parts ({s['backend']})",
            f"  on disk: {describe.human_bytes(d['total_bytes'])} ({d['total_bytes']} bytes on disk, any dead rows included)",
        ]
        sizes = d["arrays"]
        lines += [f"  {n}: {t}, {describe.human_bytes(sizes.get(n, 0))} on disk" for n, t in s["arrays"].items()]
        lines += [f"  {n}: {describe.human_bytes(b)} on disk" for n, b in sizes.items() if n not in s["arrays"]]
        lines += [f"  {line}" for line in self._lines(s)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        s = self.summary()
        c, d = s["counts"], s["disk"]
        esc = html.escape
        sizes = d["arrays"]
        cells = [(n, t, sizes.get(n, 0)) for n, t in s["arrays"].items()] + [(n, "", b) for n, b in sizes.items() if n not in s["arrays"]]
        rows = "".join(
            f"<tr><td><code>{esc(n)}</code></td><td>{esc(t)}</td><td title='{b} bytes'>{describe.human_bytes(b)}</td></tr>" for n, t, b in cells
        )
        extra = "".join(f"<br>{esc(line)}" for line in self._lines(s))
        total = d["total_bytes"]
        return (
            f"<b>navcache</b> {esc(s['spec'])}<br><small>{esc(s['path'])}</small><br>"
            f"{c['ok']} ok / {c['quarantined']} quarantined episodes, {c['rows']} rows, {c['parts']} parts ({esc(str(s['backend']))})"
            f"<br>on disk: <span title='{total} bytes'>{describe.human_bytes(total)}</span> ({total} bytes on disk, any dead rows included)"
            f"{extra}"
            f"<table><tr><th>array</th><th>dtype, row shape</th><th>on disk</th></tr>{rows}</table>"
        )


def _default_max_open(n_arrays: int) -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    soft = 1024 if soft == resource.RLIM_INFINITY else soft
    return int(min(1024, max(8, soft // (4 * max(1, n_arrays)))))


def _merge_adjacent(runs: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Runs (part, lo, hi, first output row) with the next one's rows following on disk and in
    the output joined into one: a batch of consecutive episodes is one read."""
    out: list = []
    for r in runs:
        if out and out[-1][0] == r[0] and out[-1][2] == r[1] and out[-1][3] + out[-1][2] - out[-1][1] == r[3]:
            p, lo, _, d = out[-1]
            out[-1] = (p, lo, r[2], d)
        else:
            out.append(r)
    return out


def open_cache(path: str | Path, dataset: str | None = None, split: str | None = None, spec: str | None = None) -> CacheReader:
    """Open a complete cache: either its folder, or ``(cache_root, dataset, split, spec)``."""
    p = Path(path)
    if dataset or split or spec:
        if not (dataset and split and spec):
            raise ValueError("give all of dataset, split and spec, or a cache folder")
        p = _cache_dir(p, dataset, split, spec)
    return CacheReader(p)


def iter_caches(cache_root: Path) -> Iterable[Path]:
    """Every cache folder (complete or not) under ``cache_root``."""
    for d in sorted(Path(cache_root).glob("*/*/*")):
        if (d / PARTS).is_dir() or (d / "manifest.json").exists():
            yield d
