"""``navcache inspect <geometry|keyframes cache> --episode E --plot DIR``: look at one episode.

Writes ``DIR/<episode>.sheet.png`` (every sampled frame, the chosen keyframes highlighted, the
coverage curve against uniform sampling) and ``DIR/<episode>.topdown.png`` (camera path, headings,
kept world points, keyframes). Frames are decoded from the dataset through the project's source,
because the caches hold geometry, not pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from navcache.cache_specs.reader import open_cache

from .config import ProjectConfig
from .errors import NavcacheError


def plot_episode(project: ProjectConfig, cache_path: Path, episode: str, out_dir: Path) -> list[Path]:
    """Render the two PNGs for ``episode``; ``cache_path`` is its geometry or keyframes cache folder."""
    from . import keyframes as kf
    from .camera import camera_centres, optical_axes
    from .plots import contact_sheet, topdown
    from .sources import make_source

    cache_path = Path(cache_path).resolve()
    split_dir = cache_path.parent
    dataset, split = split_dir.parent.name, split_dir.name
    geo_dir, key_dir = split_dir / "geometry", split_dir / "keyframes"
    if not geo_dir.exists():
        raise NavcacheError(f"no geometry cache beside {cache_path} (looked for {geo_dir}); --plot needs one")
    with open_cache(geo_dir) as geo:
        if episode not in geo:
            raise NavcacheError(f"episode {episode!r} is not in {geo_dir} (quarantined or unknown)")
        g = geo[episode]
    keys = None
    if key_dir.exists():
        with open_cache(key_dir) as kc:
            keys = kc[episode] if episode in kc else None

    ds = project.dataset(dataset)
    source = make_source(ds.source, ds.root, **ds.options)
    ep = next((e for e in source.episodes(split) if e.episode_id == episode), None)
    if ep is None:
        raise NavcacheError(f"episode {episode!r} is no longer listed by dataset {dataset!r} split {split!r}")
    frames = source.read_frames(ep, g["frame_index"].tolist())

    points, conf = g["world_points"], g["world_points_conf"]
    base = kf.uniform(points, conf, len(keys["position"]) if keys is not None else 16)
    if keys is not None:
        positions, order, gains, coverage = keys["position"], keys["pick_order"], keys["gain"], keys["coverage"][np.argsort(keys["pick_order"])]
        threshold = float(keys["threshold"][0]) if len(keys["threshold"]) else 0.0
    else:
        positions = order = gains = coverage = np.zeros(0, np.int64)
        threshold = float(np.percentile(conf.astype(np.float32), 50))
    keep = (conf >= threshold) & (conf > 0.1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = episode.replace("/", "__")
    title = f"{dataset}/{split}/{episode}"
    sheet = contact_sheet(frames.pixels, g["frame_index"], positions, order, gains, coverage, base.coverage,
                          out_dir / f"{stem}.sheet.png", title=title)
    top = topdown(camera_centres(g["extrinsic"]), optical_axes(g["extrinsic"]), points[keep].astype(np.float32),
                  positions, out_dir / f"{stem}.topdown.png", title=title)
    return [sheet, top]
