"""The tests' VGGT stand-in: navcache ships it (``pipeline/demo/vggt_standin.py``, the demo's tiny VGGT);
re-exported here so ``tests.standins.vggt_standin:StandInVGGT`` keeps naming it."""
from navcache.pipeline.demo.vggt_standin import (  # noqa: F401
    CONFIG_FILE, StandInAggregator, StandInCameraHead, StandInDPTHead, StandInVGGT, make_standin,
)
