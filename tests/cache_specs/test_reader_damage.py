"""The cache-level checks a reader makes before it reads a part: manifest, index, part records.

The per-part damages (shards deleted, emptied, cut, flipped; parts swapped; index and part.json
disagreeing) run against every backend in ``cache_specs.testing.damage`` (part of the backend
conformance suite); here: what damages the cache files themselves, on one backend.
"""
from __future__ import annotations

import json
import shutil

import pytest

from navcache.cache_specs import open_cache
from navcache.cache_specs.errors import DamagedCache
from navcache.cache_specs.layout import INDEX, MANIFEST, PART_JSON, PARTS, part_id
from navcache.cache_specs.testing.damage import TARGET, build, episode_id, rewrite_manifest


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build(tmp_path_factory.mktemp("reader_damage") / "cache", "zarr")


@pytest.fixture
def cache(template, tmp_path):
    shutil.copytree(template, tmp_path / "cache")
    return tmp_path / "cache"


def test_edited_manifest_is_refused_at_open(cache):
    m = json.loads((cache / MANIFEST).read_text())
    m["counts"]["rows"] += 1
    (cache / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DamagedCache, match=r"manifest.json differs from its own checksum.*navcache verify --repair"):
        open_cache(cache)


def test_replaced_index_is_refused(cache):
    """An index rewritten behind the manifest's back (here: same rows, another encoding, so it
    reads fine today) is not the one the manifest vouches for."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(cache / INDEX), cache / INDEX, compression="none")
    with pytest.raises(DamagedCache, match=r"index.parquet differs from the one the manifest recorded"):
        open_cache(cache).load("feat")


def test_index_naming_a_part_the_manifest_does_not_list(cache):
    rewrite_manifest(cache, lambda m: m["parts"].pop(TARGET))
    with pytest.raises(DamagedCache, match=rf"the index names part {TARGET}, which the manifest does not list"):
        open_cache(cache)[episode_id(1, 0)]


def test_deleted_part_folder(cache):
    shutil.rmtree(cache / PARTS / TARGET)
    c = open_cache(cache)
    with pytest.raises(DamagedCache, match=rf"part {TARGET} is damaged: the part folder or its {PART_JSON} is missing"):
        c.load("idx")


def test_file_added_to_a_part(cache):
    """A shard where none was recorded would be read as data: refused like a missing one."""
    (cache / PARTS / TARGET / "data.zarr" / "feat" / "c" / "9").mkdir(parents=True)
    (cache / PARTS / TARGET / "data.zarr" / "feat" / "c" / "9" / "0").write_bytes(b"\0" * 16)
    with pytest.raises(DamagedCache, match=r"data.zarr/feat/c/9/0 was not written with the part"):
        open_cache(cache).load("feat")


def test_check_names_the_first_damaged_part_without_reading_data(cache):
    (cache / PARTS / part_id(2) / PART_JSON).write_text("{")
    c = open_cache(cache)
    with pytest.raises(DamagedCache, match=rf"part {part_id(2)} is damaged: {PART_JSON} is not valid JSON"):
        c.check()
    c.part_meta(part_id(0))  # the intact parts still check out
