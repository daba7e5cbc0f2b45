"""Regenerate ``docs/inspect_caches.ipynb`` from the cells below (outputs stripped).

The notebook is generated, not hand-edited, so its JSON stays reviewable in diffs:
``python docs/make_notebook.py``. ``tests/test_notebook.py`` executes it with a real kernel.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

MD, CODE = "markdown", "code"
CELLS = [
    (MD, """# Inspecting navcache caches

Every cache opens in one line with `open_cache`. This notebook walks through each cache kind the
embedded demo builds (poses, frame features, rover metadata, geometry, keyframes), one episode, the
keyframe/coverage pictures, and a head's training curves.

Run it from a folder with a `navcache.yaml`, or anywhere to use the embedded demo world (built on
first use, about a minute on a laptop CPU; no downloads)."""),
    (CODE, """import json, os, subprocess, sys
from pathlib import Path

import numpy as np
from IPython.display import Image, display

from navcache import open_cache
from navcache.cache_specs.reader import iter_caches

WORK = Path(os.environ.get("NAVCACHE_WORKDIR", ".")).resolve()
CACHE_ROOT = WORK / "navcache_cache"
RUN_DIR = WORK / "runs" / "sim-heads-notebook"

def navcache(*args):
    \"\"\"Run the navcache CLI in WORK and fail loudly (the notebook must not go on with missing caches).\"\"\"
    p = subprocess.run([sys.executable, "-m", "navcache.cli", *args], cwd=WORK, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"navcache {' '.join(args)} exited {p.returncode}:\\n{p.stdout[-2000:]}\\n{p.stderr[-2000:]}")
    return p.stdout

for split in ("train", "val"):
    navcache("extract", "--split", split)     # builds only what is missing or stale
caches = list(iter_caches(CACHE_ROOT))
[str(c.relative_to(CACHE_ROOT)) for c in caches]"""),
    (MD, """## Every cache, summarised
In Jupyter a cache renders as an HTML card: counts, arrays with dtype and row shape, and the encoder's
provenance (a random-initialised demo encoder is flagged)."""),
    (CODE, """for path in caches:
    with open_cache(path) as c:
        display(c)"""),
    (MD, "## The index and one episode\nThe index is a polars DataFrame, one row per episode; `c[episode_id]` gives its arrays as numpy."),
    (CODE, """feats = open_cache(CACHE_ROOT / "demo_rover" / "train" / "frame_features")
display(feats.index.head())
episode = feats.episodes[0]
{name: (a.dtype.str, a.shape) for name, a in feats[episode].items()}"""),
    (CODE, """meta = open_cache(CACHE_ROOT / "demo_rover" / "train" / "rover_meta")
print("telemetry stats (train):", json.dumps(meta.stats["telemetry"])[:200], "...")
row = meta[episode]
{k: v.tolist() for k, v in row.items()}"""),
    (MD, "## Poses: an agent's path and its motion bins"),
    (CODE, """import matplotlib.pyplot as plt

poses = open_cache(CACHE_ROOT / "demo_navila" / "train" / "poses")
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for eid in poses.episodes[:6]:
    p = poses[eid]
    real = ~p["padded"]
    axes[0].plot(p["poses"][real, 0], p["poses"][real, 1], marker=".", label=eid)
axes[0].set_title("sampled positions (x, y)"); axes[0].set_aspect("equal"); axes[0].legend(fontsize=6)
valid = poses.load("step_valid")
axes[1].hist(poses.load("dist_bins")[valid], bins=np.arange(-0.5, 6.5), rwidth=0.8)
axes[1].set_title("distance bins of valid steps")
fig.tight_layout(); plt.close(fig)
display(fig)"""),
    (MD, """## Geometry and space-aware keyframes
`navcache inspect CACHE --episode E --plot DIR` draws every sampled frame with the chosen keyframes
framed and numbered, the coverage curve against uniform sampling, and a top-down view of the camera
path and the kept world points."""),
    (CODE, """keyframes = CACHE_ROOT / "demo_tours" / "train" / "keyframes"
with open_cache(keyframes) as k:
    tour = k.episodes[0]
    picks = k[tour]
print(tour, "keyframes:", picks["frame_index"].tolist(), "final coverage:", float(picks["coverage"][-1]))
written = navcache("inspect", str(keyframes), "--episode", tour, "--plot", str(WORK / "plots")).split()
for png in written:
    display(Image(filename=png))"""),
    (MD, """## A head's training curves
The SIM v0 safety heads train from the rover caches only. A short run here; each epoch appends to
`metrics/{train,val}_metrics.jsonl` and the trainer draws the curves and confusion matrices."""),
    (CODE, """navcache("train", "sim-heads", "--epochs", "3", "--out-dir", str(RUN_DIR))
import polars as pl
val = pl.read_ndjson(RUN_DIR / "metrics" / "val_metrics.jsonl")
display(val.select([c for c in val.columns if c == "epoch" or c.endswith("_accuracy") and not c.startswith("base_")]))
display(Image(filename=str(RUN_DIR / "metrics" / "curves.png")))"""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == MD else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating changes nothing in git
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("inspect_caches.ipynb")
    nbformat.write(build(), out)
    print(out)
