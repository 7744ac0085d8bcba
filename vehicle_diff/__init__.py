"""vehicle-diff: synthetic vehicle re-identification data from a fine-tuned text-to-image diffusion model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vehicle-diff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
