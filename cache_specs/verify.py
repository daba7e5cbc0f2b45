"""``verify``: recompute every checksum of a cache and name each kind of damage found.

Damage kinds (``Damage.kind``):
    no_manifest          the cache was never finalised (or was invalidated by an interrupted build)
    bad_manifest         manifest.json unreadable, or its content differs from its own checksum
    bad_index            index.parquet missing, unreadable, or a row naming a part the manifest does not
                         list or an episode entry its part.json does not hold (rows of a part the index
                         does not name are dead rows of superseded episodes: not damage)
    missing_part         a part listed in the manifest is gone (or its part.json is unreadable)
    part_mismatch        part.json differs from what the manifest recorded (fingerprint / checksum)
    missing_file         a data file listed in part.json is gone (e.g. a deleted zarr chunk)
    truncated_file       a data file is shorter than recorded
    size_mismatch        a data file is longer than recorded
    corrupt_file         a data file's bytes changed (e.g. a flipped byte)
    unexpected_file      a file in a part that part.json does not list
    unreadable_array     an array cannot be decoded
    array_mismatch       an array decodes, but to different values than were written
    orphan_temp          a writer's temporary folder (or index/manifest temp file) left by a killed process
    orphan_part          a part folder the manifest does not list
    stray                a file or folder that is no part of a cache (a junk folder beside ``parts/``,
                         a name inside ``parts/`` that is not a part's): not ours, so ``--repair``
                         reports it and leaves it for its owner to move or delete
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import (
    INDEX,
    MANIFEST,
    PART_JSON,
    PARTS,
    RETIRED_MANIFEST,
    TMP_PREFIX,
    TRASH_PREFIX,
    is_part_name,
    list_files,
    read_json,
    sha256_file,
)
from .manifest import MANIFEST_SHA_KEY, READABLE_MANIFEST_FORMATS, manifest_checksum
from .parts import array_sha256, open_part_data, read_part_meta


@dataclass(frozen=True)
class Damage:
    kind: str
    part: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.part + ': ' if self.part else ''}{self.detail}"


def verify_part(part_dir: Path, deep: bool = True) -> list[Damage]:
    """Check one part folder against its own part.json."""
    pid = part_dir.name
    meta = read_part_meta(part_dir)
    if meta is None:
        return [Damage("missing_part", pid, f"{PART_JSON} missing or unreadable")]
    out: list[Damage] = []
    listed = meta["files"]
    for rel, want in listed.items():
        f = part_dir / rel
        if not f.exists():
            out.append(Damage("missing_file", pid, rel))
            continue
        size = f.stat().st_size
        if size < want["size"]:
            out.append(Damage("truncated_file", pid, f"{rel}: {size} < {want['size']} bytes"))
        elif size > want["size"]:
            out.append(Damage("size_mismatch", pid, f"{rel}: {size} > {want['size']} bytes"))
        elif sha256_file(f) != want["sha256"]:
            out.append(Damage("corrupt_file", pid, f"{rel}: checksum differs"))
    for rel in list_files(part_dir):
        if rel != PART_JSON and rel not in listed:
            out.append(Damage("unexpected_file", pid, rel))
    if deep:
        try:
            data = open_part_data(part_dir, meta, check=False)  # the raw backend: its own errors are the report
        except Exception as e:  # noqa: BLE001 - any decoder error is damage to report, not to raise
            return out + [Damage("unreadable_array", pid, f"cannot open data: {type(e).__name__}: {e}")]
        try:
            for name, want in meta["arrays"].items():
                try:
                    a = np.asarray(data[name][...])
                except Exception as e:  # noqa: BLE001
                    out.append(Damage("unreadable_array", pid, f"{name}: {type(e).__name__}: {e}"))
                    continue
                if array_sha256(a) != want["sha256"]:
                    out.append(Damage("array_mismatch", pid, f"{name}: decoded values differ from what was written"))
        finally:
            data.close()
    return out


def verify_cache(cache_dir: Path, deep: bool = True) -> list[Damage]:
    """All damage in one cache folder; an empty list means every byte checks out."""
    cache_dir = Path(cache_dir)
    out: list[Damage] = []
    parts_dir = cache_dir / PARTS
    on_disk = sorted(p.name for p in parts_dir.iterdir()) if parts_dir.is_dir() else []
    for name in on_disk:
        if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            out.append(Damage("orphan_temp", None, f"{PARTS}/{name}"))
    for x in sorted(cache_dir.glob(TMP_PREFIX + "*")):  # an index/manifest write cut short
        out.append(Damage("orphan_temp", None, x.name))
    out += strays(cache_dir)
    on_disk = [n for n in on_disk if is_part_name(n) and (parts_dir / n).is_dir()]
    if not (cache_dir / MANIFEST).exists():
        out.append(Damage("no_manifest", None, f"{cache_dir} has no {MANIFEST}: build not finished"))
        for name in on_disk:
            if not name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                out += verify_part(parts_dir / name, deep)
        return out
    try:
        manifest = read_json(cache_dir / MANIFEST)
        assert manifest.get("format") in READABLE_MANIFEST_FORMATS
        parts = manifest["parts"]
    except Exception as e:  # noqa: BLE001
        return out + [Damage("bad_manifest", None, f"{type(e).__name__}: {e}")]
    if MANIFEST_SHA_KEY in manifest and manifest[MANIFEST_SHA_KEY] != manifest_checksum(manifest):
        out.append(Damage("bad_manifest", None, f"{MANIFEST} content differs from its {MANIFEST_SHA_KEY} (edited or corrupt)"))
    for name in on_disk:
        if not name.startswith((TMP_PREFIX, TRASH_PREFIX)) and name not in parts:
            out.append(Damage("orphan_part", name, "not listed in the manifest"))
    metas = {}
    for pid, rec in sorted(parts.items()):
        pdir = parts_dir / pid
        meta = read_part_meta(pdir)
        if meta is None:
            out.append(Damage("missing_part", pid, "listed in the manifest but missing or unreadable"))
            continue
        metas[pid] = meta
        if meta["fingerprint"] != rec["fingerprint"] or sha256_file(pdir / PART_JSON) != rec["part_json_sha256"]:
            out.append(Damage("part_mismatch", pid, "part.json differs from the manifest's record"))
        out += verify_part(pdir, deep)
    index = cache_dir / INDEX
    if not index.exists():
        out.append(Damage("bad_index", None, f"{INDEX} missing"))
    elif sha256_file(index) != manifest.get("index_sha256"):
        out.append(Damage("bad_index", None, f"{INDEX} checksum differs from the manifest's"))
    else:
        out += _index_rows(index, parts, metas)
    return out


#: what a cache folder may hold besides ``.tmp-*`` files of an interrupted index/manifest write
CACHE_ENTRIES = {MANIFEST: False, RETIRED_MANIFEST: False, INDEX: False, PARTS: True}  # name -> is a folder


def strays(cache_dir: Path) -> list[Damage]:
    """Files and folders of ``cache_dir`` and its ``parts/`` that no writer of ours makes: reported,
    never deleted (they may be a user's)."""
    out = []
    for x in sorted(Path(cache_dir).iterdir()):
        folder = x.is_dir() and not x.is_symlink()
        if x.name.startswith(TMP_PREFIX) or CACHE_ENTRIES.get(x.name) == folder:
            continue
        out.append(Damage("stray", None, f"{x.name}{'/' if folder else ''}: not part of a navcache cache; left in place, move or delete it by hand"))
    pdir = Path(cache_dir) / PARTS
    for x in sorted(pdir.iterdir()) if pdir.is_dir() and not pdir.is_symlink() else []:
        folder = x.is_dir() and not x.is_symlink()
        if x.name.startswith((TMP_PREFIX, TRASH_PREFIX)) or (folder and is_part_name(x.name)):
            continue
        out.append(Damage("stray", None, f"{PARTS}/{x.name}{'/' if folder else ''}: not a part; left in place, move or delete it by hand"))
    return out


def _index_rows(index: Path, listed: dict, metas: dict) -> list[Damage]:
    """Every index row names a listed part and an entry of its part.json with the same rows.
    (A part missing from disk is reported once, as missing_part, not per row.)"""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(index).to_pydict()
    except Exception as e:  # noqa: BLE001 - an unreadable index is damage to report
        return [Damage("bad_index", None, f"unreadable: {type(e).__name__}: {e}")]
    entries = {pid: {e["episode_id"]: e for e in m["episodes"]} for pid, m in metas.items()}
    bad = []
    for eid, pid, start, length, status in zip(t["episode_id"], t["part"], t["start"], t["length"], t["status"]):
        if pid not in listed:
            bad.append(f"{eid!r} in part {pid}, which the manifest does not list")
        elif pid in entries:
            e = entries[pid].get(eid)
            if e is None or (e["start"], e["length"], e["status"]) != (start, length, status):
                bad.append(f"{eid!r}: row differs from part {pid}'s part.json")
    if len(set(t["episode_id"])) != len(t["episode_id"]):
        bad.append("an episode id appears more than once")
    return [Damage("bad_index", None, f"{len(bad)} bad rows, e.g. {bad[0]}")] if bad else []


def damaged_parts(damage: list[Damage]) -> set[str]:
    return {d.part for d in damage if d.part and d.kind != "orphan_part"}


def needs_rebuild(damage: list[Damage]) -> bool:
    """Whether a repair has anything to rebuild: strays are left to their owner, nothing else."""
    return any(d.kind != "stray" for d in damage)
