"""`make demo QUICK=1` end to end, its resumption, and `rpc_paper.py` on the demo's world (RPC layout).

The quick demo runs once per module (under 3 minutes on 2 cores); the other tests read its folder.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent
LEVELS = ("easy", "medium", "hard", "averaged")
METHODS = ("Syn", "Syn+histogram", "Syn+Render", "+ distillation round 1", "+ distillation round 2",
           "+ distillation round 3")
STAGES = ("world", "masks", "poses", "synth_fit", "synth", "synth_heldout", "pretrain", "checkout_unlabeled",
          "render_apply", "histogram", "render_measure", "source_trunk", "source_syn", "source_hist", "source_render",
          "kd", "visualize", "bundle")


def run_example(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          check=False, cwd=cwd)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    parent = tmp_path_factory.mktemp("demo")
    # A relative --out, as `make demo` gives (runs/mini): every tool must see paths that work from its cwd.
    done = run_example("aco_pipeline.py", "--quick", "--out", "demo", cwd=parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return parent / "demo", done


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_the_report(quick_demo):
    out, done = quick_demo
    for stage in STAGES:
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert record["seconds"] >= 0 and f"{record['title']}: done in" in done.stderr
    report = (out / "report.md").read_text()
    assert report.strip() in done.stdout
    for heading in ("## Ablation (test split, protocol `transfer`", "protocol `oracle`", "## Checks",
                    "## Distillation rounds", "## Rendering", "## Timings", "## Machine", "## Figures",
                    "## What holds cAcc back", "## Each step, paired on the same test images", "## The domain gap",
                    "## Synthesis fitted to the checkout images", "## The counting view under the shift"):
        assert heading in report
    # distillation took its pseudo-labels from the unlabeled pool, not the test images, and said so
    assert "the world's **unlabeled pool**" in report
    loop = (out / "kd" / "loop.toml").read_text()
    assert "pool2019" in loop and '[test]' in loop
    # every step is a paired comparison with an interval; the ablation rows carry bootstrap intervals
    metrics = json.loads((out / "metrics.json").read_text())
    pairs = [(s["a"], s["b"]) for s in metrics["paired_steps"]]
    assert ("Syn", "Syn+Render") in pairs and ("Syn+Render", "+ distillation round 3") in pairs
    for step in metrics["paired_steps"]:
        lo, hi = step["cacc"]["interval"]
        assert lo <= step["cacc"]["difference"] <= hi
    averaged = next(r for r in metrics["stages"][0]["transfer"]["rows"] if r["level"] == "averaged")
    lo, hi = averaged["intervals"]["cacc"]
    assert lo <= averaged["cacc"] <= hi
    # synthesis was fitted to the val split's boxes, and the generate stages used it
    assert (out / "synthesis.json").is_file()
    assert json.loads((out / "stages" / "synth.json").read_text())["settings"]["fitted"] is True
    # the last round's errors add up to its objects and detections, at the transfer threshold of the table above
    errors = json.loads((out / "metrics.json").read_text())["errors_last_stage"]
    last = next(r for r in errors["rows"] if r["level"] == "averaged")
    assert last["objects"] == last["found"] + last["wrong_sku"] + last["missed"]
    assert last["detections"] == last["found"] + last["wrong_sku"] + last["extra"]
    assert errors["protocol"] == "transfer" and f"| averaged | {last['threshold']:.4g} | " in report
    header = "| level | method | cAcc | mCIoU | ACD | mCCD | mAP50 | mmAP | threshold |"
    assert report.count(header) == 2
    for level in LEVELS:
        for method in METHODS:
            assert report.count(f"| {level} | {method} | ") == 2, (level, method)
    for name in ("exemplar_mask", "synth_render", "detections_before_after", "metrics_per_round"):
        path = out / "figures" / f"{name}.png"
        assert path.stat().st_size > 1000 and f"(figures/{name}.png)" in report
    for r in range(4):
        assert (out / "kd" / f"round_{r:03d}" / "metrics.json").is_file()
    # the pretrained crop classifier re-scores the predictions, the kd learner's too
    assert '"reclassifier" = "' in (out / "kd" / "loop.toml").read_text()
    assert json.loads((out / "stages" / "source_syn.json").read_text())["settings"]["reclassify_power"] == 2.0
    # no pair specialists in the quick run (a 20-step classifier confuses every pair, and running them on every
    # detection doubled the quick demo's time); `dpsnet pretrain`'s tests cover them
    assert json.loads((out / "stages" / "pretrain.json").read_text())["settings"]["specialist_steps"] == 0
    assert "specialists" not in json.loads((out / "pretrain" / "backbone.pt.json").read_text())
    # the source models are fine-tunes of one shared trunk trained on Syn
    assert "one shared trunk trained on Syn for 12 steps" in report
    trunk = out.resolve() / "models" / "trunk" / "last.pt"
    for key in ("syn", "hist", "render"):
        overrides = json.loads((out / "stages" / f"source_{key}.json").read_text())["settings"]["overrides"]
        assert f"train.init_checkpoint={trunk}" in overrides and "train.max_steps=8" in overrides
    # the steps decide, not the clock: no training run has a time limit (the results would depend on the machine)
    assert done.stderr.count("train.time_limit_min=0.0") >= 3  # the three source models
    assert '"train.time_limit_min" = 0.0' in (out / "kd" / "loop.toml").read_text()
    assert "steps, no time limit)" in report and "student steps per round (no time limit)" in report
    # the quick world's 256 px images are not upsampled to the preset's 384 (half the pixels to train on)
    assert done.stderr.count("model.min_size=[256] model.max_size=256") >= 3
    assert '"model.min_size" = [256]' in (out / "kd" / "loop.toml").read_text()
    # the figures come from this process (no `dpsnet visualize` start): one PNG per picked image and model
    assert " visualize --checkpoint" not in done.stderr
    for name in ("vis_before", "vis_after"):
        assert len(list((out / "figures" / name).glob("*.png"))) == 2


@pytest.mark.slow
def test_quick_demo_writes_a_bundle_that_counts_as_the_report_says(quick_demo):
    """The README's deployment lines on the demo's own bundle, and the receipt flag's table in the report."""
    out, _ = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    flag = metrics["receipt_flag"]
    assert flag["all test images"]["images"] == flag["consistent (no cashier)"]["images"] + \
        flag["flagged: call a cashier"]["images"]
    assert "## The receipt's flag: when to call a cashier" in (out / "report.md").read_text()
    test = json.loads((out / "world" / "instances_test2019.json").read_text())["images"][:2]
    photos = [str(out / "world" / "test2019" / image["file_name"]) for image in test]
    done = subprocess.run([sys.executable, "-m", "dpsnet", "count", *photos, "--model", str(out / "bundle.pt"),
                           "--json", str(out / "receipts.jsonl"), "--quiet"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    receipts = [json.loads(line) for line in (out / "receipts.jsonl").read_text().splitlines()]
    assert len(receipts) == 2 and all("consistent" in r for r in receipts)
    bundle_threshold = metrics["receipt_flag"]["threshold"]
    assert all(abs(r["threshold"] - bundle_threshold) < 1e-5 for r in receipts)


@pytest.mark.slow
def test_quick_demo_metrics_are_finite(quick_demo):
    out, _ = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["method"] for row in metrics["stages"]] == list(METHODS)
    for row in metrics["stages"]:
        for protocol in ("transfer", "oracle"):
            rows = {r["level"]: r for r in row[protocol]["rows"]}
            assert set(rows) == set(LEVELS)
            for values in rows.values():
                for key in ("cacc", "mciou", "acd", "mccd", "map50", "mmap", "threshold"):
                    assert values[key] is not None and math.isfinite(values[key]), (row["method"], protocol, key)
    # the in-domain check also scores the counting view alone (the preset's one class: the total per image)
    assert [h["count_classes"] for h in metrics["heldout_synth"]] == ["object"] * 3
    assert all(0.0 <= h["counts_right"] <= 1.0 for h in metrics["heldout_synth"])
    assert "| counting view right (its classes) |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_quick_demo_resumes_without_redoing_a_stage(quick_demo):
    out, _ = quick_demo
    again = run_example("aco_pipeline.py", "--quick", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done earlier, skipped") == len(STAGES)
    assert "$ " not in again.stderr  # no command ran


@pytest.mark.slow
def test_until_stops_after_the_named_stage(quick_demo):
    out, _ = quick_demo
    report = (out / "report.md").stat().st_mtime_ns
    done = run_example("aco_pipeline.py", "--quick", "--out", str(out), "--until", "render_measure")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped after stage 'render_measure'" in done.stderr and "source model" not in done.stderr
    assert done.stderr.count("done earlier, skipped") == STAGES.index("render_measure") + 1
    assert (out / "report.md").stat().st_mtime_ns == report and "## Ablation" not in done.stdout
    bad = run_example("aco_pipeline.py", "--quick", "--out", str(out), "--until", "sources")
    assert bad.returncode == 2 and "--until 'sources': no such stage" in bad.stderr and "render_measure" in bad.stderr


@pytest.mark.slow
def test_other_settings_in_the_same_folder_exit_2(quick_demo):
    out, _ = quick_demo
    done = run_example("aco_pipeline.py", "--quick", "--out", str(out), "--seed", "1")
    assert done.returncode == 2
    assert "stages/world.json" in done.stderr and "seed: 0 -> 1" in done.stderr


@pytest.mark.slow
def test_controls_added_to_a_finished_quick_demo(quick_demo):
    out, _ = quick_demo
    done = run_example("aco_pipeline.py", "--quick", "--out", out.name, "--controls", cwd=out.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("done earlier, skipped") == len(STAGES)  # only the two controls ran
    report = (out / "report.md").read_text()
    for method in ("control: random selection, round 3", "control: as many more steps on synthesized data"):
        assert f"| averaged | {method} | " in report
        assert f"| + distillation round 3 - {method} | " in report
    assert "the last round against the better control" in report
    # the random control reads the same pool and selection settings, from the loop's own round 0 (not redone)
    assert json.loads((out / "controls" / "random" / "round_001" / "selection.json").read_text())["policy"] == \
        "random-instance"
    assert (out / "controls" / "random" / "round_000" / "fit.json").samefile(out / "kd" / "round_000" / "fit.json")
    assert json.loads((out / "controls" / "steps" / "model" / "done.json").read_text())["steps"] == 24


def test_bad_override_exits_2(tmp_path):
    done = run_example("aco_pipeline.py", "--quick", "--out", str(tmp_path), "--dpsnet-set", "train.lr")
    assert done.returncode == 2 and "--dpsnet-set 'train.lr'" in done.stderr
    done = run_example("aco_pipeline.py", "--quick", "--out", str(tmp_path), "--source-minutes", "-1")
    assert done.returncode == 2 and "--source-minutes" in done.stderr and not any(tmp_path.iterdir())


def test_rpc_paper_names_a_missing_split(tmp_path):
    (tmp_path / "train2019").mkdir()
    done = run_example("rpc_paper.py", "--rpc-root", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "instances_train2019.json not found" in done.stderr


@pytest.mark.slow
def test_rpc_paper_on_the_demo_world(quick_demo, tmp_path):
    world = quick_demo[0] / "world"
    tiny = ["model.backbone=small", "model.min_size=[128]", "model.max_size=128", "model.count_channels=32",
            "model.box_representation_size=64", "model.rpn_pre_nms_top_n_train=200",
            "model.rpn_post_nms_top_n_train=100", "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50",
            "model.anchor_sizes=[16,32,64,128,256]", "data.num_workers=0", "train.threads=1", "train.warmup_steps=1",
            "data.epoch_size=8"]
    args = ["--rpc-root", str(world), "--out", str(tmp_path / "rpc"), "--nproc", "1", "--workers", "1",
            "--synth-images", "8", "--heldout-images", "3", "--synth-size", "128", "--render-iters", "2",
            "--render-images", "4", "--source-steps", "3", "--kd-rounds", "1", "--kd-steps", "2",
            "--kd-set", "selection.thresholds=[0.05]", "--kd-set", "selection.policy=\"instance\""]
    for item in tiny:
        args += ["--dpsnet-set", item]
    done = run_example("rpc_paper.py", *args)
    assert done.returncode == 0, done.stderr[-4000:]
    report = (tmp_path / "rpc" / "report.md").read_text()
    assert "# DPSNet flow on RPC" in report and "| averaged | + distillation round 1 | " in report
    assert "train --config rpc-paper" in done.stderr
    assert not (tmp_path / "rpc" / "stages" / "world.json").exists()


def test_eta_scales_the_budgets_left_by_the_pace_so_far():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from aco_stages import eta
    finally:
        sys.path.remove(str(EXAMPLES))
    assert eta(600.0, 0.0, 0.0) == (600.0, 1.0)  # nothing run yet: the budgets as they are
    assert eta(600.0, 50.0, 20.0) == (600.0, 1.0)  # under a minute of budgets run: too little to judge
    assert eta(600.0, 525.0, 245.0) == pytest.approx((600.0 * 525 / 245, 525 / 245))  # a machine 2.1x slower
    assert eta(600.0, 60.0, 120.0) == (300.0, 0.5)  # a faster one
    assert eta(0.0, 525.0, 245.0)[0] == 0.0


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (False, True, "CPU bfloat16 units: AVX512-BF16 (bfloat16 autocast)"),
    (True, True, "CPU bfloat16 units: AMX and AVX512-BF16 (bfloat16 autocast)"),
    (False, False, "CPU bfloat16 units: none (float32)"),
])
def test_report_machine_line_names_the_bfloat16_units(monkeypatch, amx, avx512_bf16, expected):
    import torch

    sys.path.insert(0, str(EXAMPLES))
    try:
        from aco_sections import machine
    finally:
        sys.path.remove(str(EXAMPLES))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    line = machine()
    assert expected in line and "cores available" in line


def test_lookalike_ceiling_table():
    done = run_example("lookalike_ceiling.py", "--split", "val", "--images", "3", "--contrast", "40",
                       "--contrast", "255", "--min-px", "1")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 2 and rows[0].startswith("| 40 | 1 | ")
    # nothing differs by more than 255 grey levels: every look-alike product is blind, the ceiling drops
    blind, of = rows[1].split("|")[3].split(" of ")
    assert int(blind) == int(of) > 0 and float(rows[1].split("|")[4].strip(" %")) < 100
    assert run_example("lookalike_ceiling.py", "--images", "0").returncode == 2
