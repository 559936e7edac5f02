"""DPSNet for Automatic Check-Out: the model (:func:`dpsnet_model`), its training (:mod:`dpsnet.training`), its
inference (:mod:`dpsnet.inference`), their configuration (:mod:`dpsnet.config`) and the ``dpsnet`` command line."""
from .model import DPSNet, dpsnet_model

__all__ = ["Counter", "DPSNet", "dpsnet_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``dpsnet.Counter`` (:class:`dpsnet.deploy.Counter`), imported on first use."""
    if name == "Counter":
        from .deploy import Counter

        return Counter
    raise AttributeError(f"module 'dpsnet' has no attribute {name!r}")
