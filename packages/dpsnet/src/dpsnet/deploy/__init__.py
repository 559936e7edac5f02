"""Deployment: the model bundle (one file with everything ``dpsnet predict`` used), the :class:`Counter` that turns
it into receipts, and the ONNX export with its onnxruntime runner (``dpsnet.deploy.onnx_export``,
``dpsnet.deploy.onnx_runner``: imported on demand, they need the ``export`` extra). Nothing here imports training.
"""

from .bundle import BUNDLE_FILE, bundle_model, make_bundle, read_bundle, write_bundle
from .counter import Counter, Receipt, half_up, make_receipt

__all__ = ["BUNDLE_FILE", "Counter", "Receipt", "bundle_model", "half_up", "make_bundle", "make_receipt",
           "read_bundle", "write_bundle"]
