"""Fused kernels for CUDA (Triton): window attention, forward and backward; the post-norm residual and the
shifted-window gather, forward.

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

The post-norm residual `x + layer_norm(y)` of every block branch runs as one pass in inference: under
autocast it replaces four launches (y cast to fp32, the norm, the add, the next Linear's input cast to
bf16) and two thirds of their memory traffic. It also reads the attention branch's output straight from
the window-major layout (window reverse, unshift and crop as row indices), and one gather builds the
shifted windows (cast, pad, roll and partition): in inference the layout moves around each attention cost
one pass. In training the two moves are gathers, each the other's backward.
"""

from __future__ import annotations

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


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _grid_and_blocks(qkv: Tensor, heads: int) -> tuple[tuple[int, int], dict]:
    """The launch grid, one program per (window, head), and the block sizes (tiles padded to powers of 2)."""
    if qkv.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernel runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)")
    windows, n, three_c = qkv.shape
    block_n = max(16, _next_pow2(n))
    return (windows, heads), dict(
        BLOCK_N=block_n,
        BLOCK_D=max(16, _next_pow2(three_c // 3 // heads)),
        IEEE=qkv.dtype == torch.float32,
        EPS=NORM_EPS,
        num_warps=4 if block_n <= 64 else 8,
    )


def _launch(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    windows, n, three_c = qkv.shape
    c = three_c // 3
    out = qkv.new_empty(windows, n, c)
    grid, blocks = _grid_and_blocks(qkv, heads)
    from .triton_attention import window_attention_fwd  # imports Triton: only when a kernel first runs

    window_attention_fwd[grid](qkv, mask, scale, out, n, c, c // heads, mask.shape[0], **blocks)
    return out


def _launch_backward(
    qkv: Tensor, mask: Tensor, scale: Tensor, grad_out: Tensor, heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    _, n, three_c = qkv.shape
    c = three_c // 3
    grad_qkv = torch.empty_like(qkv)
    grad_mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # accumulated atomically
    grad_scale = torch.zeros(heads, dtype=torch.float32, device=scale.device)
    grid, blocks = _grid_and_blocks(qkv, heads)
    from .triton_attention import window_attention_bwd

    window_attention_bwd[grid](
        qkv, mask, scale, grad_out, grad_qkv, grad_mask, grad_scale, n, c, c // heads, mask.shape[0], **blocks
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
    if torch.is_grad_enabled():  # create_graph=True: autograd of the plain ops, which are differentiable again
        needs = ctx.needs_input_grad[:3]
        wanted = [t for t, need in zip((qkv, mask, scale), needs) if need]
        with torch.enable_grad():
            out = window_attention_math(qkv, mask, scale, ctx.heads)
            grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
        return (*(next(grads) if need else None for need in needs), None)
    grad_qkv, grad_mask, grad_scale = _window_attention_backward_op(qkv, mask, scale, grad_out, ctx.heads)
    return grad_qkv, grad_mask, grad_scale, None


_window_attention_op.register_autograd(_backward, setup_context=_setup_context)


def normalize(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """`F.normalize(x, dim=-1)` (times `scale`, folded into the reciprocal norm), whose gradient is 0 for
    vectors shorter than `NORM_EPS` (only padded tokens' keys, which are 0) instead of 1 / eps = 1e12 times
    theirs, which overflows fp16 to inf and meets the padded token's zero input as NaN in the weight gradient
    (as in the kernels' and the CPU Function's backward passes)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)
    if x.requires_grad or torch.jit.is_tracing():  # (a trace's check runs without grad: one graph for both)
        x = torch.where(norm > NORM_EPS, x, x.detach())
    return x / norm if scale is None else x * (scale / norm)


def window_attention_math(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
    """`window_attention` in plain differentiable ops (for second-order gradients): the same arguments and
    result, computed in fp32 at least."""
    b_, n, three_c = qkv.shape
    d = three_c // (3 * heads)
    acc = torch.promote_types(qkv.dtype, torch.float32)
    q, k, v = qkv.to(acc).view(b_, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    windows = mask.shape[0]
    scores = normalize(q, scale.to(acc).view(1, heads, 1, 1)) @ normalize(k).transpose(-2, -1)
    scores = scores.view(b_ // windows, windows, heads, n, n) + mask.to(acc)
    out = scores.view(b_, heads, n, n).softmax(-1) @ v
    return out.transpose(1, 2).reshape(b_, n, heads * d).to(qkv.dtype)


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


def _row_tiles(rows: int, c: int) -> tuple[tuple[int], dict]:
    """Launch grid and tile sizes of the row kernels: tiles of 4096 values, enough work per program and
    few registers each."""
    block_c = _next_pow2(c)
    block_r = max(1, 4096 // block_c)
    return (-(-rows // block_r),), dict(BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4 if block_c <= 4096 else 8)


def residual_layer_norm(
    x: Tensor,
    y: Tensor,
    norm: torch.nn.LayerNorm,
    low_dtype: torch.dtype | None = None,
    y_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """`x + norm(y)` computed in fp32 in one pass, for inference (no autograd): `(out, out in low_dtype)`.

    `x`: `(B, ..., C)`, `norm` a LayerNorm over C with weight and bias. `out` has x's shape and dtype; the
    second output, written in the same pass when `low_dtype` is given, is the input the next Linear casts to
    under autocast (None otherwise). Equals autocast's `x + layer_norm(y.float())` up to fp32 rounding.
    `y`: x's shape, or with `y_rows` (int32, one index per row of an image of x) `(B, ..., C)` holding
    `len(y) / B` rows per image, of which x's row `r` of each image takes row `y_rows[r]`.
    """
    c = x.shape[-1]
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    low = torch.empty(x.shape, dtype=low_dtype, device=x.device) if low_dtype is not None else None
    rows = x.numel() // c
    if y_rows is None:
        if y.shape != x.shape:
            raise ValueError(f"residual_layer_norm: x {tuple(x.shape)} and y {tuple(y.shape)} differ")
        rows_per_image = y_rows_per_image = rows
    else:
        rows_per_image, y_rows_per_image = y_rows.numel(), y.numel() // (x.shape[0] * c or 1)
        if rows != x.shape[0] * rows_per_image or y.numel() != x.shape[0] * y_rows_per_image * c:
            raise ValueError(f"residual_layer_norm: x {tuple(x.shape)}, y {tuple(y.shape)} and "
                             f"{y_rows.numel()} row indices do not fit")
    if rows == 0:
        return out, low
    from .triton_rows import residual_layer_norm_fwd

    grid, tiles = _row_tiles(rows, c)
    residual_layer_norm_fwd[grid](
        x, y, norm.weight, norm.bias, out, low if low is not None else out,
        y_rows.contiguous() if y_rows is not None else out, rows, rows_per_image, y_rows_per_image, c, norm.eps,
        WRITE_LOW=low is not None, GATHER_Y=y_rows is not None, **tiles,
    )
    return out, low


def _gather_rows(x: Tensor, rows: Tensor, dtype: torch.dtype) -> Tensor:
    b, src_rows, c = x.shape
    x = x.contiguous()
    out = torch.empty(b, rows.numel(), c, dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    from .triton_rows import gather_rows_fwd

    grid, tiles = _row_tiles(out.numel() // c, c)
    gather_rows_fwd[grid](x, rows.contiguous(), out, out.numel() // c, rows.numel(), src_rows, c, **tiles)
    return out


class _GatherRows(torch.autograd.Function):
    """A gather whose backward is the gather by the inverse index (the layout moves are permutations of
    the rows, plus padding rows that receive no gradient), itself differentiable: any order of gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, inverse: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.save_for_backward(rows, inverse)
        ctx.x_dtype = x.dtype
        return _gather_rows(x, rows, dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, inverse = ctx.saved_tensors
        return gather_rows(grad, inverse, ctx.x_dtype, rows), None, None, None


def gather_rows(
    x: Tensor, rows: Tensor, dtype: torch.dtype | None = None, inverse: Tensor | None = None
) -> Tensor:
    """The rows of each image of `x` `(B, R, C)` that `rows` picks (int32 `(R_out,)`; -1: a row of zeros),
    in `dtype` (x's when None): `(B, R_out, C)`. One pass for what would be a cast, a pad, a roll and a
    window partition.

    Differentiable in `x` when `inverse` `(R,)` is given: for each row of x, the output row that holds it
    (every row of x must be picked exactly once, as in a window layout).
    """
    dtype = dtype or x.dtype
    if x.requires_grad and torch.is_grad_enabled():
        if inverse is None:
            raise ValueError("gather_rows: x requires grad; pass inverse, the index that takes the rows back")
        return _GatherRows.apply(x, rows, inverse, dtype)
    return _gather_rows(x, rows, dtype)
