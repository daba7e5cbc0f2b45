"""``leases.claim_free``: parts claimed one at a time as the pipeline pulls them, parts a live run
holds skipped (never waited for), committed parts left alone."""
from __future__ import annotations

from navcache.pipeline.leases import Lease, claim_free, lease_path


def test_claims_lazily_skips_held_and_done(tmp_path):
    items, done = ["a", "b", "c", "d"], {"d"}
    other = Lease(lease_path(tmp_path, "b"), 60.0)  # a live holder (this very process, alive)
    assert other.acquire()
    got = claim_free(items, tmp_path, str, lambda it: it in done, 60.0)
    it, lease = next(got)
    assert it == "a" and lease_path(tmp_path, "a").exists()
    assert not lease_path(tmp_path, "c").exists(), "the next part is claimed only when pulled"
    lease.release()
    rest = list(got)
    assert [i for i, _ in rest] == ["c"]  # b is held by another owner, d is committed
    assert not lease_path(tmp_path, "d").exists()
    for _, lz in rest:
        lz.release()
    other.release()
    assert not list(tmp_path.glob(".tmp-lease-*"))
