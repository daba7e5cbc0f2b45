"""``velocity``: a navigation sample's planar velocities, the action OpenVLA trains on, its goal
point and its instruction (one row per sample; VAMOS rows are samples).

Velocities are per-step planar displacements of the sample's path in the robot frame at the
sample (x forward, y left), divided by ``dt`` (seconds per path step; VAMOS carries no timestamps,
so the default ``dt = 1`` gives metres per step):

    v[t]       = (p[t+1] - p[t])[:2] / dt   for the first H steps of the path; zeros past its end
    v_valid[t] = the path has step t (a pad mask)
    action     = mean of the first ``action_steps`` valid steps (1: the first step, what OpenVLA
                 predicts from the first image)
    goal       = the goal point parsed from ``lang_goal`` (``<point x=.. y=..>``), as written (pixels)
    instruction = UTF-8 bytes of the instruction, zero-padded to L; ``instruction_bytes`` its full
                 length (larger than L when it was cut at L, on a character boundary)
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="velocity",
    version=1,
    row="episode",
    arrays=(
        ArraySpec("v", "float32", ("H", 2), "(v_x forward, v_y left) per path step in the sample's robot frame; zeros where not v_valid"),
        ArraySpec("v_valid", "bool", ("H",), "True where the path has this step (pad mask)"),
        ArraySpec("action", "float32", (2,), "mean of the first action_steps valid steps of v (OpenVLA's action)"),
        ArraySpec("goal", "float32", (2,), "goal point (x, y) parsed from lang_goal, pixels as written"),
        ArraySpec("instruction", "uint8", ("L",), "instruction text, UTF-8, zero-padded"),
        ArraySpec("instruction_bytes", "int32", (), "full UTF-8 length of the instruction (> L: cut)"),
    ),
    doc=__doc__,
)
