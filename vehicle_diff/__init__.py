"""vehicle-diff: synthetic vehicle re-identification data from a fine-tuned text-to-image diffusion model."""

import os
from importlib.metadata import PackageNotFoundError, version

# Thread settings as this process was started, before any library import changes them (ultralytics sets
# OMP_NUM_THREADS=1 when it is unset): `run` starts each stage with these, so a stage run by `run` computes
# with the threads it would have alone (thread counts change float results in the last bits).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_MAX_THREADS")
LAUNCH_THREAD_SETTINGS = {name: os.environ.get(name) for name in THREAD_VARIABLES}

try:
    __version__ = version("vehicle-diff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
