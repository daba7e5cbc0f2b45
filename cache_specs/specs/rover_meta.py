"""``rover_meta``: a rover clip's labels, telemetry and sample weight (one row per clip).

Label ids index the vocabularies of ``cache_specs/labels.py``. Telemetry is stored raw; the
manifest's ``stats.telemetry`` holds this split's per-field mean/std (population std, floored
at 1e-6), and trainers normalise every split with the TRAIN split's stats
(``open_cache(...).stats``), as the SIM v0 recipe asks.
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="rover_meta",
    version=1,
    row="episode",
    arrays=(
        ArraySpec("telemetry", "float32", (8,), "[ax, ay, az, gx, gy, gz, v, w], raw"),
        ArraySpec("risk", "int64", (), "index into labels.RISK"),
        ArraySpec("reason", "int64", (), "index into labels.REASON"),
        ArraySpec("action", "int64", (), "index into labels.ACTION"),
        ArraySpec("weight", "float32", (), "per-sample loss weight (1 when the table has none)"),
    ),
    doc=__doc__,
)
