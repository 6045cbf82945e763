"""The pieces that make the semantic benchmark repeat a seed on CUDA, checked on the CPU against
PyTorch's own operators: bilinear resizing as two matrices, its matrix-product backward, the
gather-based CE sum, and the context that switches deterministic kernels on and back off."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dfsfuse.losses.semantic import cross_entropy_sum, segmentation_ce
from dfsfuse.ops import _BilinearUpsample, bilinear_matrix, upsample_bilinear
from dfsfuse.determinism import deterministic_kernels

SIZES = [((8, 10), (32, 40)), ((5, 7), (18, 23)), ((12, 16), (7, 9)), ((1, 1), (4, 4)), ((3, 4), (3, 4))]


@pytest.mark.parametrize("src,dst", SIZES)
def test_bilinear_matrix_is_interpolate(src, dst):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *src, dtype=torch.float64)
    a_h = bilinear_matrix(dst[0], src[0], dtype=torch.float64)
    a_w = bilinear_matrix(dst[1], src[1], dtype=torch.float64)
    assert a_h.shape == (dst[0], src[0])
    torch.testing.assert_close(a_h.sum(1), torch.ones(dst[0], dtype=torch.float64))  # rows blend, never scale
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.einsum("oh,nchw,pw->ncop", a_h, x, a_w), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("src,dst", SIZES)
def test_matrix_backward_equals_interpolate_backward(src, dst):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *src, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    ours = _BilinearUpsample.apply(x, dst, None)
    assert torch.equal(ours, ref)  # the forward is F.interpolate itself
    g = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, x, g)
    (got,) = torch.autograd.grad(ours, x, g)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 4])
def test_matrix_backward_for_a_scale_factor(factor):
    # the student's head (×4) and the teacher's Upsample blocks (×2) pass a factor, not a size
    torch.manual_seed(4)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    ours = _BilinearUpsample.apply(x, None, factor)
    assert torch.equal(ours, ref) and ours.shape[-2:] == (7 * factor, 9 * factor)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=0, atol=1e-12)


def test_upsample_bilinear_needs_one_of_size_and_factor():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="exactly one"):
        upsample_bilinear(x)
    with pytest.raises(ValueError, match="exactly one"):
        upsample_bilinear(x, (8, 8), scale_factor=2)


def test_upsample_bilinear_is_interpolate_off_cuda():
    # CPU results must not move: off CUDA the deterministic switch changes nothing
    x = torch.randn(1, 2, 6, 9, requires_grad=True)
    out = upsample_bilinear(x, (24, 36), deterministic=True)
    assert out.grad_fn is not None and "UpsampleBilinear2D" in type(out.grad_fn).__name__
    assert torch.equal(out, F.interpolate(x, size=(24, 36), mode="bilinear", align_corners=False))


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_sum_matches_torch(weighted):
    torch.manual_seed(2)
    logits = torch.randn(3, 9, 11, 13, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (3, 11, 13))
    labels[0, :4] = 255  # ignored pixels
    weights = torch.rand(9, dtype=torch.float64) + 0.5 if weighted else None
    ref = F.cross_entropy(logits, labels, weight=weights, ignore_index=255, reduction="sum")
    ours = cross_entropy_sum(logits, labels, weights, 255)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (want,) = torch.autograd.grad(ref, logits)
    (got,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_segmentation_ce_unchanged_on_cpu_under_determinism():
    torch.manual_seed(3)
    logits = torch.randn(2, 9, 8, 8)
    labels = torch.randint(0, 9, (2, 8, 8))
    plain = segmentation_ce(logits, labels, mode="weighted")
    with deterministic_kernels():
        inside = segmentation_ce(logits, labels, mode="weighted")
    assert torch.equal(plain, inside)


def test_deterministic_kernels_restore_settings(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    assert after == before
    with pytest.raises(RuntimeError):
        with deterministic_kernels():
            raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before[0]
