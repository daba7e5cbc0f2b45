"""The rover safety label rule: (risk, reason, action) from what the last frame shows plus telemetry.

Everything the rule reads is visible in the clip: the nearest footprint in the central cone of the
last frame (its kind and z-depth), how open the two sides of the image are, how dark or foggy
the clip is, and the recorded forward speed ``v``. docs/demo_world.md restates the rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navcache.cache_specs.labels import RISK

from .render import KIND_BOX, KIND_PERSON, KIND_WALL, Camera, Columns

CONE_DEG = 15.0  # half-angle of the "ahead" cone
SIDE_DEG = (25.0, 45.0)  # side sectors, inside the 90 degree field of view
REVERSE_M = 0.45  # anything this close ahead: back off whatever the speed
TTC_S = (2.0, 4.0, 7.0)  # time-to-contact bounds: < 2 s high, < 4 s medium, < 7 s low, else none
TIGHT_M = 1.1  # both side sectors closer than this: a tight space
TIGHT_SPEED = (0.45, 0.8)  # in a tight space, v >= 0.45 m/s is medium risk, v >= 0.8 m/s high
DARK_LIGHT = 0.3  # light level below which a clip is "very dark"
FOG_M = 1.5  # fog e-folding distance below which a clip is "fogged"
BLIND_SPEED = 0.6  # blind and at least this fast: medium risk, else low


@dataclass(frozen=True)
class Observation:
    """What the last frame shows. ahead_kind: KIND_WALL / KIND_BOX / KIND_PERSON; distances in metres."""

    ahead_kind: int
    ahead_m: float
    left_m: float
    right_m: float
    light: float
    fog_m: float


def observe(cols: Columns, cam: Camera, light: float, fog_m: float) -> Observation:
    """Summarise the last frame's per-column ground hits (``render.cast_columns``)."""
    ang = np.degrees(cam.column_angles())  # positive = left of the optical axis
    cone = np.abs(ang) <= CONE_DEG
    i = np.nonzero(cone)[0][np.argmin(cols.depth[cone])]
    # side openness is the ray length (not z-depth), so a wall parallel to the heading reads as close
    ray = cols.depth / np.cos(np.radians(ang))
    left = ray[(ang >= SIDE_DEG[0]) & (ang <= SIDE_DEG[1])]
    right = ray[(-ang >= SIDE_DEG[0]) & (-ang <= SIDE_DEG[1])]
    return Observation(int(cols.kind[i]), float(cols.depth[i]), float(np.median(left)), float(np.median(right)),
                       float(light), float(fog_m))


def _bucket(ttc: float) -> int:
    """Risk id from a time to contact in seconds."""
    return 3 - int(np.searchsorted(TTC_S, ttc, side="right"))


def rover_labels(obs: Observation, v: float) -> tuple[str, str, str]:
    """The rule, first match wins (v is the recorded forward speed in m/s):

    1. Blind (light < DARK_LIGHT or fog_m < FOG_M): reason unknown; risk medium and action slow if
       v >= BLIND_SPEED, else risk low and action continue.
    2. Something closer than REVERSE_M ahead: risk high, action reverse; reason human for a person,
       obstacle for a box, for a wall tight_space if tight else obstacle.
    3. Time to contact ttc = ahead_m / max(v, 0.05) gives risk_ahead: < 2 s high, < 4 s medium,
       < 7 s low, else none.
    4. Tight (both side sectors < TIGHT_M) and the thing ahead is a wall or risk_ahead is none:
       reason tight_space, risk = max(risk_ahead, speed risk: v >= 0.8 high, >= 0.45 medium, else
       low); action high -> stop, medium -> slow, low -> continue.
    5. risk_ahead none: risk none, reason unknown, action continue.
    6. Otherwise reason human (person ahead) or obstacle (box or wall); action low -> continue,
       medium -> slow, high -> stop for a human, else turn_left / turn_right toward the side with
       the larger free distance (left on a tie).
    """
    if obs.light < DARK_LIGHT or obs.fog_m < FOG_M:
        return ("medium", "unknown", "slow") if v >= BLIND_SPEED else ("low", "unknown", "continue")
    tight = obs.left_m < TIGHT_M and obs.right_m < TIGHT_M
    if obs.ahead_m < REVERSE_M:
        reason = {KIND_PERSON: "human", KIND_BOX: "obstacle"}.get(obs.ahead_kind, "tight_space" if tight else "obstacle")
        return "high", reason, "reverse"
    risk = _bucket(obs.ahead_m / max(v, 0.05))
    if tight and (obs.ahead_kind == KIND_WALL or risk == 0):
        risk = max(risk, 1 + int(v >= TIGHT_SPEED[0]) + int(v >= TIGHT_SPEED[1]))
        return RISK[risk], "tight_space", ("continue", "slow", "stop")[risk - 1]
    if risk == 0:
        return "none", "unknown", "continue"
    reason = "human" if obs.ahead_kind == KIND_PERSON else "obstacle"
    if risk < 3:
        return RISK[risk], reason, ("continue", "slow")[risk - 1]
    if reason == "human":
        return "high", reason, "stop"
    return "high", reason, "turn_left" if obs.left_m >= obs.right_m else "turn_right"

