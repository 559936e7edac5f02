"""Per-round schedules: a policy, a source mix and learner arguments per round (the last entry repeating), the
random control of such a schedule, and resuming it."""

import json
import os
import subprocess
import sys

import pytest

from kd_loop import ConfigError, load_config, run_loop
from kd_loop.selection import SelectionPolicy, select_pseudo_labels
from rpc_metrics.io import as_pool, read_counts, read_instances, read_results


def quiet(message):
    pass


def artefacts(workdir):
    """Every round's JSON outputs, with the run's own folder stripped from paths so two runs compare."""
    return {f"{path.parent.name}/{path.name}": path.read_text().replace(str(workdir), "<run>")
            for path in sorted(workdir.glob("round_*/*.json"))}

# Two image-level rounds, then an instance-level last stage on the pseudo-labels alone whose learner is
# another one (the toy's counts doubled stand for a detector-only fine-tune's settings).
SCHEDULE = ['selection.policies=["image", "image", "instance"]', "selection.thresholds=[0.6, 0.7, 0.9]",
            "mix.source_ratios=[1.0, 1.0, 0.0]", "learner.round_kwargs=[{}, {}, { count_factor = 2.0 }]",
            "selection.min_share=0", "rounds=3"]


def stats(run, r, name="selection.json"):
    return json.loads((run / f"round_{r:03d}" / name).read_text())


def test_each_round_takes_its_own_policy_mix_and_learner(toy_world, tmp_path):
    run_loop(load_config(toy_world, SCHEDULE), workdir=tmp_path / "run", log=quiet)
    run = tmp_path / "run"
    assert [stats(run, r)["policy"] for r in (1, 2, 3)] == ["image", "image", "instance"]
    assert [stats(run, r)["threshold"] for r in (1, 2, 3)] == [0.6, 0.7, 0.9]
    assert stats(run, 1)["ignore_regions"] == stats(run, 2)["ignore_regions"] == 0  # image: no ignore regions
    assert stats(run, 3)["agreeing_images"] is None and stats(run, 3)["ignore_regions"] > 0
    mixes = [stats(run, r, "mix.json") for r in (1, 2, 3)]
    assert [m["source_images"] for m in mixes[:2]] == [m["pseudo_images"] for m in mixes[:2]]
    assert mixes[2]["source_images"] == 0 and len(mixes[2]["datasets"]) == 1
    # round 3's learner counts twice what the run's own learner counts on the same model
    checkpoint = json.loads((run / "round_003" / "fit.json").read_text())["checkpoint"]
    from kdloop_toy import ToyLearner

    kwargs = load_config(toy_world)["learner.kwargs"]
    plain = ToyLearner(**kwargs).predict(checkpoint, run / "round_003" / "pool.json", None, out_dir=tmp_path / "p")
    plain_counts = {i["image_id"]: i["counts"] for i in read_counts(plain.counts)["images"]}
    doubled = {i["image_id"]: i["counts"] for i in read_counts(run / "round_003" / "counts.json")["images"]}
    assert doubled == {i: {k: 2 * v for k, v in c.items()} for i, c in plain_counts.items()} and any(doubled.values())


def test_the_last_entry_repeats_and_the_schedule_says_so(toy_world):
    config = load_config(toy_world, [*SCHEDULE[:4], "mix.source_images=7"])
    plan = config.schedule(5)
    assert [p["policy"] for p in plan] == ["image", "image", "instance", "instance", "instance"]
    assert [p["threshold"] for p in plan] == [0.6, 0.7, 0.9, 0.9, 0.9]
    assert [p["source_ratio"] for p in plan] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [p["learner_kwargs"].get("count_factor") for p in plan] == [None, None, 2.0, 2.0, 2.0]
    assert plan[0]["learner_kwargs"] == config.learner_kwargs(0) == config["learner.kwargs"]
    # a fixed number of source images per round, except where the ratio is 0 or nothing was selected
    assert [config.source_images(r, 3) for r in (1, 2, 3)] == [7, 7, 0] and config.source_images(1, 0) == 0
    # without per-round lists: the single values every round
    single = load_config(toy_world, ['selection.policy="instance"', "mix.source_ratio=0.5"])
    assert {p["policy"] for p in single.schedule(3)} == {"instance"} and single.source_images(2, 4) == 2


def test_round_kwargs_merge_tables_key_by_key(toy_world):
    config = load_config(toy_world, ['learner.kwargs={ a = 1, overrides = { "train.lr" = 0.1, "x" = 2 } }',
                                     'learner.round_kwargs=[{ overrides = { "train.lr" = 0.001 } }]'])
    assert config.learner_kwargs(1) == {"a": 1, "overrides": {"train.lr": 0.001, "x": 2}}
    assert config.learner_kwargs(0)["overrides"]["train.lr"] == 0.1


def test_the_random_control_of_a_schedule_is_sized_by_each_rounds_policy(toy_world, tmp_path):
    run_loop(load_config(toy_world, [*SCHEDULE, 'selection.control="random"']), workdir=tmp_path / "random",
             log=quiet)
    run = tmp_path / "random"
    assert [stats(run, r)["policy"] for r in (1, 2, 3)] == ["random", "random", "random-instance"]
    # each round draws as many images (image level) or labels (instance level) as the label-free policy keeps
    # on the same teacher's predictions
    config = load_config(toy_world, SCHEDULE)
    pool = as_pool(read_instances(config.path("pool.instances")))
    for r in (1, 2, 3):
        teacher = run / f"round_{r - 1:03d}"
        honest = SelectionPolicy(policy=config.policy(r), threshold=config.threshold(r),
                                 ignore_threshold=min(config.threshold(r), config["selection.ignore_threshold"]))
        _, expected = select_pseudo_labels(pool, read_results(teacher / "predictions.json"),
                                           read_counts(teacher / "counts.json"), honest)
        drawn = stats(run, r)
        assert drawn["selected_images"] == expected["selected_images"] > 0
        if config.policy(r) == "instance":
            assert drawn["boxes"] == expected["boxes"] > 0
            assert drawn["boxes"] + drawn["ignore_regions"] == expected["boxes"] + expected["ignore_regions"]


def test_resuming_a_schedule_gives_the_same_outputs(toy_world, tests_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "kd_loop.cli", "run", str(toy_world), *SCHEDULE]
    killed = subprocess.run([*command, "--workdir", str(tmp_path / "resumed")], capture_output=True, text=True,
                            env={**env, "KD_TOY_KILL": "round_003/model"}, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "resumed" / "round_003" / "fit.json").exists()
    resumed = subprocess.run([*command, "--workdir", str(tmp_path / "resumed")], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "[round 2] fit student: done earlier" in resumed.stderr
    straight = subprocess.run([*command, "--workdir", str(tmp_path / "straight")], capture_output=True, text=True,
                              env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr
    first, second = artefacts(tmp_path / "resumed"), artefacts(tmp_path / "straight")
    assert first == second and "round_003/counts.json" in first
    assert json.loads(first["round_003/selection.json"])["policy"] == "instance"


@pytest.mark.parametrize(("overrides", "message"), [
    (['selection.policies=["image", "magic"]'], "selection.policies should be a list of policies among"),
    (['selection.policies="image"'], "selection.policies should be a list"),
    (['selection.policy="instance"', 'selection.policies=["image"]'],
     r"selection.policy and selection.policies are both given: .*selection.control=\"random\""),
    (['selection.control="yes"'], "selection.control should be 'none' or 'random', got 'yes'"),
    (["mix.source_ratios=[1.0, -1.0]"], r"mix.source_ratios should be a list of numbers >= 0"),
    (["mix.source_ratio=2.0", "mix.source_ratios=[1.0]"], "mix.source_ratio and mix.source_ratios are both given"),
    (["mix.source_images=-5"], r"mix.source_images should be an integer >= 0 \(0: by mix.source_ratio\), got -5"),
    (["mix.source_images=2.5"], "mix.source_images should be an integer"),
    (["learner.round_kwargs=[1, 2]"], "learner.round_kwargs should be a list of tables"),
])
def test_bad_schedules_name_their_key(toy_world, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(toy_world, overrides)
