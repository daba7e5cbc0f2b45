"""``spatial_llava3d_lm``: the full LLaVA-3D model's last-layer hidden states for every sampled
timestep, conditioned on the episode's task text (one row per frame).

The model sees the timestep's views (the stage's cameras, listed in the manifest's provenance
``spatial_llava3d_lm.views``) as one RGB-D "video": CLIP patches, their world xyz (depth + pose
from ``xyz_from``, as in ``spatial_llava3d``), LLaVA-3D's learned 3-D position embedding and 0.2 m
voxel pooling, projected into the language model, then the prompt with the task text.

    frame_index []       source frame index of the timestep
    task_index []        the dataset's task index of the text used (-1: the stage's fixed ``task``);
                         the text itself is in each episode's part.json entry (``meta.task``)
    hidden [K, D]        last-layer hidden states (after the final norm), cut to the stage's
                         ``token_budget`` K by ``reduce`` ("last": the final K positions, the ones
                         that saw both the scene and the text; "pool": K average-pooled segments
                         of the whole sequence); zero where not ``valid``; fp16
    valid [K]            the position holds a real token (false only when L < K)
    tokens []            L: the sequence length the model ran (before the budget)
    visual_tokens []     N: how many of the L positions were 3-D patch tokens (voxels)
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="spatial_llava3d_lm",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("frame_index", "int64", (), "source frame index of the timestep"),
        ArraySpec("task_index", "int64", (), "task index of the text used (-1: the stage's fixed task)"),
        ArraySpec("hidden", "float16", ("K", "D"), "LLaVA-3D last-layer hidden states, token budget K"),
        ArraySpec("valid", "bool", ("K",), "the position holds a real token"),
        ArraySpec("tokens", "int64", (), "sequence length L before the budget"),
        ArraySpec("visual_tokens", "int64", (), "3-D patch (voxel) tokens among the L"),
    ),
    doc=__doc__,
)
