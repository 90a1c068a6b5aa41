"""helix_mpi: an MPI emulator of Helix parallelism for long-context LLM decoding."""

__version__ = "0.1.0"
