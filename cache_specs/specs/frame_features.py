"""``frame_features``: a frozen image encoder's features of an episode's sampled frames (one row per frame).

Per frame: the CLS token and the patch tokens (register tokens dropped) average-pooled to a G x G
grid, fp16. With ``store_patch_tokens`` the full patch grid is kept too (large!).
Episode e's frames are rows ``start[e] : start[e] + length[e]`` (see ``CacheReader.offsets``).
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="frame_features",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("cls", "float16", ("D",), "the CLS token of the read layer (after the final norm for layer \"last\"); towers without one (SigLIP) store the patch mean"),
        ArraySpec("patch_pooled", "float16", ("G", "G", "D"), "patch tokens average-pooled to a G x G grid"),
        ArraySpec("frame_index", "int64", (), "source frame index, -1 for padding rows"),
        ArraySpec("padded", "bool", (), "True for black padding frames"),
    ),
    doc=__doc__,
)

SPEC_WITH_PATCHES = CacheSpec(
    name="frame_features",
    version=1,
    row="frame",
    arrays=SPEC.arrays + (ArraySpec("patch_tokens", "float16", ("Hp", "Wp", "D"), "full patch-token grid"),),
    doc=__doc__,
)
