"""The timing engine: the one place that turns plans into modeled time.

- `durations.TimeModel`: how long an op takes (the only caller of `helix_mpi.costmodel`);
- `schedule`: stream clocks, op placement, group starts, closed forms of the attention chain;
- `fast`: the same rules vectorised over batches (sweep) and ragged batches (serving).

The emulator, `helix-mpi model`, the sweep, serving and replay all time through this package, so
"emulated equals analytic" holds by construction.
"""
from .durations import TimeModel
from .fast import BatchLayerTime, PipelineSends, RaggedLayerTime, StepKV, StepTimer, TailTime, layer_kinds
from .schedule import GroupMax, LayerSchedule, StreamClocks, place_layer

__all__ = ["TimeModel", "BatchLayerTime", "RaggedLayerTime", "PipelineSends", "StepKV", "StepTimer", "TailTime", "layer_kinds",
           "GroupMax", "LayerSchedule", "StreamClocks", "place_layer"]
