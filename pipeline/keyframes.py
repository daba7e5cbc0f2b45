"""Spatial-MLLM space-aware keyframe selection: greedy maximum coverage of voxels, exact and fast.

Reference: Spatial-MLLM ``src/sampling/sa_sampling.py`` (``space_aware_frame_sampling``,
``compute_voxel_sets``, ``maximum_coverage_sampling``), applied to the S sampled frames' VGGT
``world_points`` [S,H,W,3] and ``world_points_conf`` [S,H,W]:

1. ``thr = np.percentile(all confidences, 50)``; keep points with ``conf >= thr`` and ``conf > 0.1``.
2. Bounding box of all kept points; ``voxel_size = min(x_range, y_range, z_range) / 20``.
3. Per frame, the set of voxels ``floor((p - [xmin, ymin, zmin]) / voxel_size)`` of its kept points.
4. Greedy: K rounds, each takes the frame adding the most not-yet-covered voxels (the lowest index
   on ties), stopping early once the best gain is 0; the picks are returned sorted.

Every number is the reference's, bit for bit, on the same float32 values (the reference's tensors
are float32: VGGT's heads run outside autocast). The pipeline therefore runs ``frame_voxels`` in the
geometry step on the provider's full-resolution float32 maps, before striding and fp16 storage, and
keeps the sets in the geometry cache (``pack_voxels`` / ``unpack_voxels``); the keyframes stage runs
``greedy`` or ``uniform_on`` on them, so its picks do not depend on the cache's stride or dtype. Our cache stores fp16; fp16 -> fp32 is exact, so
``space_aware(p16, c16) == space_aware(p16.astype(f32), c16.astype(f32))`` (bar the float32 refusal
below). Other dtypes are cast to float32 first. What exactness takes:

* threshold: the median equals ``np.percentile`` of the flat float32 confidences, found with one
  ``np.partition`` on integer keys instead of a 34M-value percentile (see ``_threshold``); the
  comparisons are float32 (torch casts the scalar to the tensor's dtype), and ``0.1`` is
  ``float32(0.1)``.
* ``voxel_size``: the reference runs on CUDA, where ``tensor / 20`` (a CPU scalar divisor) is
  computed as ``range * float32(1/20)`` (PyTorch ``div_true_kernel_cuda``, "compute a *
  reciprocal(b)"); on CPU torch it would be a true division, which differs in the last bit for
  about 1 range in 5 and then often moves the top of the thinnest axis from voxel 20 to 19 (e.g.
  range 0.05). We follow CUDA.
* voxel coordinates: ``((p - offset) / voxel_size).floor().long()`` with float32 subtraction and a
  true float32 division (the divisor is a CUDA tensor there, not a CPU scalar).
* ties: the reference scans ``remaining_frames``, a ``set`` of small ints (iterated in ascending
  order) with a strict ``gain > max_gain``, so the first maximum, i.e. the lowest index, wins.

Where the reference would crash or divide by zero we raise ``ValueError`` (the keyframes stage
turns it into a quarantine reason): a NaN confidence (its percentile is NaN, nothing is kept), no
kept point, a non-finite kept point, a zero extent along an axis (``voxel_size == 0``), and, for
float32 points only, a grid too fine for int64 voxel ids. ``k < 0`` is rejected; ``k = 0`` selects
nothing, like the reference's ``range(0)``.

Speed (128 frames of 518x518, fp16, one core: about 0.23 s, see ``bench/keyframes_speed.py``): the
median is a single-kth partition of integer keys; per frame, kept points are gathered once; fp16
coordinates go through a 65536-entry table per axis (every fp16 value's voxel coordinate, computed
with the float32 formula above, so exact by construction); per-frame voxel sets are deduplicated
in a dense bitmap when the grid is small (the usual case: about 20 x (extent / min extent * 20)^2
cells), else sorted; the greedy is lazy (gains only shrink, so stale gains are upper bounds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

class Degenerate(ValueError):
    """Where the reference would crash or divide by zero; ``code`` (1..5) survives a cache round trip."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


#: what each ``Degenerate.code`` means, for a reason read back from the geometry cache (0 = none)
DEGENERATE = {
    1: "NaN confidence: the median would be NaN and no point kept",
    2: "no confident world point (conf >= median and conf > 0.1)",
    3: "non-finite world point among the confident points",
    4: "confident world points have zero extent along an axis; voxel size would be 0",
    5: "voxel grid too fine for int64 ids",
}
#: ``pack_voxels``' code for a frame whose set does not fit the row's capacity
TOO_MANY_VOXELS = 6

#: cells up to which per-frame voxel sets are deduplicated in a dense bitmap (one byte a cell)
DENSE_GRID_MAX = 1 << 24

_TENTH = np.float32(0.1)  # the reference's ``conf > 0.1`` on a float32 tensor compares to float32(0.1)
_INV_20 = np.float32(1) / np.float32(20)  # CUDA's reciprocal for ``min_range / 20``
_ID_LIMIT = 1 << 62  # linear voxel ids stay well inside int64
# every fp16 bit pattern as its float32 value (index = uint16 bits)
_F16_VALUES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_F16_POS_INF = 0x7C00  # bit pattern of +inf; positive NaNs lie above it


@dataclass(frozen=True)
class Selection:
    """Keyframes chosen among an episode's S sampled frames.

    positions  int64 [k]   sorted positions into the S frames
    pick_order int64 [k]   0-based order in which each sorted position was picked
    gains      int64 [k]   new voxels the pick added, aligned with ``positions``
    coverage   float64 [k] fraction of all voxels covered after the i-th PICK (pick order)
    n_voxels   distinct voxels over all frames; voxel_size (world units); threshold (confidence)
    """

    positions: np.ndarray
    pick_order: np.ndarray
    gains: np.ndarray
    coverage: np.ndarray
    n_voxels: int
    voxel_size: float
    threshold: float


@dataclass(frozen=True)
class FrameVoxels:
    """Each frame's voxel set, as sorted unique integer ids in ``[0, n_ids)``.

    Ids are labels only (linear grid ids, or ranks when the grid is huge); the sets, the
    threshold and the voxel size are what the reference computes.
    """

    sets: tuple[np.ndarray, ...]  # S arrays of int64 (int32 when read back from a cache) ids
    n_ids: int
    n_voxels: int
    voxel_size: float
    threshold: float


def space_aware(points: np.ndarray, conf: np.ndarray, k: int = 16) -> Selection:
    """Spatial-MLLM's greedy voxel coverage; points [S,H,W,3], conf [S,H,W] (fp16 or fp32)."""
    _check_k(k)
    return greedy(frame_voxels(points, conf), k)


def uniform(points: np.ndarray, conf: np.ndarray, k: int) -> Selection:
    """Evenly spaced frames ``linspace(0, S-1, min(k, S))``, scored on the same voxel sets in position order."""
    _check_k(k)
    return uniform_on(frame_voxels(points, conf), k)


def greedy(vox: FrameVoxels, k: int) -> Selection:
    """``space_aware`` on precomputed voxel sets: K rounds of the most new voxels, lowest index on ties."""
    _check_k(k)
    covered = np.zeros(vox.n_ids, bool)
    bound = np.array([len(s) for s in vox.sets], np.int64)  # gain with nothing covered yet
    remaining = set(range(len(vox.sets)))
    picks, gains = [], []
    for _ in range(k):
        if not remaining:
            break
        best, best_gain = _lazy_best(vox.sets, covered, bound, remaining)
        if best_gain <= 0:
            break  # the reference stops when no frame adds a voxel
        covered[vox.sets[best]] = True
        remaining.discard(best)
        picks.append(best)
        gains.append(best_gain)
    return _selection(picks, gains, vox)


def uniform_on(vox: FrameVoxels, k: int) -> Selection:
    """``uniform`` on precomputed voxel sets."""
    _check_k(k)
    s = len(vox.sets)
    picks = np.unique(np.linspace(0, s - 1, min(k, s)).astype(int)).tolist()
    covered = np.zeros(vox.n_ids, bool)
    gains = []
    for p in picks:
        ids = vox.sets[p]
        gains.append(int(len(ids) - np.count_nonzero(covered[ids])))
        covered[ids] = True
    return _selection(picks, gains, vox)


def frame_voxels(points: np.ndarray, conf: np.ndarray) -> FrameVoxels:
    """Threshold, voxel size and per-frame voxel sets of points [S,H,W,3] / conf [S,H,W]."""
    points, conf = _as_inputs(points, conf)
    s = points.shape[0]
    flat_p = points.reshape(s, -1, 3)
    thr = _threshold(conf)
    keep = _keep_test(conf.dtype, thr)
    flat_c = conf.reshape(s, -1)
    if conf.dtype == np.float16:
        flat_c = flat_c.view(np.int16)

    # pass 1: each frame's kept points, planar [3, n] (contiguous per axis), and the bounding box
    kept, lo, hi = [], np.full(3, np.inf, np.float32), np.full(3, -np.inf, np.float32)
    for f in range(s):
        rows = np.take(flat_p[f], np.flatnonzero(keep(flat_c[f])), axis=0)  # [n, 3]
        planar = np.ascontiguousarray(rows.T)
        kept.append(planar)
        if planar.shape[1]:
            mn, mx = _min_max(planar)
            if not (np.isfinite(mn).all() and np.isfinite(mx).all()):
                raise Degenerate(3, f"non-finite world point among the confident points of frame {f}")
            lo, hi = np.minimum(lo, mn), np.maximum(hi, mx)
    if not sum(k.shape[1] for k in kept):
        raise Degenerate(2, f"no confident world point (threshold {float(thr):g}, conf > 0.1 also required)")
    extent = hi - lo  # float32, like the reference's ``x_max - x_min``
    if extent.min() <= 0:
        axis = "xyz"[int(np.argmin(extent))]
        raise Degenerate(4, f"confident world points have zero extent along {axis}; voxel size would be 0")
    voxel = np.float32(extent.min() * _INV_20)
    if voxel <= 0:  # a float32 extent so small that extent * (1/20) underflows
        raise Degenerate(4, f"confident world points have a vanishing extent {extent.tolist()}; voxel size would be 0")

    # pass 2: voxel ids per frame
    coords = _F16Coords(lo, hi, voxel) if points.dtype == np.float16 else _F32Coords(lo, hi, voxel)
    n_ids = coords.n_cells
    if n_ids <= DENSE_GRID_MAX:
        sets, n_voxels = _dedupe_dense(kept, coords, n_ids)
    else:
        sets, n_ids = _dedupe_sorted(kept, coords)
        n_voxels = n_ids
    return FrameVoxels(tuple(sets), int(n_ids), int(n_voxels), float(voxel), float(thr))


# -- cache rows -----------------------------------------------------------------------------------
def voxel_rows(points: np.ndarray, conf: np.ndarray, capacity: int) -> dict[str, np.ndarray]:
    """``frame_voxels`` of full-resolution maps as fixed-width rows, one per frame (the geometry cache).

    points [S,H,W,3] / conf [S,H,W] (the provider's float32 maps) -> ``voxels`` int32 [S, capacity]
    (each frame's sorted ids, renumbered 0..U-1 over the episode's U voxels, -1 after the last),
    ``voxel_count`` int32 [S], and the episode's ``voxel_union`` (U) int64, ``voxel_size`` and
    ``voxel_threshold`` float32 and ``voxel_error`` int8 (0, a ``DEGENERATE`` code, or
    ``TOO_MANY_VOXELS`` when a frame's set is longer than ``capacity``; then no id is kept), each
    repeated on every row. Ranks keep int32 enough for any episode (U <= S*H*W) and make the
    reader's coverage bitmap U long, not grid-sized.
    """
    s = int(np.shape(points)[0])
    rows = {"voxels": np.full((s, capacity), -1, np.int32), "voxel_count": np.zeros(s, np.int32)}
    union, size, thr, err = 0, 0.0, 0.0, 0
    try:
        vox = frame_voxels(points, conf)
    except Degenerate as e:
        err = e.code
    else:
        counts = np.array([len(v) for v in vox.sets], np.int32)
        rows["voxel_count"] = counts
        union, size, thr = vox.n_voxels, vox.voxel_size, vox.threshold
        if counts.max() > capacity:
            err = TOO_MANY_VOXELS
        else:
            every = np.unique(np.concatenate(vox.sets))  # sorted: the ranks keep each set sorted
            for f, ids in enumerate(vox.sets):
                rows["voxels"][f, : len(ids)] = np.searchsorted(every, ids)
    rows.update(
        voxel_union=np.full(s, union, np.int64),
        voxel_size=np.full(s, size, np.float32),
        voxel_threshold=np.full(s, thr, np.float32),
        voxel_error=np.full(s, err, np.int8),
    )
    return rows


def read_voxel_rows(rows, capacity_field: str = "max_frame_voxels") -> FrameVoxels:
    """``voxel_rows``' arrays (an episode's geometry rows) -> FrameVoxels; ``Degenerate`` when none were kept."""
    err = int(np.max(rows["voxel_error"]))
    counts = np.asarray(rows["voxel_count"])
    if err == TOO_MANY_VOXELS:
        f = int(np.argmax(counts))
        raise Degenerate(
            err,
            f"frame {f} sees {int(counts[f])} voxels, more than the {np.shape(rows['voxels'])[1]} the geometry cache "
            f"keeps per frame ({capacity_field}); raise it and rebuild the geometry cache",
        )
    if err:
        raise Degenerate(err, DEGENERATE.get(err, f"unknown voxel error code {err}"))
    voxels = np.asarray(rows["voxels"])
    sets = tuple(voxels[f, : counts[f]] for f in range(len(counts)))
    union = int(rows["voxel_union"][0])
    return FrameVoxels(sets, union, union, float(rows["voxel_size"][0]), float(rows["voxel_threshold"][0]))


# -- inputs ---------------------------------------------------------------------------------------
def _check_k(k) -> None:
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")


def _as_inputs(points, conf) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous fp16 (kept: the fast path) or float32 (everything else, as VGGT's tensors)."""
    points, conf = np.asarray(points), np.asarray(conf)
    if points.ndim != 4 or points.shape[-1] != 3 or conf.shape != points.shape[:3]:
        raise ValueError(f"expected points [S,H,W,3] and conf [S,H,W], got {points.shape} and {conf.shape}")
    if points.shape[0] == 0 or conf.size == 0:
        raise ValueError(f"no point to select keyframes from (points {points.shape})")
    points = np.ascontiguousarray(points, np.float16 if points.dtype == np.float16 else np.float32)
    conf = np.ascontiguousarray(conf, np.float16 if conf.dtype == np.float16 else np.float32)
    return points, conf


# -- threshold ------------------------------------------------------------------------------------
def _order_keys(bits: np.ndarray) -> np.ndarray:
    """Signed-integer views of floats -> integers in the floats' order (NaN-free input; -0 just below +0).

    Negative floats have the sign bit set and a magnitude that grows with the bits, so flipping
    their magnitude bits makes the integer order the value order. An involution: it also undoes itself.
    """
    nbits = bits.dtype.itemsize * 8
    magnitude = np.array((1 << (nbits - 1)) - 1, bits.dtype)
    return bits ^ ((bits >> (nbits - 1)) & magnitude)


def _threshold(conf: np.ndarray) -> np.float32:
    """``np.percentile(conf.astype(float32).ravel(), 50)`` exactly, as float32 (the reference compares in float32).

    np.percentile partitions, then interpolates between the two order statistics around the
    virtual index (n-1)/2 with weight 0 (odd n) or 0.5 (even n). We find those two values with a
    single-kth ``np.partition`` on integer keys (SIMD-sorted, no float copy of 34M values) and let
    np.percentile itself interpolate them from a 2- or 3-value array with the same virtual-index
    fraction, so its exact rounding (and version) is reproduced.
    """
    if conf.dtype == np.float16:
        bits = conf.reshape(-1).view(np.int16)
        lo, hi = int(bits.min()), int(bits.max())
        if not (lo >= 0 and hi <= _F16_POS_INF) and bool(((bits & 0x7FFF) > _F16_POS_INF).any()):
            raise Degenerate(1, "NaN confidence: the median would be NaN and no point kept")
    else:
        if np.isnan(conf).any():
            raise Degenerate(1, "NaN confidence: the median would be NaN and no point kept")
        bits = conf.reshape(-1).view(np.int32)
        lo = int(bits.min())
    keys = bits if lo >= 0 else _order_keys(bits)  # all sign bits clear: the bits are already in order
    n, mid = keys.size, keys.size // 2
    part = np.partition(keys, mid)
    if n % 2:  # virtual index mid: sorted[mid] and sorted[mid + 1] with weight 0
        pair = [part[mid], part[mid], part[mid + 1 :].min() if n > 1 else part[mid]]
    else:  # virtual index mid - 0.5: sorted[mid - 1] and sorted[mid] with weight 0.5
        pair = [part[:mid].max(), part[mid]]
    values = _order_keys(np.array(pair, keys.dtype)).view(conf.dtype).astype(np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN like np.percentile's, then nothing is kept
        return np.float32(np.percentile(values, 50))


def _keep_test(dtype, thr: np.float32):
    """Frame conf [H*W] (fp16 as int16 bits, else float32) -> bool mask of ``conf >= thr & conf > 0.1``."""
    if dtype == np.float16:
        # the smallest fp16 value passing both tests; the kept set is every value from it up, and
        # for positive fp16 values (NaN was refused) the int16 bit order is the value order
        pos = _F16_VALUES[: _F16_POS_INF + 1]
        ok = (pos >= thr) & (pos > _TENTH)
        if not ok.any():
            raise Degenerate(2, f"no confident world point (threshold {float(thr):g}, conf > 0.1 also required)")
        first = np.int16(np.argmax(ok))
        return lambda c: c >= first
    tenth_up = np.nextafter(_TENTH, np.float32(np.inf))
    first = max(thr, tenth_up)  # conf >= thr and conf > 0.1  <=>  conf >= max(thr, next float32 above 0.1)
    return lambda c: c >= first


def _min_max(planar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis min and max of planar [3, n] fp16/float32 points, as float32 [3] (NaN shows as NaN).

    fp16 is reduced on its bits (integer reductions are SIMD, fp16 ones are not): as uint16,
    negatives (sign bit) sit above positives and grow with magnitude, so the largest uint16 is the
    most negative value when there is one; as int16, the largest is the largest positive value, and
    when all are negative the smallest int16 is the one nearest zero. NaNs sort beyond the infinities
    on both sides, so a NaN bound comes out when any point is NaN.
    """
    if planar.dtype != np.float16:
        return planar.min(axis=1), planar.max(axis=1)
    u, i = planar.view(np.uint16), planar.view(np.int16)
    u_max, i_max = u.max(axis=1), i.max(axis=1)
    low = np.where(u_max >= 0x8000, u_max, u.min(axis=1))
    high = np.where(i_max >= 0, i_max, i.min(axis=1)).astype(np.uint16)
    return _F16_VALUES[low], _F16_VALUES[high]


# -- voxel ids ------------------------------------------------------------------------------------
class _F16Coords:
    """Linear voxel ids of fp16 points through a per-axis table over all 65536 fp16 values.

    ``table[a][bits]`` is ``floor((value - lo[a]) / voxel)`` in float32, times the axis stride, so
    a point's id is three lookups and two adds. Values outside [lo, hi] never occur among kept points.
    When the grid would overflow int64 (absurdly thin extents) the coordinates are replaced by their
    rank among those that occur in [lo, hi] (at most 65536 per axis): same sets, smaller labels.
    """

    def __init__(self, lo, hi, voxel):
        inside = [(_F16_VALUES >= lo[a]) & (_F16_VALUES <= hi[a]) for a in range(3)]
        with np.errstate(invalid="ignore", over="ignore"):
            raw = [np.where(inside[a], np.floor((_F16_VALUES - lo[a]) / voxel), 0) for a in range(3)]
        coord = [r.astype(np.int64) if np.isfinite(r).all() and r.max() < _ID_LIMIT else None for r in raw]
        dims = [int(c.max()) + 1 if c is not None else _ID_LIMIT for c in coord]
        if np.prod(dims, dtype=object) >= _ID_LIMIT:
            coord, dims = [], []
            for a in range(3):
                used = np.unique(raw[a][inside[a]])
                coord.append(np.where(inside[a], np.searchsorted(used, raw[a]), 0).astype(np.int64))
                dims.append(len(used))
        self.n_cells = dims[0] * dims[1] * dims[2]
        # int32 ids when they fit: half the memory traffic of int64 in the hottest loop
        itype = np.int32 if self.n_cells < 2**31 else np.int64
        self.tables = tuple(t.astype(itype) for t in (coord[0] * (dims[1] * dims[2]), coord[1] * dims[2], coord[2]))

    def ids(self, planar: np.ndarray) -> np.ndarray:
        """planar [3, n] fp16 -> linear ids [n]."""
        bits = planar.view(np.uint16)
        tx, ty, tz = self.tables
        out = np.take(tx, bits[0], mode="wrap")  # 'wrap' only skips the bounds check: uint16 always fits
        out += np.take(ty, bits[1], mode="wrap")
        out += np.take(tz, bits[2], mode="wrap")
        return out


class _F32Coords:
    """Linear voxel ids of float32 points with the reference's float32 arithmetic."""

    def __init__(self, lo, hi, voxel):
        with np.errstate(over="ignore"):
            top = np.floor((hi - lo) / voxel)  # the largest coordinate: the formula is monotone in p
        if not np.isfinite(top).all() or np.prod(top.astype(object) + 1) >= _ID_LIMIT:
            raise Degenerate(
                5,
                f"voxel grid too fine for int64 ids: extent {(hi - lo).tolist()} with voxel size {float(voxel):g}"
            )
        dims = [int(t) + 1 for t in top]
        self.lo, self.voxel, self.n_cells = lo, voxel, dims[0] * dims[1] * dims[2]
        self.strides = (dims[1] * dims[2], dims[2], 1)

    def ids(self, planar: np.ndarray) -> np.ndarray:
        """planar [3, n] float32 -> linear ids [n] (int32 when the grid fits: the hot loop of the geometry step)."""
        itype = np.int32 if self.n_cells < 2**31 else np.int64
        out = np.zeros(planar.shape[1], itype)
        t = np.empty(planar.shape[1], np.float32)
        for a in range(3):
            np.subtract(planar[a], self.lo[a], out=t)  # float32 maths throughout, as the reference's tensors
            np.divide(t, self.voxel, out=t)
            np.floor(t, out=t)
            coord = t.astype(itype)
            if self.strides[a] != 1:
                coord *= itype(self.strides[a])
            out += coord
        return out


def _dedupe_dense(kept, coords, n_cells) -> tuple[list[np.ndarray], int]:
    """Sorted unique ids per frame through one reusable bitmap of the grid; also counts the union."""
    seen, union, sets = np.zeros(n_cells, bool), np.zeros(n_cells, bool), []
    for planar in kept:
        seen[coords.ids(planar)] = True
        ids = np.flatnonzero(seen)
        seen[ids] = False  # reset only what was set: the bitmap is reused by every frame
        union[ids] = True
        sets.append(ids.astype(np.int64, copy=False))
    return sets, int(np.count_nonzero(union))


def _dedupe_sorted(kept, coords) -> tuple[list[np.ndarray], int]:
    """Grids too big for a bitmap: per-frame ``np.unique``, then ids renumbered 0..U-1 over the episode."""
    per_frame = [np.unique(coords.ids(planar)) for planar in kept]
    sizes = [len(u) for u in per_frame]
    every, inverse = np.unique(np.concatenate(per_frame), return_inverse=True)
    bounds = np.cumsum([0] + sizes)
    sets = [inverse[bounds[f] : bounds[f + 1]].astype(np.int64) for f in range(len(per_frame))]
    return sets, len(every)


# -- greedy ---------------------------------------------------------------------------------------
def _lazy_best(sets, covered, bound, remaining) -> tuple[int, int]:
    """The remaining frame with the most uncovered voxels (lowest index on ties) and its gain.

    ``bound[f]`` is f's gain when last evaluated; gains only shrink as voxels get covered, so it
    is an upper bound. Frames are evaluated by decreasing bound (then index) until the next bound
    cannot beat the best exact gain found, ties included: the result equals a full scan's.
    """
    best, best_gain = -1, -1
    for f in sorted(remaining, key=lambda f: (-bound[f], f)):
        if best >= 0 and (bound[f] < best_gain or (bound[f] == best_gain and f > best)):
            break
        ids = sets[f]
        gain = int(len(ids) - np.count_nonzero(covered[ids]))
        bound[f] = gain
        if gain > best_gain or (gain == best_gain and f < best):
            best, best_gain = f, gain
    return best, best_gain


def _selection(picks: list[int], gains: list[int], vox: FrameVoxels) -> Selection:
    picks_a = np.asarray(picks, np.int64)
    order = np.argsort(picks_a, kind="stable")
    gains_a = np.asarray(gains, np.int64)
    coverage = np.cumsum(gains_a) / vox.n_voxels  # n_voxels >= 1: some point was kept
    return Selection(
        positions=picks_a[order],
        pick_order=order.astype(np.int64),
        gains=gains_a[order],
        coverage=coverage.astype(np.float64),
        n_voxels=vox.n_voxels,
        voxel_size=vox.voxel_size,
        threshold=vox.threshold,
    )
