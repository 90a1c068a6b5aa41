"""Pure compute kernels of one emulated GPU (no MPI import here).

The wrappers (attention, layers, bf16) check and prepare NumPy arrays and call compiled entry
points (compiled.kernel): precompiled machine code (aot.py) or Numba's JIT (jit/)."""
from .attention import TILE, combine, partial_attention
from .bf16 import from_bf16, is_bf16, to_bf16
from .layers import apply_rope, linear, rms_norm, rope_inv_freq, swiglu

__all__ = ["partial_attention", "combine", "rms_norm", "apply_rope", "rope_inv_freq", "swiglu",
           "linear", "TILE", "to_bf16", "from_bf16", "is_bf16"]
