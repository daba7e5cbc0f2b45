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

LLaVA-3D's 3-D patches are the ``spatial_llava3d`` cache (``specs/spatial_llava3d.py``), built from
this one. Every row also stores ``frame_index`` (source frame index of the timestep),
``view_index`` [V] (each view's position in the source's camera list, 0 for single-camera
sources: what a consumer matches its cameras against) and ``stride``.
"""
from ..spec import ArraySpec, CacheSpec

_MAPANYTHING = (
    ArraySpec("frame_index", "int64", (), "source frame index of the timestep"),
    ArraySpec("view_index", "int64", ("V",), "each view's position in the source's camera list"),
    ArraySpec("stride", "int64", (), "map pixel (i, j) is model-input pixel (i*stride, j*stride)"),
    ArraySpec("pts3d", "float16", ("V", "h", "w", 3), "world points (world = view 0's camera of the timestep), metric"),
    ArraySpec("depth_z", "float16", ("V", "h", "w"), "z-depth in the view's camera"),
    ArraySpec("conf", "float16", ("V", "h", "w"), "MapAnything confidence"),
    ArraySpec("mask", "bool", ("V", "h", "w"), "MapAnything validity mask"),
    ArraySpec("intrinsics", "float32", ("V", 3, 3), "pinhole intrinsics in model-input pixels"),
    ArraySpec("camera_poses", "float32", ("V", 4, 4), "OpenCV cam2world"),
    ArraySpec("metric_scaling_factor", "float32", (), "metric scale MapAnything applied"),
)

SPEC = CacheSpec(name="spatial", version=2, row="frame", arrays=_MAPANYTHING, doc=__doc__)

SPEC_WITH_FEATURES = CacheSpec(
    name="spatial",
    version=2,
    row="frame",
    arrays=_MAPANYTHING + (ArraySpec("features", "float16", ("V", "G", "G", "C"), "pooled multi-view transformer features"),),
    doc=__doc__,
)
