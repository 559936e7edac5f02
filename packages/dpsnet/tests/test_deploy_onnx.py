"""The ONNX export (backbone + FPN + RPN head + counting view, box head) and its onnxruntime runner: the same
receipts as dpsnet.Counter, and graphs that follow the input size."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from dpsnet.deploy import Counter, read_bundle
from dpsnet.deploy.onnx_export import PyramidGraph
from dpsnet.deploy.onnx_runner import OnnxCounter

from .test_deploy import assert_same_boxes, bundle_path, checkpoint, invoke, predicted  # noqa: F401


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, predicted, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("deploy_onnx") / "model"
    res = invoke("export", "--format", "onnx", "--checkpoint", checkpoint, "--threshold", predicted[2],
                 "--protocol", "oracle", "--out", out)
    assert res.exit_code == 0, res.output
    return out


def _images(world):
    g = torch.Generator().manual_seed(3)
    return [world / "images" / f"img_{i:03d}.png" for i in range(4)] + [torch.rand(3, 70, 130, generator=g),
                                                                        torch.rand(3, 150, 60, generator=g)]


def test_onnx_folder_and_manifest(onnx_dir):
    manifest = json.loads((onnx_dir / "onnx.json").read_text())
    assert "dynamo=False" in manifest["exporter"] and set(manifest["graphs"]) == {"pyramid.onnx", "box_head.onnx"}
    assert read_bundle(onnx_dir)["protocol"] == "oracle"


def test_onnx_runner_receipts_equal_the_counters(world, onnx_dir):
    counter, runner = Counter.load(onnx_dir, "cpu", batch_size=3), OnnxCounter.load(onnx_dir, threads=1)
    ours, theirs = counter.count_many(_images(world)), runner.count_many(_images(world))
    assert sum(r.total for r in ours) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.items == b.items and a.consistent == b.consistent
        assert_same_boxes(list(zip(a.labels, a.boxes, strict=True)), list(zip(b.labels, b.boxes, strict=True)))
        assert b.view_total == pytest.approx(a.view_total, abs=1e-3)
    with pytest.raises(ValueError, match="CPU"):
        OnnxCounter.load(onnx_dir, "cuda")


def test_pyramid_graph_follows_the_input_size(onnx_dir):
    """A non-square batch of another size than the example: every output, the density maps included, as torch."""
    import onnxruntime as ort

    model = Counter.load(onnx_dir, "cpu").model
    graph = PyramidGraph(model).eval()
    session = ort.InferenceSession(str(onnx_dir / "pyramid.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = graph(x)
        features = model.backbone(x)
        view = model.counting_view(features, (64, 160))
    got = session.run(None, {"images": x.numpy()})
    assert len(got) == len(expected) and got[-1].shape == (2, 3, 8, 20)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[-1], view.numpy(), atol=1e-4, rtol=1e-4)  # the graph's view is the model's


def test_export_onnx_refuses_a_file_as_out(checkpoint, tmp_path):  # noqa: F811
    (tmp_path / "f").write_text("x")
    res = invoke("export", "--format", "onnx", "--checkpoint", checkpoint, "--threshold", 0.5, "--out",
                 tmp_path / "f")
    assert res.exit_code == 2 and "folder" in res.output
