"""A fused window-attention kernel for CUDA (Triton), forward and backward.

One program computes one (window, head): it reads q, k and v straight from the fused qkv projection
`(B * nW, N, 3 * C)` (no permute copies), normalises q and k in fp32, multiplies q by the head's logit
scale, adds the folded bias + shift mask of its window, takes the softmax and the value product, and writes
`(B * nW, N, C)` ready for the output projection. The `(N, N)` scores never leave the chip, and the mask
is read per window from the cached `(nW, heads, N, N)` tensor instead of being expanded to every window
of the batch.

The backward kernel recomputes the scores of its (window, head) from q, k and the mask instead of reading
saved probabilities, and adds its share of the mask's and the logit scale's gradients atomically (every
window at the same position shares one mask). With `TRITON_INTERPRET=1` in the environment before Triton is
imported, both kernels run on CPU tensors through Triton's interpreter (slowly): that is how the tests
check them without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

# F.normalize's default eps: a zero vector stays zero (padded tokens have k = 0).
NORM_EPS = 1e-12


# Whether the models use the kernel: Triton installed (checked without importing it, which takes a while)
# and not switched off with SWINV2_DISABLE_TRITON=1. Plain module flags, so torch.compile guards on them.
TRITON_FOUND = (
    importlib.util.find_spec("triton") is not None and os.environ.get("SWINV2_DISABLE_TRITON") != "1"
)
# Tests set this (with TRITON_INTERPRET=1) to run the kernel on CPU tensors through Triton's interpreter.
INTERPRET_ON_CPU = False


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def window_attention_fwd(
        qkv_ptr,
        mask_ptr,
        scale_ptr,
        out_ptr,
        N,
        C,
        D,
        NUM_MASKS,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
        EPS: tl.constexpr,
    ):
        window = tl.program_id(0)
        head = tl.program_id(1)
        heads = tl.num_programs(1)
        rows = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        tile_ok = row_ok[:, None] & (cols[None, :] < D)
        base = qkv_ptr + window.to(tl.int64) * N * 3 * C + head * D
        offsets = rows[:, None] * (3 * C) + cols[None, :]
        q = tl.load(base + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        k = tl.load(base + C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        v = tl.load(base + 2 * C + offsets, mask=tile_ok, other=0.0)
        scale = tl.load(scale_ptr + head).to(tl.float32)
        q = q * (scale / tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), EPS))[:, None]
        k = k / tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), EPS)[:, None]
        # Same rounding as the SDPA path: q and k are cast to the activation dtype before the product.
        q = q.to(v.dtype)
        k = k.to(v.dtype)
        if IEEE:  # noqa: SIM108 (a constexpr branch, resolved when Triton compiles)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        pair_ok = row_ok[:, None] & row_ok[None, :]
        mask_base = mask_ptr + ((window % NUM_MASKS) * heads + head).to(tl.int64) * N * N
        bias = tl.load(mask_base + rows[:, None] * N + rows[None, :], mask=pair_ok, other=0.0).to(tl.float32)
        scores = tl.where(row_ok[None, :], scores + bias, float("-inf"))
        scores = scores - tl.max(scores, axis=1)[:, None]
        probs = tl.exp(scores)
        probs = probs / tl.sum(probs, axis=1)[:, None]
        if IEEE:  # noqa: SIM108
            out = tl.dot(probs.to(v.dtype), v, input_precision="ieee")
        else:
            out = tl.dot(probs.to(v.dtype), v)
        out_base = out_ptr + window.to(tl.int64) * N * C + head * D
        tl.store(out_base + rows[:, None] * C + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=tile_ok)

    return window_attention_fwd


@functools.cache
def _backward_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def window_attention_bwd(
        qkv_ptr,
        mask_ptr,
        scale_ptr,
        grad_out_ptr,
        grad_qkv_ptr,
        grad_mask_ptr,
        grad_scale_ptr,
        N,
        C,
        D,
        NUM_MASKS,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
        EPS: tl.constexpr,
    ):
        window = tl.program_id(0)
        head = tl.program_id(1)
        heads = tl.num_programs(1)
        rows = tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        tile_ok = row_ok[:, None] & (cols[None, :] < D)
        pair_ok = row_ok[:, None] & row_ok[None, :]
        base = window.to(tl.int64) * N * 3 * C + head * D
        offsets = rows[:, None] * (3 * C) + cols[None, :]
        q = tl.load(qkv_ptr + base + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        k = tl.load(qkv_ptr + base + C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        v = tl.load(qkv_ptr + base + 2 * C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        out_offsets = window.to(tl.int64) * N * C + head * D + rows[:, None] * C + cols[None, :]
        grad_out = tl.load(grad_out_ptr + out_offsets, mask=tile_ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + head).to(tl.float32)
        # the forward again, in fp32: normalise, scale, scores, bias + mask, softmax
        q_norm = tl.maximum(tl.sqrt(tl.sum(q * q, axis=1)), EPS)
        k_norm = tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), EPS)
        q_unit = q / q_norm[:, None]
        k_unit = k / k_norm[:, None]
        q_scaled = q_unit * scale
        if IEEE:
            scores = tl.dot(q_scaled, tl.trans(k_unit), input_precision="ieee")
        else:
            scores = tl.dot(q_scaled, tl.trans(k_unit))
        mask_offsets = ((window % NUM_MASKS) * heads + head).to(tl.int64) * N * N + rows[:, None] * N + rows[None, :]
        bias = tl.load(mask_ptr + mask_offsets, mask=pair_ok, other=0.0).to(tl.float32)
        scores = tl.where(row_ok[None, :], scores + bias, float("-inf"))
        scores = scores - tl.max(scores, axis=1)[:, None]
        probs = tl.exp(scores)
        probs = probs / tl.sum(probs, axis=1)[:, None]
        # out = probs @ v
        if IEEE:
            grad_v = tl.dot(tl.trans(probs), grad_out, input_precision="ieee")
            grad_probs = tl.dot(grad_out, tl.trans(v), input_precision="ieee")
        else:
            grad_v = tl.dot(tl.trans(probs), grad_out)
            grad_probs = tl.dot(grad_out, tl.trans(v))
        # softmax: dS = P * (dP - sum_j P dP)
        grad_scores = probs * (grad_probs - tl.sum(probs * grad_probs, axis=1)[:, None])
        grad_scores = tl.where(pair_ok, grad_scores, 0.0)
        tl.atomic_add(grad_mask_ptr + mask_offsets, grad_scores, mask=pair_ok)
        # scores = q_scaled @ k_unit^T
        if IEEE:
            grad_q_scaled = tl.dot(grad_scores, k_unit, input_precision="ieee")
            grad_k_unit = tl.dot(tl.trans(grad_scores), q_scaled, input_precision="ieee")
        else:
            grad_q_scaled = tl.dot(grad_scores, k_unit)
            grad_k_unit = tl.dot(tl.trans(grad_scores), q_scaled)
        tl.atomic_add(grad_scale_ptr + head, tl.sum(tl.sum(grad_q_scaled * q_unit, axis=1), axis=0))
        grad_q_unit = grad_q_scaled * scale
        # x / max(|x|, eps): the projection removes the radial part (no gradient through a clamped norm)
        q_radial = tl.where(q_norm > EPS, tl.sum(grad_q_unit * q_unit, axis=1), 0.0)
        k_radial = tl.where(k_norm > EPS, tl.sum(grad_k_unit * k_unit, axis=1), 0.0)
        grad_q = (grad_q_unit - q_unit * q_radial[:, None]) / q_norm[:, None]
        grad_k = (grad_k_unit - k_unit * k_radial[:, None]) / k_norm[:, None]
        dtype = grad_qkv_ptr.dtype.element_ty
        tl.store(grad_qkv_ptr + base + offsets, grad_q.to(dtype), mask=tile_ok)
        tl.store(grad_qkv_ptr + base + C + offsets, grad_k.to(dtype), mask=tile_ok)
        tl.store(grad_qkv_ptr + base + 2 * C + offsets, grad_v.to(dtype), mask=tile_ok)

    return window_attention_bwd


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _launch(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    windows, n, three_c = qkv.shape
    c = three_c // 3
    out = qkv.new_empty(windows, n, c)
    block_n = max(16, _next_pow2(n))
    block_d = max(16, _next_pow2(c // heads))
    if qkv.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "the Triton kernel runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)"
        )
    _kernel()[(windows, heads)](
        qkv,
        mask,
        scale,
        out,
        n,
        c,
        c // heads,
        mask.shape[0],
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        IEEE=qkv.dtype == torch.float32,
        EPS=NORM_EPS,
        num_warps=4 if block_n <= 64 else 8,
    )
    return out


def _launch_backward(qkv: Tensor, mask: Tensor, scale: Tensor, grad_out: Tensor,
                     heads: int) -> tuple[Tensor, Tensor, Tensor]:
    windows, n, three_c = qkv.shape
    c = three_c // 3
    grad_qkv = torch.empty_like(qkv)
    grad_mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # accumulated atomically
    grad_scale = torch.zeros(heads, dtype=torch.float32, device=scale.device)
    block_n = max(16, _next_pow2(n))
    _backward_kernel()[(windows, heads)](
        qkv,
        mask,
        scale,
        grad_out,
        grad_qkv,
        grad_mask,
        grad_scale,
        n,
        c,
        c // heads,
        mask.shape[0],
        BLOCK_N=block_n,
        BLOCK_D=max(16, _next_pow2(c // heads)),
        IEEE=qkv.dtype == torch.float32,
        EPS=NORM_EPS,
        num_warps=4 if block_n <= 64 else 8,
    )
    return grad_qkv, grad_mask.to(mask.dtype), grad_scale


@torch.library.custom_op("swinv2::window_attention", mutates_args=())
def _window_attention_op(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    return _launch(qkv, mask, scale, heads)


@_window_attention_op.register_fake
def _(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


@torch.library.custom_op("swinv2::window_attention_backward", mutates_args=())
def _window_attention_backward_op(qkv: Tensor, mask: Tensor, scale: Tensor, grad_out: Tensor,
                                  heads: int) -> tuple[Tensor, Tensor, Tensor]:
    return _launch_backward(qkv, mask, scale, grad_out.contiguous(), heads)


@_window_attention_backward_op.register_fake
def _(qkv: Tensor, mask: Tensor, scale: Tensor, grad_out: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(qkv), torch.empty_like(mask), scale.new_empty(heads)


def _setup_context(ctx, inputs, output) -> None:
    qkv, mask, scale, heads = inputs
    ctx.save_for_backward(qkv, mask, scale)
    ctx.heads = heads


def _backward(ctx, grad_out: Tensor):
    qkv, mask, scale = ctx.saved_tensors
    grad_qkv, grad_mask, grad_scale = _window_attention_backward_op(qkv, mask, scale, grad_out, ctx.heads)
    return grad_qkv, grad_mask, grad_scale, None


_window_attention_op.register_autograd(_backward, setup_context=_setup_context)


def window_attention(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    """Fused cosine window attention, differentiable in `qkv`, `mask` and `scale`.

    `qkv`: `(B * nW, N, 3 * C)` contiguous, the output of the qkv projection (q, k, v each `(heads, D)`);
    `mask`: `(nW or 1, heads, N, N)` contiguous, position bias and shift mask folded (window `i` uses
    `mask[i % nW]`); `scale`: `(heads,)` fp32, `exp(min(logit_scale, log 100))`. Returns `(B * nW, N, C)`.
    """
    windows, n, three_c = qkv.shape
    if (
        three_c % (3 * heads)
        or mask.shape[-2:] != (n, n)
        or mask.shape[1] != heads
        or windows % mask.shape[0]
    ):
        raise ValueError(
            f"window_attention: qkv {tuple(qkv.shape)}, mask {tuple(mask.shape)} and {heads} heads do not fit"
        )
    return _window_attention_op(qkv.contiguous(), mask.contiguous(), scale.float().contiguous(), heads)
