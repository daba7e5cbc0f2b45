"""``robot_meta``: a robot dataset's per-frame table (one row per frame of the episode, in order).

    state         float32 [S]  the ``observation.state`` feature, raw
    action        float32 [A]  the ``action`` feature, raw (unpadded dims)
    timestamp     float64      seconds from the episode's start (the table's ``timestamp``)
    episode_index int64        the dataset's episode index
    frame_index   int64        0..length-1
    task_index    int64        index into the dataset's task table (the text is in each episode's
                               part.json entry, ``meta.task``)

Action chunks are not stored H times: ``cache_specs.action_chunks`` builds them when read.
"""
from ..spec import ArraySpec, CacheSpec

SPEC = CacheSpec(
    name="robot_meta",
    version=1,
    row="frame",
    arrays=(
        ArraySpec("state", "float32", ("S",), "observation.state, raw"),
        ArraySpec("action", "float32", ("A",), "action, raw"),
        ArraySpec("timestamp", "float64", (), "seconds from the episode start"),
        ArraySpec("episode_index", "int64", (), "dataset episode index"),
        ArraySpec("frame_index", "int64", (), "frame within the episode"),
        ArraySpec("task_index", "int64", (), "index into the dataset's task table"),
    ),
    doc=__doc__,
)
