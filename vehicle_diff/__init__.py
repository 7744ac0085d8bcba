"""vehicle-diff: synthetic vehicle re-identification data from a fine-tuned text-to-image diffusion model."""

import os
from importlib.metadata import PackageNotFoundError, version

# The environment as this process was started, before library imports changed it (ultralytics sets
# OMP_NUM_THREADS=1 when unset, OpenCV prepends its libraries to LD_LIBRARY_PATH ...). `run` starts each stage
# with it, so a stage run by `run` computes exactly as it would alone (thread counts and BLAS builds change float
# results in the last bits).
LAUNCH_ENVIRONMENT = dict(os.environ)
# settings a caller may change after start-up on purpose (model locations, hub switches): taken as they are now
CONFIGURATION_PREFIXES = ("VEHICLE_DIFF_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "YOLO_", "CUDA_VISIBLE_DEVICES",
                          "TORCH_HOME")  # fmt: skip


def launch_environment() -> dict[str, str]:
    """The start-up environment with the current configuration variables: what a stage started by hand gets."""
    configuration = {k: v for k, v in os.environ.items() if k.startswith(CONFIGURATION_PREFIXES)}
    started = {k: v for k, v in LAUNCH_ENVIRONMENT.items() if not k.startswith(CONFIGURATION_PREFIXES)}
    return {**started, **configuration}


try:
    __version__ = version("vehicle-diff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
