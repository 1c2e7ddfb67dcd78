"""The Triton source of the row kernels: the fused post-norm residual and the window gather; `kernels`
launches them.

Kept apart, like `triton_attention`, so that importing the package never imports Triton. A row is one
token's C channels, contiguous; one program handles a tile of `(BLOCK_R, BLOCK_C)` values. Row indices
(`rows_ptr`) describe the shifted-window layout of one image, the same for every image of the batch.
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
    y_rows_ptr,
    ROWS,
    ROWS_PER_IMAGE,
    Y_ROWS_PER_IMAGE,
    C,
    eps,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WRITE_LOW: tl.constexpr,
    GATHER_Y: tl.constexpr,
):
    """`out = x + (y - mean) / sqrt(var + eps) * weight + bias` over each row of C, in fp32, stored in out's
    dtype and, with WRITE_LOW, also in low's (the next Linear's input under autocast). With GATHER_Y, row r
    of an image reads row `y_rows[r]` of that image's y (the window reverse and the unshift)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    row_ok = rows < ROWS
    ok = row_ok[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)
    offsets = rows[:, None] * C + cols[None, :]
    if GATHER_Y:
        y_row = tl.load(y_rows_ptr + rows % ROWS_PER_IMAGE, mask=row_ok, other=0).to(tl.int64)
        y_row += (rows // ROWS_PER_IMAGE) * Y_ROWS_PER_IMAGE
        y = tl.load(y_ptr + y_row[:, None] * C + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    else:
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


@triton.jit
def gather_rows_fwd(
    src_ptr,
    rows_ptr,
    out_ptr,
    ROWS,
    ROWS_PER_IMAGE,
    SRC_ROWS_PER_IMAGE,
    C,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Row r of an image's output is row `rows[r]` of that image's source (zeros where `rows[r] < 0`: the
    padding), converted to out's dtype."""
    out_rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    row_ok = out_rows < ROWS
    out_rows = out_rows.to(tl.int64)
    src_row = tl.load(rows_ptr + out_rows % ROWS_PER_IMAGE, mask=row_ok, other=-1).to(tl.int64)
    present = row_ok & (src_row >= 0)
    src_row += (out_rows // ROWS_PER_IMAGE) * SRC_ROWS_PER_IMAGE
    values = tl.load(src_ptr + src_row[:, None] * C + cols[None, :], mask=present[:, None] & col_ok[None, :],
                     other=0.0)
    tl.store(out_ptr + out_rows[:, None] * C + cols[None, :], values.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
