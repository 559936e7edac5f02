"""Training: the one loop (:mod:`.loop`) and what runs through it: the detector (:func:`train`), the backbone
pretraining on product crops (:func:`pretrain_backbone`) and its pair specialists."""

from .detector import init_weights, train, validate
from .loop import LoopOptions, run_loop
from .pretrain import crop_autocast, pretrain_backbone
from .schedule import build_optimizer, build_scheduler, lr_factor
from .specialists import confusable_pairs, train_specialist

__all__ = ["LoopOptions", "build_optimizer", "build_scheduler", "confusable_pairs", "crop_autocast", "init_weights",
           "lr_factor", "pretrain_backbone", "run_loop", "train", "train_specialist", "validate"]
