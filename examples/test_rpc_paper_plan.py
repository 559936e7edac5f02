"""`rpc_paper.py --plan`: the released DPSNet's schedule, per image, whatever the number of training processes.

Every constant below is read from the released code, jianzhnie/DPSNet @ d327140 (paths under its dpsnet/ folder):
SRC = configs/e2e_faster_rcnn_R_101_FPN_1x_rpc_syn_render_density_map.yaml (the source model),
KD = configs/e2e_faster_rcnn_R_101_FPN_1x_rpc_syn_render_cross_finetune.yaml (the distillation rounds),
IS = configs/e2e_faster_rcnn_R_101_FPN_1x_rpc_instance_select.yaml (the final instance-level stage).
"""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

EXAMPLES = Path(__file__).parent

BATCH = 8  # IMS_PER_BATCH, all GPUs together (maskrcnn_benchmark/data/build.py:125-130): SRC:37, KD:40, IS:35
SRC_LR = 0.01  # SRC:33 BASE_LR
SRC_STEPS = 180_000  # SRC:36 MAX_ITER
SRC_DROPS = (120_000, 160_000)  # SRC:35 STEPS
WARMUP, WARMUP_FACTOR = 500, 1 / 3  # maskrcnn_benchmark/config/defaults.py:395 WARMUP_ITERS, :394 WARMUP_FACTOR
KD_ROUNDS, KD_STEPS = 14, 10_000  # KD:37 CROSS_TRAIN_STEPS, KD:39 ITER_PER_STEP
# KD:33 BASE_LR 0.001 and KD:35 STEPS (70000, 100000, 120000) of one scheduler for the whole distillation
# (tools/train_net.py:35-36, engine/trainer.py:260): 7 rounds at 1e-3, 3 at 1e-4, 2 at 1e-5, 2 at 1e-6.
KD_LRS = [1e-3] * 7 + [1e-4] * 3 + [1e-5] * 2 + [1e-6] * 2
# Round r trains on the labels made after round r - 1 (engine/trainer.py:330) at [0.8, 0.85, 0.9, 0.95]
# [bisect_right([5, 8, 9], r - 2)] (engine/trainer.py:253-254); round 1 on the source model's, made at 0.95
# (tools/train_net.py:114, the file KD:44 reads).
THRESHOLDS = [0.95] + [0.8] * 5 + [0.85] * 3 + [0.9] + [0.95] * 4
SOURCE_IMAGES = 100_000  # KD:38 CROSS_TRAIN_DATA_RATIO -100000: a fresh random subset a round (engine/trainer.py:228-235)
FINAL_THRESHOLD = 0.95  # maskrcnn_benchmark/data/datasets/rpc.py:220 (labels: score > 0.95, rpc.py:268)
FINAL_IGNORE = 0.05  # every lower detection (the test score threshold, defaults.py:186) is painted gray: rpc.py:273-277
FINAL_LR, FINAL_STEPS, FINAL_DROPS, FINAL_WARMUP = 0.001, 10_000, (2_500, 5_000, 7_500), 0  # IS:31, 34, 33, 36
COUNT_CLASSES = "object"  # defaults.py:273 DENSITY_HEAD.NUM_CLASSES = 1 (neither SRC nor KD sets it)
SIGMA_SCALE = 5 / 24  # maskrcnn_benchmark/utils/density.py:60-61: max(min_sigma, min(w, h) / 2 * 5 / 12)
COUNT_LEVELS = ["0", "1", "2", "3", "pool"]  # heatmap_head.py:114-125: P2-P6 fused at P3 (defaults.py:274-275)


@pytest.fixture(scope="module")
def rpc_root(tmp_path_factory):
    """A tiny folder in RPC layout (the mini world's train, val and test splits; no pool)."""
    from rpc_synth.world import WorldConfig, build_world

    root = tmp_path_factory.mktemp("rpc") / "world"
    build_world(root, WorldConfig(skus=10, lookalike_pairs=1, elevations=(30.0,), azimuths=1, exemplar_size=64,
                                  checkout_size=64, val_images=2, test_images=2, pool_images=0), progress=False)
    return root


def plan(rpc_root: Path, out: Path, *args: str) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import rpc_paper
    finally:
        sys.path.remove(str(EXAMPLES))
    done = CliRunner().invoke(rpc_paper.main, ["--rpc-root", str(rpc_root), "--out", str(out), "--plan", *args])
    assert done.exit_code == 0, done.output
    assert "## Distillation" in done.output and "| source_render |" in done.output
    return json.loads((out / "plan.json").read_text())


def per_image(schedule: dict) -> dict:
    """What one image meets: its learning rate in each phase, the images of each phase, the warmup's images."""
    def rate(x: float) -> float:  # to 10 significant digits: 0.01 x 16 / 8 and 0.01 x 2 / 8 differ in the last bit
        return float(f"{x:.10g}")

    return {"phases": [(tuple(p["images"]), rate(p["lr_per_image"])) for p in schedule["phases"]],
            "images_seen": schedule["images_seen"], "warmup_images": schedule["warmup_images"],
            "warmup_factor": schedule["warmup_factor"], "lr_per_image": rate(schedule["lr_per_image"])}


@pytest.fixture(scope="module")
def plans(rpc_root, tmp_path_factory):
    return {n: plan(rpc_root, tmp_path_factory.mktemp(f"plan{n}"), "--nproc", str(n)) for n in (1, 8)}


def test_the_schedule_per_image_is_the_same_on_1_and_8_processes(plans):
    one, eight = plans[1], plans[8]
    for name in ("source_syn", "source_hist", "source_render"):
        a, b = one["training"][name]["per_image"], eight["training"][name]["per_image"]
        assert (a["total_batch"], b["total_batch"]) == (2, 16) and a["steps"] == 8 * b["steps"]  # each runs its own
        assert per_image(a) == per_image(b)
    assert [per_image(r["per_image"]) for r in one["kd_loop"]["rounds"]] == \
        [per_image(r["per_image"]) for r in eight["kd_loop"]["rounds"]]
    assert one["kd_loop"]["overrides"] == eight["kd_loop"]["overrides"]
    torchrun = [c for s in eight["stages"] for c in s["commands"] if "torchrun" in c[0]]
    assert torchrun and all(c[1:3] == ["--nproc-per-node", "8"] for c in torchrun)
    assert not any("torchrun" in c[0] for s in one["stages"] for c in s["commands"])


def test_the_source_models_follow_the_released_schedule(plans):
    for name, run in plans[1]["training"].items():
        s = run["per_image"]
        assert s["lr_per_image"] == pytest.approx(SRC_LR / BATCH), name
        assert s["images_seen"] == SRC_STEPS * BATCH
        assert [p["images"][0] for p in s["phases"][1:]] == [d * BATCH for d in SRC_DROPS]
        assert s["warmup_images"] == WARMUP * BATCH and s["warmup_factor"] == pytest.approx(WARMUP_FACTOR)
        config = run["config"]
        assert config["model.count_classes"] == COUNT_CLASSES and config["model.count_levels"] == COUNT_LEVELS
        assert config["model.count_stride"] == BATCH  # P3: stride 8 (defaults.py:275 FPN_LEVEL_STRIDE 1/8)
        assert config["model.sigma_rule"] == "short_side"
        assert config["model.sigma_scale"] == pytest.approx(SIGMA_SCALE)


def test_the_distillation_follows_the_released_schedule(plans):
    rounds = plans[1]["kd_loop"]["rounds"]
    assert len(rounds) == KD_ROUNDS + 1
    image_rounds, final = rounds[:KD_ROUNDS], rounds[KD_ROUNDS]
    assert [r["policy"] for r in image_rounds] == ["image"] * KD_ROUNDS
    assert [r["threshold"] for r in image_rounds] == THRESHOLDS
    assert [r["source_images"] for r in image_rounds] == [SOURCE_IMAGES] * KD_ROUNDS
    assert all(r["source_ratio"] > 0 and r["counting_view_trained"] for r in image_rounds)
    for r, lr in zip(image_rounds, KD_LRS, strict=True):
        s = r["per_image"]
        assert s["lr_per_image"] == pytest.approx(lr / BATCH, rel=1e-9), r["round"]
        assert s["images_seen"] == KD_STEPS * BATCH and s["schedule"] == "constant"  # one rate a round
    assert image_rounds[0]["per_image"]["warmup_images"] == WARMUP * BATCH  # once, at the start
    assert {r["per_image"]["warmup_images"] for r in image_rounds[1:]} == {0}
    # the final stage: instance level, the pseudo-labels alone, the detector alone
    assert (final["policy"], final["threshold"], final["ignore_threshold"]) == ("instance", FINAL_THRESHOLD,
                                                                               FINAL_IGNORE)
    assert final["source_ratio"] == 0 and not final["counting_view_trained"]
    s = final["per_image"]
    assert s["lr_per_image"] == pytest.approx(FINAL_LR / BATCH) and s["images_seen"] == FINAL_STEPS * BATCH
    assert [p["images"][0] for p in s["phases"][1:]] == [d * BATCH for d in FINAL_DROPS]
    assert s["warmup_images"] == FINAL_WARMUP
    # label-free: no count scale and no minimum share (neither is in the released code)
    overrides = dict(item.split("=", 1) for item in plans[1]["kd_loop"]["overrides"])
    assert overrides["selection.count_scale"] == '"none"' and overrides["selection.min_share"] == "0"


def test_the_plan_runs_nothing(plans):
    out = Path(plans[1]["out"])
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


def test_the_users_keys_win_over_the_rounds(rpc_root, tmp_path):
    """The end-to-end test's flags (examples/test_aco_pipeline.py): one short round, the final stage as short, one
    policy for every round, and a --dpsnet-set key that the rounds' own settings do not override."""
    result = plan(rpc_root, tmp_path, "--nproc", "1", "--kd-rounds", "1", "--kd-steps", "2", "--source-steps", "3",
                  "--kd-set", "selection.thresholds=[0.05]", "--kd-set", 'selection.policy="instance"',
                  "--dpsnet-set", "train.warmup_steps=1")
    rounds = result["kd_loop"]["rounds"]
    assert [(r["policy"], r["threshold"]) for r in rounds] == [("instance", 0.05), ("instance", 0.05)]
    assert [r["per_image"]["images_seen"] for r in rounds] == [2 * BATCH, 2 * BATCH]
    assert [r["per_image"]["warmup_images"] for r in rounds] == [1 * BATCH, 1 * BATCH]  # the user's warmup, 1 step
    assert [r["counting_view_trained"] for r in rounds] == [True, False]
    assert result["training"]["source_syn"]["per_image"]["images_seen"] == 3 * BATCH
