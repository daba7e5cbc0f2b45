"""``geometry``: per-frame camera, depth and world points of an episode's sampled frames (one row per frame).

World frame: the camera of the episode's FIRST sampled frame, OpenCV axes (x right, y down,
z forward), for every provider: VGGT's predictions (its world is only approximately its first
camera) and the ``gt`` provider's simulator poses are re-expressed in it, so ``extrinsic[0]`` is
``[I | 0]`` and downstream code has one convention. VGGT's scale is its own normalised
scale; ``gt`` is metric.

    extrinsic [3,4]  camera-from-world [R | t]; camera centre C = -R^T t, optical axis = R^T (0,0,1)
    intrinsic [3,3]  pixels of the model input (``H x W`` = the stage's ``image_size``),
                     principal point at the image centre for VGGT
    depth, depth_conf, world_points, world_points_conf
                     maps sampled every ``stride`` pixels of the model input
                     (map pixel (i, j) is input pixel (i*stride, j*stride)), fp16; conf is 0
                     where a ``gt`` depth is invalid, and VGGT's confidences are clipped to the fp16 range
    voxels [V], voxel_count, voxel_union, voxel_size, voxel_threshold, voxel_error
                     what the keyframes stage selects from: each frame's Spatial-MLLM voxel set,
                     computed from the provider's FULL-resolution float32 maps before striding and
                     fp16 (VGGT: on its own world points, as Spatial-MLLM), as sorted int32 ids
                     numbered 0..voxel_union-1 over the episode, -1 padded to ``V``
                     (``max_frame_voxels``); the episode's voxel count, voxel edge, confidence
                     threshold and error code (0 ok; 1-5 degenerate maps, 6 a frame with more than
                     ``V`` voxels: then no id is kept) are repeated on each row
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
    ArraySpec("voxels", "int32", ("V",), "sorted voxel ids of the frame's confident full-resolution points, -1 padded"),
    ArraySpec("voxel_count", "int32", (), "number of voxel ids of the frame"),
    ArraySpec("voxel_union", "int64", (), "distinct voxels in the episode (ids are 0..voxel_union-1)"),
    ArraySpec("voxel_size", "float32", (), "voxel edge (world units of the provider's own frame)"),
    ArraySpec("voxel_threshold", "float32", (), "confidence threshold (50th percentile, full resolution)"),
    ArraySpec("voxel_error", "int8", (), "0 ok; 1-5 degenerate maps; 6 a frame has more than V voxels"),
)

SPEC = CacheSpec(name="geometry", version=2, row="frame", arrays=_ARRAYS, doc=__doc__)

SPEC_WITH_TOKENS = CacheSpec(
    name="geometry",
    version=2,
    row="frame",
    arrays=_ARRAYS + (ArraySpec("tokens", "float16", ("Th", "Tw", "C"), "pooled VGGT aggregator tokens, last layer"),),
    doc=__doc__,
)
