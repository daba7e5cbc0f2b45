"""``keyframes``: the frames chosen from an episode's sampled frames (one row per keyframe, sorted by frame).

Space-aware strategy (Spatial-MLLM): greedy maximum coverage of the voxels seen by each frame's
confident world points (``pipeline/keyframes.py``); ``uniform`` is the evenly spaced baseline,
scored on the same voxels so both strategies are comparable.

    frame_index   source frame index (what ``frame-features`` decodes)
    position      row of the frame within the episode's ``geometry`` rows (0..N_m-1)
    pick_order    0 for the first greedy pick, ...
    gain          voxels this pick added when it was taken
    coverage      fraction of the episode's voxels covered after this pick (read in pick order
                  for the coverage curve)
    n_voxels, voxel_size, threshold
                  the episode's totals, repeated on each of its rows
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="keyframes",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("frame_index", "int64", (), "source frame index"),
        ArraySpec("position", "int64", (), "row within the episode's geometry rows"),
        ArraySpec("pick_order", "int64", (), "order of the greedy pick"),
        ArraySpec("gain", "int64", (), "new voxels added by this pick"),
        ArraySpec("coverage", "float32", (), "fraction of voxels covered after this pick"),
        ArraySpec("n_voxels", "int64", (), "distinct voxels in the episode"),
        ArraySpec("voxel_size", "float32", (), "voxel edge (world units)"),
        ArraySpec("threshold", "float32", (), "confidence threshold (50th percentile)"),
    ),
    doc=__doc__,
)
