"""``poses``: planar poses at an episode's T sampled frames, and the motion between them (one row per episode).

World frame: x, y on the ground plane, yaw in radians counter-clockwise from +x.
Step t (0 <= t < T-1) goes from sampled frame t to t+1:
    deltas[t] = (dx, dy, dyaw): frame t+1's position in frame t's egocentric frame (x forward,
                y left), dyaw = yaw[t+1] - yaw[t] wrapped to (-pi, pi]
    dist_bins[t] = bin of |(dx, dy)| by ``dist_edges`` (metres); yaw_bins[t] = bin of dyaw by
                ``yaw_edges`` (degrees): ``np.digitize(value, edges)``, so bin k means
                edges[k-1] <= value < edges[k]. Edges are recorded in the manifest (settings).
    step_valid[t] = False when frame t or t+1 is front padding, including the step from the last
                padding row to the first real frame: then deltas are 0 and both bins are
                ``IGNORE_INDEX`` (-100), the ``ignore_index`` of ``torch.nn.CrossEntropyLoss`` and
                LLaVA/NaVILA's ``IGNORE_INDEX``, so a cross-entropy on the raw bins skips them.
Bins are signed (int64) for that reason.

v3: padded steps' bins are -100 (v2 wrote 0, which is "stop" and "right > 45 degrees").
"""
from ..spec import ArraySpec, CacheSpec

#: bin value of steps touching front padding: PyTorch cross-entropy's default ignore_index
IGNORE_INDEX = -100

SPEC = CacheSpec(
    name="poses",
    version=3,
    row="episode",
    arrays=(
        ArraySpec("poses", "float32", ("T", 3), "(x, y, yaw) at each sampled frame; zeros on padding rows"),
        ArraySpec("frame_index", "int64", ("T",), "source frame index of each row, -1 for front padding"),
        ArraySpec("padded", "bool", ("T",), "True on front-padding rows (episodes shorter than T)"),
        ArraySpec("deltas", "float32", ("S", 3), "(dx forward, dy left, dyaw) of step t in frame t's egocentric frame"),
        ArraySpec("dist_bins", "int64", ("S",), "bin of the travelled distance of step t; -100 (IGNORE_INDEX) where step_valid is False"),
        ArraySpec("yaw_bins", "int64", ("S",), "bin of the heading change of step t; -100 (IGNORE_INDEX) where step_valid is False"),
        ArraySpec("step_valid", "bool", ("S",), "False for steps touching front padding: mask them out of losses"),
    ),
    doc=__doc__,
)
