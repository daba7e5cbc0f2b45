"""join_caches on real zarr and HDF5 caches: kept ids and order, slices, drop report, no array reads."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from navcache.cache_specs import join_caches, open_cache
from navcache.cache_specs.layout import PARTS
from tests.cache_specs.stream_helpers import FEATS, eid, feats_of, kept_standard, meta_of, num, standard_pair, write_cache


@pytest.fixture(params=["zarr", "hdf5"])
def pair(request, tmp_path):
    return standard_pair(tmp_path, request.param)


def test_keeps_episodes_ok_in_every_cache_in_first_cache_order(pair):
    feats, meta = pair
    j = join_caches({"feats": open_cache(feats), "meta": open_cache(meta)})
    assert list(j.episodes) == kept_standard()
    j2 = join_caches({"meta": open_cache(meta), "feats": open_cache(feats)})
    assert sorted(j2.episodes) == sorted(kept_standard())
    assert list(j2.episodes) == [e for e in open_cache(meta).episodes if e in set(kept_standard())]


def test_slices_locate_each_episodes_rows(pair):
    feats, meta = pair
    readers = {"feats": open_cache(feats), "meta": open_cache(meta)}
    j = join_caches(readers)
    for name, r in readers.items():
        sl = j.slices[name]
        assert sl.row == r.spec["row"] and len(sl) == len(j)
        for i, e in enumerate(j.episodes):
            data = r.open_part(sl.parts[sl.part[i]])
            try:
                if name == "feats":
                    got = np.asarray(data["idx"][sl.start[i] : sl.start[i] + sl.length[i]])
                    np.testing.assert_array_equal(got, feats_of(num(e), 4)["idx"])
                else:
                    assert sl.length[i] == 1
                    assert int(np.asarray(data["y"][sl.start[i]])) == meta_of(num(e))["y"]
            finally:
                data.close()


def test_report_says_what_was_dropped_and_why(pair):
    feats, meta = pair
    j = join_caches({"feats": open_cache(feats), "meta": open_cache(meta)})
    r = j.report
    assert r.quarantined == {"feats": 2, "meta": 1}
    assert r.dropped["feats"] == {eid(5): ("absent from 'meta'",), eid(8): ("quarantined in 'meta': test quarantine 8",)}
    assert r.dropped["meta"] == {eid(3): ("quarantined in 'feats': test quarantine 3",), eid(17): ("quarantined in 'feats': test quarantine 17",), eid(110): ("absent from 'feats'",)}
    assert r.counts() == {"feats": {"absent from 'meta'": 1, "quarantined in 'meta'": 1}, "meta": {"absent from 'feats'": 1, "quarantined in 'feats'": 2}}
    assert "dropped 2 ok episodes" in str(r)


def test_join_reads_indexes_only(pair, tmp_path):
    feats, meta = pair
    for cache in pair:
        for part in (cache / PARTS).iterdir():
            for data in list(part.glob("data.*")):
                shutil.rmtree(data) if data.is_dir() else data.unlink()
    j = join_caches({"feats": open_cache(feats), "meta": open_cache(meta)})
    assert list(j.episodes) == kept_standard()


def test_three_caches_and_a_single_one(tmp_path):
    a = write_cache(tmp_path / "a", FEATS, [[0, 1, 2], [3, ("q", 4)]], "zarr")
    b = write_cache(tmp_path / "b", FEATS, [[4, 3, 2, 1]], "hdf5")
    c = write_cache(tmp_path / "c", FEATS, [[1], [2, 3, 9]], "zarr")
    j = join_caches({"a": open_cache(a), "b": open_cache(b), "c": open_cache(c)})
    assert list(j.episodes) == [eid(1), eid(2), eid(3)]
    assert j.report.dropped["a"] == {eid(0): ("absent from 'b'", "absent from 'c'")}
    assert j.report.dropped["b"] == {eid(4): ("quarantined in 'a': test quarantine 4", "absent from 'c'")}
    assert list(join_caches({"a": open_cache(a)}).episodes) == [eid(0), eid(1), eid(2), eid(3)]


def test_duplicate_ok_id_is_an_error(tmp_path):
    a = write_cache(tmp_path / "a", FEATS, [[0, 1], [1]], "zarr")
    with pytest.raises(ValueError, match="listed twice"):
        join_caches({"a": open_cache(a)})
    with pytest.raises(ValueError, match="at least one"):
        join_caches({})
