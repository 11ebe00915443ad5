"""LCPDN MONAI bundle: text-guided diffusion segmentation of 2D medical images.

The configs in ``configs/`` import this package (``"$import bundle"``); it holds only what the config
language cannot express: the network modules, data checks, and small engine helpers.
"""

from .errors import BundleInputError, install_excepthook

__version__ = "0.1.0"

install_excepthook()

__all__ = ["BundleInputError", "__version__"]
