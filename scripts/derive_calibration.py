#!/usr/bin/env python
"""Regenerate topologies/calibration/ from NVIDIA AIConfigurator's measured tables.

The derivation lives in helix_mpi.calibration.derive (so `helix-mpi calibrate` derives a user's
own kernel CSVs the same way); see its docstring for what is derived and how. Prints a line per
file and a final JSON line {"files", "max_bytes", "seconds"}.

    python scripts/derive_calibration.py [--source ../shared/data/calibration] [--out topologies/calibration]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from helix_mpi.calibration.derive import main  # noqa: E402

if __name__ == "__main__":
    main()
