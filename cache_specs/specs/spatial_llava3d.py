"""``spatial_llava3d``: LLaVA-3D's "3D patches" of every sampled timestep before its trainable parts
(one row per frame, a leading VIEW axis ``V`` as in ``spatial``: the stage's cameras, listed in
the manifest's provenance ``spatial_llava3d.views``).

    frame_index []            source frame index of the timestep
    patch_features [V,P,P,D]  CLIP vision tower, hidden state of layer ``select_layer`` (-2),
                              CLS dropped: 24x24x1024 for CLIP ViT-L/14-336, fp16
    patch_xyz [V,P,P,3]       world xyz of each patch by LLaVA-3D's rule
                              (``llava/model/multimodal_encoder/unproject.py`` and
                              ``video_processor.py``): the depth map resized (PIL nearest) to short
                              side S (the CLIP crop), centre-cropped to S x S, unprojected at integer
                              pixel coordinates with the correspondingly scaled intrinsics and the
                              cam2world pose, then nearest-sampled to the P x P grid (patch (i, j)
                              takes crop pixel (floor(i*S/P), floor(j*S/P))); float32
    patch_valid [V,P,P]       the sampled depth was positive and finite (and, from MapAnything,
                              inside its mask); xyz is 0 where not

Depth + pose come from (``xyz_from``):
    mapanything  the ``spatial`` cache of the same dataset and split (this cache is downstream of
                 it: changing that cache makes this one stale). The depth map is the cached one:
                 MapAnything's input frame at the ``spatial`` stride, fp16, with the cached
                 intrinsics divided by the stride; world = that timestep's MapAnything frame
    gt           the source's ground truth (the videos source's ``.gt.npz``; one view): its depth
                 at the camera's resolution; world = the ground truth's world

The learned 3-D position embedding and the 0.2 m voxel pooling are the trainable head's.
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="spatial_llava3d",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("frame_index", "int64", (), "source frame index of the timestep"),
        ArraySpec("patch_features", "float16", ("V", "P", "P", "D"), "CLIP patch features, layer select_layer, no CLS"),
        ArraySpec("patch_xyz", "float32", ("V", "P", "P", 3), "world xyz of each patch (LLaVA-3D rule)"),
        ArraySpec("patch_valid", "bool", ("V", "P", "P"), "sampled depth positive, finite (and in MapAnything's mask)"),
    ),
    doc=__doc__,
)
