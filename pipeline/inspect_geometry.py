"""``navcache inspect <geometry|keyframes cache> --episode E --plot DIR``: look at one episode.

Writes ``DIR/<episode>.sheet.png`` (every sampled frame, the chosen keyframes highlighted, the
coverage curve against uniform sampling) and ``DIR/<episode>.topdown.png`` (camera path, headings,
kept world points, keyframes). With a ``covisibility`` cache beside them that holds the episode,
also the seed's ground-truth outputs (``cache_specs.covisibility_pictures``: ``<episode>_heatmaps.png``,
one ``<episode>_heatmap_<k>.png`` per keyframe, the selected indices, geometry info and a summary).
Frames are decoded from the dataset through the project's source, because the caches hold
geometry, not pixels; for the heatmaps they are brought to the geometry's model input (VGGT's
crop), whose image the covisibility grid divides.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from navcache.cache_specs.reader import open_cache

from .config import ProjectConfig
from .errors import NavcacheError


def plot_episode(project: ProjectConfig, cache_path: Path, episode: str, out_dir: Path) -> list[Path]:
    """Render the PNGs (and the covisibility files) for ``episode``; ``cache_path`` is any cache folder of its split."""
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
    written = [sheet, top]
    cov_dir = split_dir / "covisibility"
    if keys is not None and cov_dir.exists():
        with open_cache(cov_dir) as cc:
            cov = cc[episode] if episode in cc else None
        if cov is not None:
            pixels = _model_input(frames.pixels[keys["position"]], project.stage_settings("geometry", dataset))
            written += _covisibility_outputs(out_dir, stem, {"dataset": dataset, "split": split, "episode": episode}, pixels, g, keys, cov)
    return written


def _model_input(pixels: np.ndarray, settings) -> np.ndarray:
    """uint8 [K, H, W, 3] frames as the geometry provider saw them (the grid is over that image)."""
    if settings.provider != "vggt" or tuple(pixels.shape[1:3]) == tuple(settings.image_size):
        return pixels  # gt: the image is the source frame (other sizes were quarantined)
    from .encoders.vggt import preprocess_crop

    images = preprocess_crop(pixels, rotate_portrait=settings.vggt.spatial_mllm)
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def _covisibility_outputs(out_dir: Path, stem: str, where: dict, pixels: np.ndarray, g: dict, keys: dict, cov: dict) -> list[Path]:
    """The ground truth drawn as ``navcache predict heatmaps`` draws predictions (no prediction here)."""
    from navcache.cache_specs.covisibility_pictures import write_episode_outputs

    grid = math.isqrt(cov["target"].shape[1] - 5)
    pos = keys["position"]
    summary = {
        **where, "grid": grid, "keyframes": keys["frame_index"].tolist(), "pairs": len(cov["target"]),
        "mean_visible_fraction": float(cov["visible_fraction"].mean()),
        "mean_occluded_fraction": float(cov["occluded_fraction"].mean()),
        "prediction": None,
    }
    paths = write_episode_outputs(
        out_dir, stem, frames=pixels, selected_indices=keys["frame_index"], grid=grid,
        pairs=np.stack([cov["keyframe_a"], cov["keyframe_b"]], 1), target=cov["target"], pred=None, pred_upsampled=None,
        geometry_info={"extrinsic": g["extrinsic"][pos], "intrinsic": g["intrinsic"][pos], "frame_index": keys["frame_index"],
                       "position": pos, "pick_order": keys["pick_order"], "gain": keys["gain"], "coverage": keys["coverage"]},
        summary=summary)
    return list(paths.values())
