"""Soft distillation: the student's box classifier also matches a frozen teacher's class distributions.

On the images of the chosen datasets (the pseudo-labelled ones in a kd-loop round), every proposal the student's
box head samples is shown to the teacher too (same resized batch, same boxes, the teacher's own backbone and box
head), and ``aco_kernels.kd_loss`` adds ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` averaged over
those proposals. Hard pseudo-labels say what the teacher was sure of; the soft targets also carry what it was
unsure between (look-alike products), which the student would otherwise learn as plain background or one class.
The student's forward returns what this needs (``model(images, targets, return_box_logits=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

import aco_kernels

from ..checkpoint import model_from_checkpoint
from ..data import CategoryMap
from ..detection import BoxHeadOutput


class SoftDistiller:
    """A frozen teacher and the loss that pulls the student's box-head class distributions towards it.

    Args:
        checkpoint: the teacher's DPSNet checkpoint (same categories as the student).
        categories: the student's categories (checked against the teacher's).
        weight: the loss weight. temperature: the softmax temperature ``T`` (``T^2`` keeps gradients comparable).
        device: where the teacher runs (the student's device).
    """

    def __init__(self, checkpoint: str | Path, categories: CategoryMap, *, weight: float = 1.0,
                 temperature: float = 2.0, device: str | torch.device = "cpu"):
        if weight <= 0 or temperature <= 0:
            raise ValueError(f"train.distill_weight and train.distill_temperature should be > 0, "
                             f"got {weight} and {temperature}")
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"train.distill_checkpoint: teacher checkpoint not found: {path}")
        self.teacher, teacher_categories = model_from_checkpoint(path, device)
        if teacher_categories.category_ids != categories.category_ids:
            raise ValueError(f"train.distill_checkpoint {path}: the teacher's categories differ from the training "
                             "data's; distil from a teacher trained on the same category list")
        self.teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    @torch.no_grad()
    def teacher_logits(self, student: BoxHeadOutput) -> Tensor:
        """Teacher class logits Tensor[N, num_classes] for the proposals the student sampled (same batch)."""
        batch, heads = student.images, self.teacher.roi_heads
        features = self.teacher.backbone(batch.tensors)
        pooled = heads.box_roi_pool(features, student.proposals, batch.image_sizes)
        return heads.box_predictor(heads.box_head(pooled))[0].float()

    def loss(self, student: BoxHeadOutput, distill_images: Sequence[bool] | Tensor) -> Tensor:
        """The weighted loss over the proposals of the images flagged in ``distill_images`` (one flag per image
        of the batch); 0 (still in the graph) when none is flagged."""
        logits, proposals = student.class_logits, student.proposals
        flags = torch.as_tensor(distill_images, dtype=torch.float32, device=logits.device)
        rows = torch.repeat_interleave(flags, torch.tensor([len(p) for p in proposals], device=logits.device))
        if float(rows.sum()) == 0:
            return logits.sum() * 0.0
        teacher = self.teacher_logits(student)
        total = aco_kernels.kd_loss(logits.float(), teacher, temperature=self.temperature, weights=rows,
                                    reduction="sum")
        return self.weight * total / rows.sum()
