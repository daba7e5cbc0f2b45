"""``poses``: planar poses at an episode's T sampled frames, and the motion between them (one row per episode).

World frame: x, y on the ground plane, yaw in radians counter-clockwise from +x.
Step t (0 <= t < T-1) goes from sampled frame t to t+1:
    deltas[t] = (dx, dy, dyaw): frame t+1's position in frame t's egocentric frame (x forward,
                y left), dyaw = yaw[t+1] - yaw[t] wrapped to (-pi, pi]
    dist_bins[t] = bin of |(dx, dy)| by ``dist_edges`` (metres); yaw_bins[t] = bin of dyaw by
                ``yaw_edges`` (degrees): ``np.digitize(value, edges)``, so bin k means
                edges[k-1] <= value < edges[k]. Edges are recorded in the manifest (settings).
    step_valid[t] = False when frame t or t+1 is front padding (then deltas are 0, bins are 0).
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="poses",
    version=2,
    row="episode",
    arrays=(
        ArraySpec("poses", "float32", ("T", 3), "(x, y, yaw) at each sampled frame; zeros on padding rows"),
        ArraySpec("frame_index", "int64", ("T",), "source frame index of each row, -1 for front padding"),
        ArraySpec("padded", "bool", ("T",), "True on front-padding rows (episodes shorter than T)"),
        ArraySpec("deltas", "float32", ("S", 3), "(dx forward, dy left, dyaw) of step t in frame t's egocentric frame"),
        ArraySpec("dist_bins", "int64", ("S",), "bin of the travelled distance of step t"),
        ArraySpec("yaw_bins", "int64", ("S",), "bin of the heading change of step t"),
        ArraySpec("step_valid", "bool", ("S",), "False for steps touching front padding: mask them out of losses"),
    ),
    doc=__doc__,
)
