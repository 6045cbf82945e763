"""ONNX export of the student: dynamic batch/height/width, onnxruntime matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dfsfuse.models import create_model  # noqa: E402
from dfsfuse.onnx import OnnxModel, export_onnx, max_onnx_error  # noqa: E402


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    model = create_model("student", width=4).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def graph(student, tmp_path_factory):
    return export_onnx(student, tmp_path_factory.mktemp("onnx") / "model.onnx", size=(64, 64))


def test_onnx_graph_has_named_dynamic_inputs(graph):
    proto = onnx.load(str(graph))
    assert [i.name for i in proto.graph.input] == ["ir", "vis_y"]
    assert [o.name for o in proto.graph.output] == ["fused"]
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[:1]] + [d.dim_param for d in dims[2:]] == ["batch", "height", "width"]
        assert dims[1].dim_value == 1
    assert not [p.name for p in graph.parent.iterdir() if p.name != "model.onnx"]  # no temp file left


def test_onnxruntime_matches_pytorch_at_another_odd_size(student, graph):
    g = torch.Generator().manual_seed(1)
    ir, vis = torch.rand(2, 1, 61, 77, generator=g), torch.rand(2, 1, 61, 77, generator=g)
    with torch.no_grad():
        expected = student(ir, vis).fused.numpy()
    got = OnnxModel(graph, providers=["CPUExecutionProvider"])(ir.numpy(), vis.numpy())
    assert got.shape == (2, 1, 61, 77)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert max_onnx_error(student, graph, size=(33, 130)) < 1e-4


def test_onnx_runner_errors(graph, tmp_path):
    runner = OnnxModel(graph, providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="expects 2 inputs"):
        runner(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="junk.onnx"):
        OnnxModel(tmp_path / "junk.onnx")
