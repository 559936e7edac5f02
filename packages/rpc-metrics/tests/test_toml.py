"""TOML configs: overrides read as TOML values, flattening, and writing that tomllib reads back."""

import tomllib

import numpy as np
import pytest

from rpc_metrics.toml import flatten, parse_override, parse_overrides, parse_value, to_toml, toml_value


@pytest.mark.parametrize(("text", "value"), [
    ("0.01", 0.01), ("3", 3), ("true", True), ("[800, 1000]", [800, 1000]), ('"a b"', "a b"),
    ("{ preset = \"cpu-small\" }", {"preset": "cpu-small"}), ("cpu-small", "cpu-small"), ("a b", "a b"), ("", ""),
])
def test_values_are_toml_or_else_text(text, value):
    assert parse_value(text) == value


def test_overrides_strip_keys_and_values_and_keep_the_last():
    assert parse_override(" train.lr = 0.5 ") == ("train.lr", 0.5)
    assert parse_override("data.path=a=b") == ("data.path", "a=b")
    assert parse_overrides(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}


@pytest.mark.parametrize("text", ["rounds", "=3", "  =3"])
def test_an_override_without_key_or_equals_sign_is_refused(text):
    with pytest.raises(ValueError, match=r"should look like key=value"):
        parse_override(text)


def test_flatten_keeps_the_leaves_it_is_told():
    table = {"rounds": 2, "learner": {"path": "m:C", "kwargs": {"preset": "p", "o": {"x": 1}}}, "a": {"b": {"c": 1}}}
    assert flatten(table) == {"rounds": 2, "learner.path": "m:C", "learner.kwargs.preset": "p",
                              "learner.kwargs.o.x": 1, "a.b.c": 1}
    assert flatten(table, leaves={"learner.kwargs"})["learner.kwargs"] == {"preset": "p", "o": {"x": 1}}


def test_written_tables_read_back():
    table = {"rounds": 3, "seed": 0, "workdir": 'runs/a "b"\\c\n', "ratio": 0.5, "big": 1e-05,
             "learner": {"path": "dpsnet.kd:Learner", "kwargs": {"preset": "cpu-small", "overrides": {"train.lr": 1e-4}},
                         "round_kwargs": [{}, {"steps": 2}]},
             "source": {"datasets": [{"instances": "s.json", "images": "s", "weight": 1.0}]},
             "odd key": {"a.b": [True, False], "tuple": (1, 2)}}
    expected = {**table, "odd key": {"a.b": [True, False], "tuple": [1, 2]}}
    assert tomllib.loads(to_toml(table)) == expected


def test_numpy_numbers_and_the_examples_layout():
    assert toml_value(np.float64(0.25)) == "0.25" and toml_value(np.int64(3)) == "3"
    assert toml_value({"preset": "x"}) == '{ "preset" = "x" }'
    assert to_toml({"learner": {"path": "m:C"}}) == '\n[learner]\npath = "m:C"\n'
    with pytest.raises(TypeError, match="cannot write"):
        toml_value(None)
