"""``spatial``: frozen multi-view 3-D perception of every sampled timestep (one row per frame).

A row is one sampled timestep of an episode; every array carries a leading VIEW axis ``V``: the
views of a timestep are the episode's cameras at that timestep (LeRobot: the ``video``/``image``
features of ``info.json``, or the stage's ``views`` subset, in that order; single-camera sources:
one view). The view set is part of the stage's fingerprint and is listed in the manifest's
provenance (``spatial.views``), so view ``v`` of every row is the same camera.

Provider ``mapanything`` (facebookresearch/map-anything ``model.infer``; all V views of one
timestep in one multi-view reconstruction). World frame: MapAnything's output frame, nominally
the camera of view 0 *of that timestep* (each timestep is its own reconstruction; view 0's pose
is predicted, so it is only approximately the identity), OpenCV axes (x right, y down,
z forward), metric (``metric_scaling_factor`` already applied by MapAnything).

    pts3d [V,h,w,3]       world points, fp16
    depth_z [V,h,w]       z-depth in each view's camera, fp16
    conf [V,h,w]          MapAnything's confidence, fp16 (clipped to the fp16 range)
    mask [V,h,w]          MapAnything's combined validity mask (non-ambiguous, edges), bool
    intrinsics [V,3,3]    pinhole intrinsics in model-input pixels (``H x W`` = ``image_size``)
    camera_poses [V,4,4]  OpenCV cam2world (world <- camera), float32
    metric_scaling_factor []  the scale MapAnything applied to this timestep
    features [V,G,G,C]    optional: the multi-view transformer's final per-view features
                          (1/14 resolution), average-pooled to ``feature_grid`` x ``feature_grid``, fp16

Maps hold every ``stride``-th pixel of the model input: map pixel (i, j) is input pixel
(i*stride, j*stride), so ``intrinsics`` stay those of the full input.

Provider ``llava3d`` (LLaVA-3D's "3D patches" before its trainable parts):

    patch_features [V,P,P,D]  CLIP vision tower, hidden state of layer ``select_layer`` (-2),
                              CLS dropped: 24x24x1024 for CLIP ViT-L/14-336, fp16
    patch_xyz [V,P,P,3]       world xyz of each patch by LLaVA-3D's rule
                              (``llava/model/multimodal_encoder/unproject.py`` and
                              ``video_processor.py``): the depth map resized (nearest) to the CLIP
                              crop geometry, unprojected at integer pixel coordinates with the
                              correspondingly scaled intrinsics and the cam2world pose, then
                              nearest-sampled to the P x P grid (patch (i, j) takes crop pixel
                              (floor(i*S/P), floor(j*S/P))); float32
    patch_valid [V,P,P]       the sampled depth was positive and finite (xyz is 0 where not)

The learned 3-D position embedding and the 0.2 m voxel pooling are the trainable head's, not the
cache's. Both providers also store ``frame_index`` (source frame index of the timestep).
"""
from ..spec import ArraySpec, CacheSpec

_FRAME = ArraySpec("frame_index", "int64", (), "source frame index of the timestep")

_MAPANYTHING = (
    _FRAME,
    ArraySpec("pts3d", "float16", ("V", "h", "w", 3), "world points (world = view 0's camera of the timestep), metric"),
    ArraySpec("depth_z", "float16", ("V", "h", "w"), "z-depth in the view's camera"),
    ArraySpec("conf", "float16", ("V", "h", "w"), "MapAnything confidence"),
    ArraySpec("mask", "bool", ("V", "h", "w"), "MapAnything validity mask"),
    ArraySpec("intrinsics", "float32", ("V", 3, 3), "pinhole intrinsics in model-input pixels"),
    ArraySpec("camera_poses", "float32", ("V", 4, 4), "OpenCV cam2world"),
    ArraySpec("metric_scaling_factor", "float32", (), "metric scale MapAnything applied"),
)

SPEC = CacheSpec(name="spatial", version=1, row="frame", arrays=_MAPANYTHING, doc=__doc__)

SPEC_WITH_FEATURES = CacheSpec(
    name="spatial",
    version=1,
    row="frame",
    arrays=_MAPANYTHING + (ArraySpec("features", "float16", ("V", "G", "G", "C"), "pooled multi-view transformer features"),),
    doc=__doc__,
)

SPEC_LLAVA3D = CacheSpec(
    name="spatial",
    version=1,
    row="frame",
    arrays=(
        _FRAME,
        ArraySpec("patch_features", "float16", ("V", "P", "P", "D"), "CLIP patch features, layer select_layer, no CLS"),
        ArraySpec("patch_xyz", "float32", ("V", "P", "P", 3), "world xyz of each patch (LLaVA-3D rule)"),
        ArraySpec("patch_valid", "bool", ("V", "P", "P"), "sampled depth positive and finite"),
    ),
    doc=__doc__,
)
