"""kd-loop: iterative knowledge distillation for checkout images, with label-free pseudo-label selection.

Each round the teacher predicts the unlabeled pool, a selector keeps the pseudo-labels it can trust without
any ground truth (detections agreeing with the counting view; uncertain boxes become ignore regions), and a
student is trained on source data plus the pseudo-labelled images; the student is the next teacher. Any model
plugs in through the :class:`~kd_loop.protocols.Learner` protocol, named by import path in the config.
"""

from kd_loop.config import ConfigError, LoopConfig, load_config
from kd_loop.loop import run_loop
from kd_loop.protocols import Learner, Prediction, TrainingSet
from kd_loop.selection import SelectionPolicy, select_pseudo_labels

__all__ = [
    "ConfigError",
    "Learner",
    "LoopConfig",
    "Prediction",
    "SelectionPolicy",
    "TrainingSet",
    "load_config",
    "run_loop",
    "select_pseudo_labels",
]
__version__ = "0.1.0"
