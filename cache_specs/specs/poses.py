"""``poses``: ground-truth planar poses at an episode's T sampled frames (one row per episode).

World frame: x, y on the ground plane, yaw in radians counter-clockwise from +x.
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="poses",
    version=1,
    row="episode",
    arrays=(
        ArraySpec("poses", "float32", ("T", 3), "(x, y, yaw) at each sampled frame; zeros on padding rows"),
        ArraySpec("frame_index", "int64", ("T",), "source frame index of each row, -1 for front padding"),
        ArraySpec("padded", "bool", ("T",), "True on front-padding rows (episodes shorter than T)"),
    ),
    doc=__doc__,
)
