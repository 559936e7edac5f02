"""Soft distillation: the loss against an explicit KL on the teacher's logits, image flags, engine and adapter."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dpsnet.checkpoint import model_from_checkpoint
from dpsnet.config import make_config
from dpsnet.data import InstancesDataset, collate
from dpsnet.kd import Learner
from dpsnet.training import train
from dpsnet.training.distill import SoftDistiller

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train(make_config("cpu-small", tiny_overrides(world, **{"train.threads": 1})), out, echo=False)
    return out / "last.pt"


def explicit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row T^2 * KL(softmax(t / T) || softmax(s / T)), written out."""
    p = torch.softmax(teacher / temperature, 1)
    return temperature**2 * (p * (torch.log_softmax(teacher / temperature, 1)
                                  - torch.log_softmax(student / temperature, 1))).sum(1)


@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True)])
def test_loss_is_the_kl_to_the_teacher_on_flagged_images(world, teacher, flags):
    torch.manual_seed(0)
    student, categories = model_from_checkpoint(teacher)
    for p in student.roi_heads.box_predictor.parameters():  # a student that differs from its teacher
        p.data.add_(torch.randn_like(p) * 0.3)
    distiller = SoftDistiller(teacher, categories, weight=2.0, temperature=3.0)
    student.train()
    images, targets = collate([InstancesDataset(world / "instances.json", world / "images", categories)[i]
                               for i in range(2)])
    _, box_head = student(images, targets, return_box_logits=True)
    loss = distiller.loss(box_head, list(flags))
    s_logits = box_head.class_logits.detach()
    proposals = box_head.proposals
    # The teacher's logits by hand: its own modules, the student's batch and sampled proposals.
    t_model = distiller.teacher
    with torch.no_grad():
        feats = t_model.backbone(box_head.images.tensors)
        pooled = t_model.roi_heads.box_roi_pool(feats, proposals, box_head.images.image_sizes)
        t_logits = t_model.roi_heads.box_predictor(t_model.roi_heads.box_head(pooled))[0]
    rows = explicit_kd(s_logits, t_logits, 3.0)
    chosen = torch.cat([rows[sum(len(p) for p in proposals[:i]):][:len(proposals[i])] for i in range(2) if flags[i]])
    assert loss.item() == pytest.approx(2.0 * chosen.mean().item(), rel=1e-4)
    loss.backward()
    assert student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert distiller.loss(box_head, [False, False]).item() == 0


def test_identical_student_and_teacher_have_zero_loss(world, teacher):
    student, categories = model_from_checkpoint(teacher)
    distiller = SoftDistiller(teacher, categories)
    student.train()
    for m in student.modules():  # batch norm in eval mode: the student computes what the teacher does
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    images, targets = collate([InstancesDataset(world / "instances.json", world / "images", categories)[i]
                               for i in range(2)])
    _, box_head = student(images, targets, return_box_logits=True)
    assert abs(distiller.loss(box_head, [True, True]).item()) < 1e-5


def test_engine_trains_with_soft_distillation_on_flagged_sets(world, teacher, tmp_path):
    config = make_config("cpu-small", tiny_overrides(world, **{
        "data.train_instances": [str(world / "instances.json")] * 2, "data.train_images": [str(world / "images")] * 2,
        "data.train_distill": [False, True], "train.init_checkpoint": str(teacher), "train.distill_weight": 1.0,
        "train.threads": 1}))
    train(config, tmp_path, echo=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("loss_distill" in r for r in records if r["type"] == "train")
    with pytest.raises(ValueError, match=r"data\.train_distill"):
        train({**config, "data.train_distill": [True, False, True]}, tmp_path / "bad", echo=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        train({**config, "train.init_checkpoint": ""}, tmp_path / "bad", echo=False)
    with pytest.raises(FileNotFoundError, match="distill_checkpoint"):
        train({**config, "train.distill_checkpoint": str(tmp_path / "none.pt")}, tmp_path / "bad", echo=False)


@dataclass(frozen=True)
class Spec:
    instances: Path
    images: Path
    weight: float = 1.0
    teacher: Path | None = None


def test_learner_distils_from_the_pseudo_labelled_sets_teacher(world, teacher):
    sets = [Spec(world / "pseudo.json", world / "images", teacher=teacher), Spec(world / "instances.json", world)]
    on = Learner("cpu-small", soft_distillation=True, distill_weight=0.5, distill_temperature=4.0)
    assert on._distillation(sets) == {"train.distill_weight": 0.5, "train.distill_temperature": 4.0,
                                      "train.distill_checkpoint": str(teacher), "data.train_distill": [True, False]}
    assert on._distillation([sets[1]]) == {}  # no pseudo-labelled set: nothing to distil
    assert Learner("cpu-small")._distillation(sets) == {}  # switched off
    with pytest.raises(ValueError, match="one teacher"):
        on._distillation([sets[0], Spec(world / "p2.json", world, teacher=world / "other.pt")])
    with pytest.raises(ValueError, match="distill_weight"):
        Learner("cpu-small", soft_distillation=True, distill_weight=0.0)
