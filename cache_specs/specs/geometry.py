"""``geometry``: per-frame camera, depth and world points of an episode's sampled frames (one row per frame).

World frame: the camera of the episode's FIRST sampled frame, OpenCV axes (x right, y down,
z forward), for every provider: VGGT predicts in that frame, and the ``gt`` provider re-expresses
simulator poses in it, so downstream code has one convention. VGGT's scale is its own normalised
scale; ``gt`` is metric.

    extrinsic [3,4]  camera-from-world [R | t]; camera centre C = -R^T t, optical axis = R^T (0,0,1)
    intrinsic [3,3]  pixels of the model input (``H x W`` = the stage's ``image_size``),
                     principal point at the image centre for VGGT
    depth, depth_conf, world_points, world_points_conf
                     maps sampled every ``stride`` pixels of the model input
                     (map pixel (i, j) is input pixel (i*stride, j*stride)), fp16; conf is 0
                     where a ``gt`` depth is invalid, and VGGT's confidences are clipped to the fp16 range
    tokens [Th,Tw,C] optional: VGGT's last aggregator layer, camera/register tokens dropped,
                     average-pooled ``token_pool`` x ``token_pool`` (Spatial-MLLM's spatial feature)
"""
from ..spec import ArraySpec, CacheSpec

_ARRAYS = (
    ArraySpec("frame_index", "int64", (), "source frame index of the row"),
    ArraySpec("extrinsic", "float32", (3, 4), "camera-from-world [R | t], OpenCV axes, world = first sampled camera"),
    ArraySpec("intrinsic", "float32", (3, 3), "pinhole intrinsics in model-input pixels"),
    ArraySpec("depth", "float16", ("h", "w"), "z-depth at every stride-th input pixel"),
    ArraySpec("depth_conf", "float16", ("h", "w"), "depth confidence (gt: 1 valid, 0 invalid)"),
    ArraySpec("world_points", "float16", ("h", "w", 3), "3-D point of each map pixel in the world frame"),
    ArraySpec("world_points_conf", "float16", ("h", "w"), "point confidence (gt: 1 valid, 0 invalid)"),
)

SPEC = CacheSpec(name="geometry", version=1, row="frame", arrays=_ARRAYS, doc=__doc__)

SPEC_WITH_TOKENS = CacheSpec(
    name="geometry",
    version=1,
    row="frame",
    arrays=_ARRAYS + (ArraySpec("tokens", "float16", ("Th", "Tw", "C"), "pooled VGGT aggregator tokens, last layer"),),
    doc=__doc__,
)
