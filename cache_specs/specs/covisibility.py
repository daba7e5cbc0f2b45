"""``covisibility``: where each keyframe's content appears in every other keyframe's view (one row per ordered pair).

For an episode's keyframes (the ``keyframes`` cache) and their ``geometry`` rows, every ordered pair
(A, B) with A != B, A-major (row ``a*(K-1) + ...``): B's confident world points projected into
A's camera and binned into a ``G x G`` grid over A's image (cell ``gy*G + gx``, row-major from the
top left) followed by a ring of out-of-view cells ``left, right, above, below, behind``. Points
in A's view that fail the depth test against A's depth (occluded) are left out. The rule, the
tolerance and the ring directions are documented in ``navcache.pipeline.covisibility``.

    target [C]         C = G*G + 5 float32: fraction of B's kept points per cell, sums to 1 (all
                       zero when every point of B is occluded in A: kept_fraction 0)
    visible_fraction   of B's confident points: in A's view and passing the depth test
    occluded_fraction  of B's confident points: in A's view, failing the depth test (or no valid depth of A there)
    kept_fraction      1 - occluded_fraction (the mass ``target`` is normalised over)
    n_points           B's confident points
    frame_a, frame_b   source frame indices of A and B
    position_a/_b      rows of A and B within the episode's geometry rows
    keyframe_a/_b      rows of A and B within the episode's keyframes rows
"""
from ..spec import ArraySpec, CacheSpec

RING = ("left", "right", "above", "below", "behind")

SPEC = CacheSpec(
    name="covisibility",
    version=2,  # v2: row kind "pair" (v1 declared its pair rows as "frame")
    row="pair",
    arrays=(
        ArraySpec("target", "float32", ("C",), "fraction of B's kept points per grid cell, then left/right/above/below/behind"),
        ArraySpec("visible_fraction", "float32", (), "fraction of B's points visible in A's view"),
        ArraySpec("occluded_fraction", "float32", (), "fraction of B's points in A's view but occluded"),
        ArraySpec("kept_fraction", "float32", (), "fraction of B's points the target is over"),
        ArraySpec("n_points", "int64", (), "B's confident points"),
        ArraySpec("frame_a", "int64", (), "source frame index of A"),
        ArraySpec("frame_b", "int64", (), "source frame index of B"),
        ArraySpec("position_a", "int64", (), "A's row within the episode's geometry rows"),
        ArraySpec("position_b", "int64", (), "B's row within the episode's geometry rows"),
        ArraySpec("keyframe_a", "int64", (), "A's row within the episode's keyframes rows"),
        ArraySpec("keyframe_b", "int64", (), "B's row within the episode's keyframes rows"),
    ),
    doc=__doc__,
)
