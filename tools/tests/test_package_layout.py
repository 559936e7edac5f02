"""Every member package's layout (tools/layout.py): no import cycle (top-level and function-level imports alike),
third-party imports of declared dependencies only, modules <= 400 lines (Triton kernel files excepted) with a
docstring naming their job, functions <= 80 lines (kernel bodies excepted); and the rules of each package's layers:
dpsnet's inference never imports training and its model layer imports only itself; aco_kernels imports triton and
its kernel files lazily; rpc-synth needs torch only in the translator's modules."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from layout import PackageLayout, cycle  # noqa: E402

PACKAGES = {"rpc_metrics": "packages/rpc-metrics", "rpc_synth": "packages/rpc-synth", "dpsnet": "packages/dpsnet",
            "kd_loop": "packages/kd-loop", "aco_kernels": "kernels"}
LAYOUTS = {name: PackageLayout(ROOT / folder, name) for name, folder in PACKAGES.items()}
MODULES = [(package, module) for package, layout in LAYOUTS.items() for module in sorted(layout.modules)]
DPSNET_MODEL_LAYER = {"dpsnet.model", "dpsnet.backbone", "dpsnet.counting", "dpsnet.detection", "dpsnet.classifier"}
SYNTH_TORCH_MODULES = {"rpc_synth.render.networks", "rpc_synth.render.losses", "rpc_synth.render.train"}


def test_the_graph_sees_every_kind_of_import():
    dpsnet = LAYOUTS["dpsnet"]
    assert "dpsnet.training" in dpsnet.graph["dpsnet.cli"]  # `from .training import train` inside a command
    assert "dpsnet.training.detector" in dpsnet.reach("dpsnet.cli") and "dpsnet.model" in dpsnet.graph["dpsnet"]
    assert {"dpsnet.checkpoint", "dpsnet.inference.rescore"} <= dpsnet.graph["dpsnet.inference.prediction"]
    assert "dpsnet.inference" in dpsnet.graph["dpsnet.training.detector"]  # the package a submodule import runs
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    for name, layout in LAYOUTS.items():
        assert name in layout.modules and all(layout.graph[m] <= set(layout.modules) for m in layout.modules)


@pytest.mark.parametrize("package", sorted(LAYOUTS))
def test_no_import_cycles(package):
    found = cycle(LAYOUTS[package].graph)
    assert found is None, "import cycle: " + " -> ".join(found)


@pytest.mark.parametrize(("package", "module"), MODULES)
def test_imports_only_declared_dependencies(package, module):
    layout = LAYOUTS[package]
    undeclared = layout.third_party(module) - layout.declared()
    assert not undeclared, f"{module} imports {sorted(undeclared)}, not among the dependencies in pyproject.toml"


@pytest.mark.parametrize(("package", "module"), MODULES)
def test_modules_are_short_with_a_docstring_and_short_functions(package, module):
    problems = LAYOUTS[package].length_problems(module)
    assert not problems, f"{module}: {'; '.join(problems)}"


@pytest.mark.parametrize("module", sorted(m for m in LAYOUTS["dpsnet"].modules
                                          if m.startswith(("dpsnet.inference", "dpsnet.deploy"))))
def test_dpsnet_inference_never_imports_training(module):
    reached = LAYOUTS["dpsnet"].reach(module)
    assert not {n for n in reached if n.startswith(("dpsnet.training", "dpsnet.kd", "dpsnet.cli"))}, sorted(reached)


@pytest.mark.parametrize("module", sorted(DPSNET_MODEL_LAYER))
def test_dpsnet_model_layer_imports_only_the_model_layer(module):
    assert LAYOUTS["dpsnet"].reach(module) - {"dpsnet"} <= DPSNET_MODEL_LAYER


@pytest.mark.parametrize("module", sorted(m for m in LAYOUTS["aco_kernels"].modules
                                          if not m.startswith("aco_kernels.ops.")))
def test_triton_and_the_kernel_files_are_imported_lazily(module):
    loaded = LAYOUTS["aco_kernels"].module_level_imports(module)
    assert not {m for m in loaded if m.split(".")[0] == "triton" or m.startswith("aco_kernels.ops.")}, sorted(loaded)


@pytest.mark.parametrize("module", sorted(set(LAYOUTS["rpc_synth"].modules) - SYNTH_TORCH_MODULES))
def test_only_the_translator_needs_torch_to_import(module):
    loaded = LAYOUTS["rpc_synth"].module_level_imports(module)
    assert not {m for m in loaded if m.split(".")[0] == "torch"} and not loaded & SYNTH_TORCH_MODULES, sorted(loaded)
