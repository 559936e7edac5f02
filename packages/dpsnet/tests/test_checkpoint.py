"""Checkpoints and configs written before the retired options were deleted still load; retired values are named."""

import pytest
import torch
from click.testing import CliRunner

from dpsnet.checkpoint import load_checkpoint, model_from_checkpoint
from dpsnet.cli import main
from dpsnet.config import PRESETS, RETIRED, ConfigError, load_toml, make_config
from dpsnet.training import train

from .conftest import tiny_overrides

# What engine.save_checkpoint wrote before the refactoring: these keys, and in model_kwargs / config the options
# since retired, at the values every kept run has.
OLD_KEYS = {"model", "optimizer", "scheduler", "step", "epoch", "position", "best", "rng", "model_kwargs",
            "categories", "config"}
OLD_MODEL_KWARGS = {"count_head": "direct", "count_norm": "batch", "class_loss_weight": 1.0}
OLD_CONFIG = {"data.camera": 0.0, "model.count_head": "direct", "model.count_norm": "batch",
              "model.class_loss_weight": 1.0}


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    train(make_config("cpu-small", tiny_overrides(world, **{"model.box_score_thresh": 0.0, "train.threads": 1})),
          out / "new", echo=False)
    return out


def _as_the_old_writer_wrote(path, out):
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == OLD_KEYS  # the format did not change
    old = {**ckpt, "model_kwargs": {**ckpt["model_kwargs"], **OLD_MODEL_KWARGS},
           "config": {**ckpt["config"], **OLD_CONFIG}}
    torch.save(old, out)
    return out


def test_a_checkpoint_of_the_old_format_predicts_the_same(world, run):
    old = _as_the_old_writer_wrote(run / "new" / "last.pt", run / "old.pt")
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    with torch.no_grad():
        want = model_from_checkpoint(run / "new" / "last.pt")[0](images)
        got = model_from_checkpoint(old)[0](images)
    for a, b in zip(got, want, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert make_config(load_checkpoint(old)["config"]) == make_config(load_checkpoint(run / "new" / "last.pt")["config"])


def test_a_run_of_the_old_format_resumes(world, run):
    (run / "resume").mkdir()
    _as_the_old_writer_wrote(run / "new" / "last.pt", run / "resume" / "last.pt")
    res = CliRunner().invoke(main, ["train", "--out", str(run / "resume"), "--resume", "train.max_steps=3"])
    assert res.exit_code == 0, res.output
    assert torch.load(run / "resume" / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize(("change", "named"), [
    ({"model_kwargs": {"count_head": "factorized"}}, "model.count_head"),
    ({"model_kwargs": {"count_norm": "none"}}, "model.count_norm"),
    ({"plain_head": True}, "model.count_norm"),  # saved before the key existed: the plain head's conv biases
])
def test_retired_values_in_a_checkpoint_are_named(run, change, named):
    ckpt = torch.load(run / "new" / "last.pt", weights_only=True)
    ckpt["model_kwargs"] = {**ckpt["model_kwargs"], **change.get("model_kwargs", {})}
    if change.get("plain_head"):
        ckpt["model"]["counting_view.convs.0.bias"] = torch.zeros(16)
    with pytest.raises(ValueError, match=rf"{named} = .*retired"):
        model_from_checkpoint(ckpt)


def test_retired_config_keys(world, tmp_path):
    """Saved configs and TOML files holding the kept value load; another value is an error naming the
    measurement that retired the option, on the command line too; the presets set none of them."""
    assert make_config({**make_config("cpu-small"), **OLD_CONFIG}) == make_config("cpu-small")
    (tmp_path / "old.toml").write_text("[data]\ncamera = 0.0\n[model]\ncount_norm = \"batch\"\n")
    assert make_config(str(tmp_path / "old.toml")) == make_config(None)
    for key, value in (("data.camera", 0.5), ("model.count_head", "factorized"), ("model.count_norm", "none"),
                       ("model.class_loss_weight", 5.0)):
        with pytest.raises(ConfigError, match=rf"{key} was retired \(.+\)"):
            make_config(None, {key: value})
    res = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), "data.camera=0.5"])
    assert res.exit_code == 2 and "11.67%" in res.output
    for preset in PRESETS:
        assert not set(load_toml(preset)[0]) & set(RETIRED)


def test_a_malformed_override_names_itself_and_the_valid_keys():
    with pytest.raises(ConfigError, match=r"override 'train\.lr' should look like key=value, e\.g\. .*valid keys: .*"
                                          r"train\.lr"):
        make_config("cpu-small", ["train.lr"])
