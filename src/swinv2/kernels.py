"""A fused window-attention kernel for CUDA (Triton), forward only.

One program computes one (window, head): it reads q, k and v straight from the fused qkv projection
`(B * nW, N, 3 * C)` (no permute copies), normalises q and k in fp32, multiplies q by the head's logit
scale, adds the folded bias + shift mask of its window, takes the softmax and the value product, and writes
`(B * nW, N, C)` ready for the output projection. The `(N, N)` scores never leave the chip, and the mask
is read per window from the cached `(nW, heads, N, N)` tensor instead of being expanded to every window
of the batch.

It is used for inference (no autograd) only; training keeps SDPA on the same folded mask, whose backward
PyTorch provides. With `TRITON_INTERPRET=1` in the environment before Triton is imported, the same kernel
runs on CPU tensors through Triton's interpreter (slowly): that is how the tests check it without a GPU.
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


@torch.library.custom_op("swinv2::window_attention", mutates_args=())
def _window_attention_op(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    return _launch(qkv, mask, scale, heads)


@_window_attention_op.register_fake
def _(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


def window_attention(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    """Fused cosine window attention, forward only.

    `qkv`: `(B * nW, N, 3 * C)` contiguous, the output of the qkv projection (q, k, v each `(heads, D)`);
    `mask`: `(nW or 1, heads, N, N)` contiguous, position bias and shift mask folded (window `i` uses
    `mask[i % nW]`); `scale`: `(heads,)` fp32, `exp(min(logit_scale, log 100))`. Returns `(B * nW, N, C)`.
    """
    if qkv.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("swinv2.kernels.window_attention has no backward; use it under torch.no_grad()")
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
