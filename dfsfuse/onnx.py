"""ONNX export of dfsfuse models with dynamic batch, height and width, and an onnxruntime runner.

Fusion models become a graph ``(ir, vis_y) -> fused``; segmentation models ``(image) -> logits``.
All tensors are float32 B×C×H×W with the value range of the PyTorch model ([0, 1] inputs).
The graph is traced once at ``size`` (the TorchScript exporter, ``dynamo=False``) and runs at
any size: the student has no size-dependent ops.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_path

PathLike = Union[str, os.PathLike]

ONNX_NAME = "model.onnx"
DEFAULT_OPSET = 17
DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}


@dataclass(frozen=True)
class OnnxSignature:
    """Input and output names of an exported graph."""

    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]


class OnnxUnavailableError(ValueError):
    """``onnx``/``onnxruntime`` are not installed (they are the optional ``dfsfuse[onnx]`` extra)."""


def require_onnx(*modules: str) -> None:
    """Raise :class:`OnnxUnavailableError` naming the install command if a module is missing."""
    import importlib.util

    missing = [m for m in modules or ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxUnavailableError(f"ONNX support needs {', '.join(missing)}: pip install 'dfsfuse[onnx]'")


FUSION_SIGNATURE = OnnxSignature(inputs=("ir", "vis_y"), outputs=("fused",))
SEGMENTATION_SIGNATURE = OnnxSignature(inputs=("image",), outputs=("logits",))


class _FusedOnly(nn.Module):
    """A fusion model whose forward returns only the fused tensor (ONNX graphs return tensors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        return self.model(ir, vis_y).fused


class _LogitsOnly(nn.Module):
    """A segmentation model whose forward returns only the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image).logits


def signature_of(model: nn.Module) -> OnnxSignature:
    """The ONNX input/output names for ``model`` according to its kind (fusion or segmentation)."""
    kind = getattr(model, "kind", "")
    if kind == "fusion":
        return FUSION_SIGNATURE
    if kind == "segmentation":
        return SEGMENTATION_SIGNATURE
    raise TypeError(f"cannot export {type(model).__name__} to ONNX: not a dfsfuse fusion or segmentation model")


def _tensor_model(model: nn.Module) -> nn.Module:
    """A CPU eval-mode copy of ``model`` whose forward returns one tensor; training-time branches are
    folded first where the model can (``reparameterize()``, e.g. ``student_fast``): same outputs, fewer ops."""
    wrapper = _FusedOnly if signature_of(model) is FUSION_SIGNATURE else _LogitsOnly
    copied = copy.deepcopy(model).cpu().eval()
    if callable(getattr(copied, "reparameterize", None)):
        copied.reparameterize()
    return wrapper(copied)


def export_onnx(model: nn.Module, path: PathLike, size: Tuple[int, int] = (64, 64),
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (a CPU copy, in eval mode) to ``path`` with dynamic batch/height/width.

    The file is written to a temporary name beside ``path``, checked with ``onnx.checker``,
    then renamed, so a failed export leaves nothing behind.
    """
    require_onnx("onnx")
    import onnx

    path = Path(path)
    signature = signature_of(model)
    wrapped = _tensor_model(model)
    example = tuple(torch.rand(1, 1, *size) for _ in signature.inputs)
    axes = {name: dict(DYNAMIC_DIMS) for name in signature.inputs + signature.outputs}
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shape-dependent Python values
            torch.onnx.export(wrapped, example, str(tmp), dynamo=False, opset_version=opset,
                              input_names=list(signature.inputs), output_names=list(signature.outputs),
                              dynamic_axes=axes)
        onnx.checker.check_model(str(tmp))
    return path


class OnnxModel:
    """Run an exported graph with onnxruntime on numpy arrays.

    ``OnnxModel(path)(ir, vis_y)`` returns the fused B×1×H×W float32 array for a fusion graph;
    a segmentation graph takes one ``image`` and returns logits. ``providers`` defaults to
    CUDA when onnxruntime offers it, else CPU.
    """

    def __init__(self, path: PathLike, providers: Optional[Sequence[str]] = None) -> None:
        require_onnx("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX graph ({str(exc).splitlines()[0]})") from None
        self.signature = OnnxSignature(tuple(i.name for i in self.session.get_inputs()),
                                       tuple(o.name for o in self.session.get_outputs()))

    def run(self, inputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """All outputs for named float32 inputs."""
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.signature.inputs}
        return self.session.run(None, feed)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """The first output for positional inputs in the graph's input order."""
        if len(arrays) != len(self.signature.inputs):
            raise ValueError(f"{self.path}: expects {len(self.signature.inputs)} inputs "
                             f"({', '.join(self.signature.inputs)}), got {len(arrays)}")
        return self.run(dict(zip(self.signature.inputs, arrays)))[0]


def max_onnx_error(model: nn.Module, path: PathLike, size: Tuple[int, int] = (61, 77), batch: int = 1,
                   seed: int = 0) -> float:
    """Largest absolute difference between ``model`` (on CPU) and its ONNX graph on random inputs at ``size``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.rand(batch, 1, *size, generator=generator) for _ in signature_of(model).inputs]
    wrapped = _tensor_model(model)
    with torch.no_grad():
        expected = wrapped(*inputs).numpy()
    got = OnnxModel(path, providers=["CPUExecutionProvider"])(*(x.numpy() for x in inputs))
    if got.shape != expected.shape:
        raise ValueError(f"{path}: output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(got - expected).max())
