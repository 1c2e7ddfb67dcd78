"""The Triton source of the fused post-norm residual, `x + layer_norm(y)`; `kernels` launches it.

Kept apart, like `triton_attention`, so that importing the package never imports Triton. One program
normalises a tile of rows: `(BLOCK_R, BLOCK_C)` elements of the `(rows, C)` inputs.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def residual_layer_norm_fwd(
    x_ptr,
    y_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    low_ptr,
    ROWS,
    C,
    eps,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WRITE_LOW: tl.constexpr,
):
    """`out = x + (y - mean) / sqrt(var + eps) * weight + bias` over each row of C, in fp32, stored in out's
    dtype and, with WRITE_LOW, also in low's (the next Linear's input under autocast)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    ok = (rows < ROWS)[:, None] & col_ok[None, :]
    offsets = rows.to(tl.int64)[:, None] * C + cols[None, :]
    y = tl.load(y_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(y, axis=1) / C
    centred = tl.where(ok, y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    out = x + centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=ok)
    if WRITE_LOW:
        tl.store(low_ptr + offsets, out.to(low_ptr.dtype.element_ty), mask=ok)
