"""ONNX export of every registered model: dynamic batch/height/width, onnxruntime matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dfsfuse.models import create_model, list_models, model_kind  # noqa: E402
from dfsfuse.models.blocks import HEADS  # noqa: E402
from dfsfuse.onnx import OnnxModel, export_onnx, max_onnx_error  # noqa: E402

# Small settings so that every export stays quick; models not listed use their defaults.
SMALL_KWARGS = {
    "teacher": {"dim": 8, "bottleneck_depth": 1},
    "sspfusion": {"width": 4, "depth": 1},
    "student": {"width": 4},
}
EXPORT_SIZE = (64, 64)
# Odd, even, smaller and larger than the export size, and not multiples of any model stride.
RUN_SIZES = [(61, 77), (33, 50), (70, 45), (64, 64)]
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| on [0, 1] images (measured: about 1e-7)


def _perturb_head(model: torch.nn.Module) -> None:
    """Large random weights in the last conv, so the output is far from the head's initial rule."""
    head = getattr(model, "head", None)
    conv = getattr(head, "conv", head)  # a plain conv head, or a head module wrapping one
    if isinstance(getattr(conv, "weight", None), torch.Tensor):
        with torch.no_grad():
            conv.weight.normal_(0, 0.3)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    model = create_model("student", width=4).eval()
    _perturb_head(model)
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


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_once_and_runs_at_any_size(name, tmp_path):
    """Traced once at 64×64, the graph matches eager PyTorch at other sizes (odd ones included) and batches.

    Every fusion model, and the segmenter (padded to its stride 32 the same way).
    """
    torch.manual_seed(0)
    model = create_model(name, **SMALL_KWARGS.get(name, {})).eval()
    _perturb_head(model)
    fusion = model_kind(name) == "fusion"
    path = export_onnx(model, tmp_path / "model.onnx", size=EXPORT_SIZE)
    runner = OnnxModel(path, providers=["CPUExecutionProvider"])
    for i, (size, batch) in enumerate(zip(RUN_SIZES, (1, 2, 1, 1))):
        g = torch.Generator().manual_seed(i)
        inputs = [torch.rand(batch, 1, *size, generator=g) for _ in range(2 if fusion else 1)]
        with torch.no_grad():
            out = model(*inputs)
        expected = (out.fused if fusion else out.logits).numpy()
        got = runner(*(x.numpy() for x in inputs))
        assert got.shape == expected.shape and got.shape[-2:] == size, (name, size)
        error = float(np.abs(got - expected).max())
        assert error < TOLERANCE, f"{name} at {size}: max error {error:.2e}"


@pytest.mark.parametrize("head", [h for h in HEADS if h != "region"])  # region: every model above
def test_every_output_head_exports_once_and_runs_at_any_size(head, tmp_path):
    """The heads' fixed blurs (region prior, warm contrast) stay size-independent in the traced graph."""
    torch.manual_seed(0)
    model = create_model("student_fast", head=head).eval()
    _perturb_head(model)
    runner = OnnxModel(export_onnx(model, tmp_path / "model.onnx", size=EXPORT_SIZE), providers=["CPUExecutionProvider"])
    for i, size in enumerate(RUN_SIZES):
        g = torch.Generator().manual_seed(i)
        ir, vis = torch.rand(1, 1, *size, generator=g), torch.rand(1, 1, *size, generator=g)
        with torch.no_grad():
            expected = model(ir, vis).fused.numpy()
        got = runner(ir.numpy(), vis.numpy())
        assert got.shape == expected.shape
        error = float(np.abs(got - expected).max())
        assert error < TOLERANCE, f"{head} at {size}: max error {error:.2e}"


def test_export_friendly_rewrites_keep_eager_numbers_bit_identical():
    """The traced-size padding and SSPFusion's fixed-kernel Sobel give exactly the eager values."""
    from dfsfuse.losses.structure import sobel_structure
    from dfsfuse.models.blocks import pad_to_multiple
    from dfsfuse.models.sspfusion import sobel_signal

    x = torch.rand(2, 1, 61, 77, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sobel_signal(x), sobel_structure(x))
    traced = torch.jit.trace(lambda t: pad_to_multiple(t, 8), (torch.rand(1, 3, 64, 64),), check_trace=False)
    for size in [(61, 77), (64, 64), (1, 9)]:
        y = torch.rand(1, 3, *size)
        assert torch.equal(traced(y), pad_to_multiple(y, 8))
        assert traced(y).shape[-2:] == tuple(-(-s // 8) * 8 for s in size)
