"""DPSNet for Automatic Check-Out: the model (:func:`dpsnet_model`), its training (:mod:`dpsnet.training`), its
inference (:mod:`dpsnet.inference`), their configuration (:mod:`dpsnet.config`) and the ``dpsnet`` command line."""
from .model import DPSNet, dpsnet_model

__all__ = ["DPSNet", "dpsnet_model"]
__version__ = "0.1.0"
