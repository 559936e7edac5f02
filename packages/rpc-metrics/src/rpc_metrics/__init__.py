"""rpc-metrics: exact, fast evaluation for the Retail Product Checkout (RPC) dataset.

Counting metrics (cAcc, mCIoU, ACD, mCCD) on count matrices, COCO bbox mAP50/mmAP equal to pycocotools,
per-level tables with named threshold protocols, bootstrap intervals over images and paired comparisons of two
models (:mod:`rpc_metrics.bootstrap`, :func:`compare`), a breakdown of count errors (:mod:`rpc_metrics.errors`), and the
toolkit's file formats (:mod:`rpc_metrics.io`).
"""

from rpc_metrics.compare import ComparisonReport, compare
from rpc_metrics.counting import CountingAccumulator, CountingMetrics, counting_metrics
from rpc_metrics.errors import ErrorReport, ErrorRow, analyse_errors
from rpc_metrics.evaluate import EvaluationReport, RowResult, evaluate
from rpc_metrics.io import FormatError

__all__ = [
    "ComparisonReport",
    "CountingAccumulator",
    "CountingMetrics",
    "ErrorReport",
    "ErrorRow",
    "EvaluationReport",
    "FormatError",
    "RowResult",
    "analyse_errors",
    "compare",
    "counting_metrics",
    "evaluate",
]
__version__ = "0.1.0"
