"""A store's own products end to end at tiny sizes: a photo catalogue (a generated world's exemplars in one folder
per SKU, boxes dropped) imported with `rpc-synth catalog`, then the pipeline on it with a folder of unlabeled
checkout photos and neither val nor test labels."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent
sys.path.insert(0, str(EXAMPLES))

from aco_recipe import QUICK, check_rpc_root  # noqa: E402
from catalog_boxes import main as catalog_boxes  # noqa: E402
from catalog_boxes import world_catalogue  # noqa: E402

RPC_SYNTH = shutil.which("rpc-synth", path=str(Path(sys.executable).parent)) or "rpc-synth"


def _run(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, check=False, cwd=cwd)


def _catalogue(world: Path, dest: Path, skip: set[str]) -> set[str]:
    """The world's exemplar photos as CATALOG/<sku name>/, except the SKUs in ``skip``; the SKU names copied."""
    return {source.split("/")[0] for source in world_catalogue(world, dest, frozenset(skip))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    world_args = [a for a in QUICK.world_args]
    for flag, value in (("--val", "0"), ("--test", "0")):
        world_args[world_args.index(flag) + 1] = value
    done = _run(RPC_SYNTH, "world", "--out", root / "world", "--seed", "5", "--quiet",
                *world_args, cwd=root)
    assert done.returncode == 0, done.stderr
    names = _catalogue(root / "world", root / "catalog", skip={max(json.loads(
        (root / "world" / "instances_train2019.json").read_text())["categories"], key=lambda c: c["id"])["name"]})
    done = _run(RPC_SYNTH, "catalog", "--catalog", root / "catalog", "--out",
                root / "shop", "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    return root, names


@pytest.mark.slow
def test_catalogue_then_pipeline_without_labels(store):
    root, _ = store
    done = _run(sys.executable, EXAMPLES / "aco_pipeline.py", "--quick", "--rpc-root", root / "shop", "--checkout",
                root / "world" / "pool2019", "--out", root / "run", cwd=root)
    assert done.returncode == 0, done.stderr[-4000:]
    report = (root / "run" / "report.md").read_text()
    # the protocol that chose every threshold is named; no accuracy rows without test labels
    assert "chosen on held-out synthesized images (the data has no val split)" in report
    assert "## No test labels: no accuracy rows" in report and "## Ablation" not in report
    assert "the **unlabeled checkout photos**" in report
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["test_labels"] is False and "stages" not in metrics
    # synthesis was fitted to the unlabeled photos, and the run ends with a deployable bundle
    fit = json.loads((root / "run" / "stages" / "synth_fit.json").read_text())
    assert fit["settings"]["checkout"] == "unlabeled"
    assert (root / "run" / "bundle.pt").stat().st_size > 0


@pytest.mark.slow
def test_reimport_with_one_more_sku_keeps_the_old_ids(store):
    root, _ = store
    before = json.loads((root / "shop" / "sku_ids.json").read_text())["ids"]
    added = _catalogue(root / "world", root / "catalog", skip=set())
    done = _run(RPC_SYNTH, "catalog", "--catalog", root / "catalog", "--out",
                root / "shop", "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    after = json.loads((root / "shop" / "sku_ids.json").read_text())["ids"]
    assert len(after) == len(before) + 1 and all(after[name] == cid for name, cid in before.items())
    assert set(after) == set(added)


def test_catalog_boxes_measures_a_world(store, tmp_path, capsys):
    """examples/catalog_boxes.py: every exemplar of the world imported and compared; the share printed and
    written agree."""
    root, _ = store
    assert catalog_boxes(["--world", str(root / "world"), "--json", str(tmp_path / "boxes.json")]) == 0
    rows = json.loads((tmp_path / "boxes.json").read_text())["photos"]
    images = json.loads((root / "world" / "instances_train2019.json").read_text())["images"]
    assert len(rows) == len(images) and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    ok = sum(r["iou"] >= 0.9 for r in rows)
    assert f"IoU >= 0.9: {ok}/{len(rows)}" in capsys.readouterr().out
    assert ok >= 0.9 * len(rows)


def test_catalog_boxes_keeps_an_rpc_root_with_the_worlds_splits(store, tmp_path):
    """--rpc-root: the import plus the world's pool (and its separate labels), SKUs mapped by name, a folder the
    pipeline accepts; an existing folder is refused."""
    root, _ = store
    rpc_root = tmp_path / "rpc"
    assert catalog_boxes(["--world", str(root / "world"), "--rpc-root", str(rpc_root)]) == 0
    check_rpc_root(rpc_root)
    catalogue = json.loads((rpc_root / "instances_train2019.json").read_text())["categories"]
    for path in ("instances_pool2019.json", "pool_truth/instances_pool2019.json"):
        world_doc = json.loads((root / "world" / path).read_text())
        doc = json.loads((rpc_root / path).read_text())
        assert doc["categories"] == catalogue and doc["images"] == world_doc["images"]
        name = {c["id"]: c["name"] for c in world_doc["categories"]}
        by_name = {c["name"]: c["id"] for c in catalogue}
        assert [a["category_id"] for a in doc["annotations"]] == [by_name[name[a["category_id"]]]
                                                                   for a in world_doc["annotations"]]
    pool = sorted(p.name for p in (root / "world" / "pool2019").iterdir())
    assert sorted(p.name for p in (rpc_root / "pool2019").iterdir()) == pool
    assert not (rpc_root / "val2019").exists() and not (rpc_root / "test2019").exists()
    with pytest.raises(SystemExit) as refused:
        catalog_boxes(["--world", str(root / "world"), "--rpc-root", str(rpc_root)])
    assert refused.value.code == 2
