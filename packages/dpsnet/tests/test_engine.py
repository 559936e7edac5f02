"""Detector training: schedules, a short training run, logs, results.csv and curves, checkpoints (weights_only),
resume, determinism, validation."""

import csv
import json
import math

import cv2
import pytest
import torch

from dpsnet.checkpoint import model_from_checkpoint
from dpsnet.config import make_config
from dpsnet.device import native_bf16
from dpsnet.training import build_optimizer, lr_factor, train

from .conftest import tiny_overrides


def test_lr_factor_warmup_step_and_cosine():
    kw = {"max_steps": 100, "warmup_steps": 10, "warmup_factor": 0.1}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(5, **kw) == pytest.approx(0.55)
    assert lr_factor(10, **kw, lr_steps=(50, 80)) == 1.0
    assert lr_factor(50, **kw, lr_steps=(50, 80)) == pytest.approx(0.1)
    assert lr_factor(99, **kw, lr_steps=(50, 80)) == pytest.approx(0.01)
    assert lr_factor(10, **kw, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(55, **kw, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, **kw, schedule="cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, max_steps=1, schedule="poly")


def test_optimizer_choices():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = build_optimizer(net, name="adamw", lr=0.001)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(net, name="lamb", lr=0.001)
    with pytest.raises(ValueError, match="optimizer"):
        make_config(None, {"train.optimizer": "lamb"})


def test_train_writes_logs_and_loadable_checkpoints(world, tmp_path):
    config = make_config("cpu-small", tiny_overrides(world, **{
        "data.val_instances": str(world / "instances.json"), "data.val_images": str(world / "images"),
        "train.max_steps": 3, "train.eval_every": 2, "train.time_limit_min": 0.0}))
    summary = train(config, tmp_path, echo=False)
    assert summary["steps"] == 3 and set(summary["eval"]) == {"map50", "cacc", "acd", "count_acc"}
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert {"lr", "loss", "loss_density", "loss_count", "loss_classifier", "images_per_s", "eta_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0
    assert [r["step"] for r in records if r["type"] == "eval"] == [2, 3]
    text = (tmp_path / "log.txt").read_text()
    assert "img/s" in text and "eta " in text and "train: step 3/3" in text
    # results.csv: one row per log step with the step, the lr, each loss and images/s; the curves as a PNG
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for row, record in zip(rows, steps, strict=True):
        assert {"lr", "loss", "loss_density", "loss_count", "loss_classifier", "images_per_s"} <= set(row)
        assert float(row["lr"]) == pytest.approx(record["lr"]) and float(row["loss"]) == pytest.approx(record["loss"])
    picture = cv2.imread(str(tmp_path / "results.png"))
    assert picture is not None and picture.shape[0] >= 600  # the losses and, below, the validation metrics
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert ckpt["categories"]["category_ids"] == [3, 5, 9]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    model, categories = model_from_checkpoint(tmp_path / "last.pt")
    assert not model.training and categories.count_names == ["object"]  # the preset counts objects
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_resume_continues_exactly(world, tmp_path):
    """2 steps + resume to 4 steps gives the same weights as 4 steps straight (epochs of 3 batches)."""
    base = tiny_overrides(world, **{"train.lr_steps": [3], "train.checkpoint_every": 2, "data.epoch_size": 6,
                                    "data.brightness": 0.2})
    train(make_config(None, {**base, "train.max_steps": 4}), tmp_path / "straight", echo=False)
    train(make_config(None, {**base, "train.max_steps": 2}), tmp_path / "resumed", echo=False)
    train(make_config(None, {**base, "train.max_steps": 4}), tmp_path / "resumed", resume=True, echo=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (True, True), (False, False)])
def test_native_bf16_on_cpu_needs_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert native_bf16(torch.device("cpu")) == (amx or avx512_bf16)


def test_native_bf16_on_an_older_torch_is_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not native_bf16(torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_train_amp_follows_the_hardware_and_the_key(world, tmp_path, monkeypatch, native):
    """``train.amp`` trains under bfloat16 autocast where the CPU has it natively (forced here either way),
    with finite float32 losses; ``train.amp=false`` always trains in float32."""
    monkeypatch.setattr("dpsnet.training.detector.native_bf16", lambda device: native)
    for amp in (True, False):
        out = tmp_path / str(amp)
        train(make_config(None, tiny_overrides(world, **{"train.max_steps": 2, "train.amp": amp})), out, echo=False)
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert records[0]["type"] == "start"
        assert records[0]["precision"] == ("bfloat16 autocast" if amp and native else "float32")
        assert all(math.isfinite(r["loss"]) for r in records if r["type"] == "train")


def test_training_is_deterministic_given_its_seed(world, tmp_path):
    """The same seed gives the same weights, bit for bit (augmentation included); another seed other weights."""
    base = tiny_overrides(world, **{"train.max_steps": 3, "data.brightness": 0.2, "data.scale_min": 0.8})
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(make_config(None, {**base, "train.seed": seed}), tmp_path / name, echo=False)
    a, b, c = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_without_checkpoint_is_an_error(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"last\.pt"):
        train(make_config(None, tiny_overrides(world)), tmp_path, resume=True, echo=False)


def test_ratio_mixing_of_two_datasets(world, tmp_path):
    config = make_config(None, tiny_overrides(world, **{
        "data.train_instances": [str(world / "instances.json")] * 2,
        "data.train_images": [str(world / "images")] * 2, "data.train_ratios": [3.0, 1.0], "train.max_steps": 1}))
    assert train(config, tmp_path, echo=False)["steps"] == 1
    with pytest.raises(ValueError, match="one image folder per training JSON"):
        train(make_config(None, {**config, "data.train_images": [str(world / "images")]}), tmp_path, echo=False)


def test_counting_only_refinement_trains_the_counter_alone(world, tmp_path):
    """train.trainable=counting from a full run's checkpoint: only counting_view.* changes (batch-norm running
    statistics of the backbone included), the losses are the counting ones, and the result loads as a model."""
    train(make_config("cpu-small", tiny_overrides(world, **{"train.time_limit_min": 0.0})), tmp_path / "full",
          echo=False)
    start = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    config = make_config("cpu-small", tiny_overrides(world, **{
        "train.time_limit_min": 0.0, "train.trainable": "counting", "train.max_steps": 3, "train.lr": 0.05,
        "train.init_checkpoint": str(tmp_path / "full" / "last.pt")}))
    train(config, tmp_path / "count", echo=False)
    end = torch.load(tmp_path / "count" / "last.pt", weights_only=True)["model"]
    changed = {key for key, value in start.items() if not torch.equal(end[key], value)}
    assert changed and all(key.startswith("counting_view.") for key in changed), sorted(changed)
    assert any(key.endswith("running_mean") for key in changed)  # the head's own batch norm does learn
    assert any(key.startswith("counting_view.predictor.") for key in changed)
    records = [json.loads(line) for line in (tmp_path / "count" / "log.jsonl").read_text().splitlines()]
    losses = {k for r in records if r["type"] == "train" for k in r if k.startswith("loss_")}
    assert losses == {"loss_density", "loss_count"}
    model, _ = model_from_checkpoint(tmp_path / "count" / "last.pt")
    assert not model.counting_only and all(p.requires_grad for p in model.parameters())
    start_record = next(r for r in records if r["type"] == "start")
    assert start_record["trainable"] == "counting" and start_record["new_counting_view"] is False

    # A deeper head than the checkpoint's starts fresh on the same frozen rest; a full run refuses the mismatch.
    deeper = {**config, "model.count_convs": 3}
    train(deeper, tmp_path / "deeper", echo=False)
    end = torch.load(tmp_path / "deeper" / "last.pt", weights_only=True)["model"]
    assert "counting_view.convs.6.weight" in end
    for key, value in start.items():
        if not key.startswith("counting_view."):
            torch.testing.assert_close(end[key], value, rtol=0, atol=0, msg=key)
    records = [json.loads(line) for line in (tmp_path / "deeper" / "log.jsonl").read_text().splitlines()]
    assert next(r for r in records if r["type"] == "start")["new_counting_view"] is True
    assert "a new one" in (tmp_path / "deeper" / "log.txt").read_text()
    with pytest.raises(ValueError, match="does not fit"):
        train({**deeper, "train.trainable": "all"}, tmp_path / "full_deeper", echo=False)


def test_counting_only_mode_keeps_the_rest_in_eval():
    from dpsnet import dpsnet_model

    model = dpsnet_model(4, count_class_of_label=[0, 0, 0, 0], num_count_classes=1, small_channels=[8, 16, 16, 32],
                         fpn_channels=16, min_size=[64], max_size=64, count_channels=8)
    model.train_counting_only()
    model.train()
    assert model.counting_view.training and not model.backbone.training and not model.rpn.training
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.counting_view.named_parameters(prefix="counting_view")}
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images, targets)
    assert set(losses) == {"loss_density", "loss_count"}
    sum(losses.values()).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("counting_view."))
    model.train_counting_only(False)
    model.train()
    assert model.backbone.training and all(p.requires_grad for p in model.parameters())

    # Parameters frozen before (a ResNet's first stages) stay frozen once the mode is undone.
    frozen = dict(model.named_parameters())["rpn.head.conv.0.0.weight"]
    frozen.requires_grad_(False)
    model.train_counting_only()
    model.train_counting_only()  # twice: still undone to the state before the first call
    model.train_counting_only(False)
    assert not frozen.requires_grad
    assert sum(not p.requires_grad for p in model.parameters()) == 1


@pytest.mark.parametrize(("overrides", "match"), [
    ({"train.trainable": "box_head"}, "train.trainable"),
    ({"train.trainable": "counting", "train.distill_weight": 0.5}, "distill_weight"),
])
def test_trainable_errors(world, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train(make_config("cpu-small", tiny_overrides(world, **overrides)), tmp_path, echo=False)
    assert not (tmp_path / "last.pt").exists()


def test_constant_schedule_keeps_the_peak_after_warmup():
    kw = {"max_steps": 100, "warmup_steps": 10, "warmup_factor": 0.1, "schedule": "constant", "lr_steps": (50,)}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert [lr_factor(s, **kw) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_the_schedule_per_image_does_not_depend_on_the_processes(batch_size):
    """train.reference_batch: lr per image and images per lr phase are those of the reference batch."""
    from dpsnet.config import scale_to_batch

    config = make_config("rpc-paper", {"train.batch_size": batch_size})
    assert config["train.reference_batch"] == 8  # the released IMS_PER_BATCH (its SRC config, line 37)
    for processes in (1, 2, 4, 8):
        total = batch_size * processes
        scaled = scale_to_batch(config, processes)
        assert scaled["train.lr"] / total == pytest.approx(0.01 / 8)
        assert scaled["train.max_steps"] * total == pytest.approx(180000 * 8, rel=1e-4)
        assert [s * total for s in scaled["train.lr_steps"]] == pytest.approx([120000 * 8, 160000 * 8], rel=1e-4)
        assert scaled["train.warmup_steps"] * total == pytest.approx(500 * 8, rel=0.01)
    assert scale_to_batch(make_config("cpu-small"), 4) == {}  # 0: the keys as given
    assert scale_to_batch({**config, "train.lr_steps": [0], "train.warmup_steps": 0}, 1)["train.lr_steps"] == [0]


def test_train_scales_the_schedule_to_its_batch_and_logs_it(world, tmp_path):
    config = make_config(None, tiny_overrides(world, **{"train.reference_batch": 8, "train.max_steps": 1,
                                                        "train.lr_steps": [1], "train.warmup_steps": 0,
                                                        "train.lr": 0.04}))
    summary = train(config, tmp_path, echo=False)
    assert summary["steps"] == 4  # 1 step of 8 images = 4 steps of 2
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    scaling = next(r for r in records if r["type"] == "batch_scaling")
    assert scaling["total_batch"] == 2 and scaling["train.max_steps"] == 4 and scaling["train.lr"] == 0.01
    assert [r["lr"] for r in records if r["type"] == "train"] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    assert "given for 8 (linear rule): lr 0.04 -> 0.01, steps 1 -> 4" in (tmp_path / "log.txt").read_text()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["config"]["train.max_steps"] == 1  # saved as given: a resume scales it again, not twice
    ckpt["rng"] = ckpt["rng"] * 2  # as if two processes had trained it
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="trained by 2 process"):
        train(config, tmp_path, resume=True, echo=False)
