"""The Triton source of the fused window attention (forward and backward); `kernels` launches it.

Kept apart so that importing the package never imports Triton (a second of start-up and ~80 MiB of
resident memory): `kernels` imports this module the first time a kernel runs. One program computes one
(window, head); the shapes are described in `kernels`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """`a @ b`, in true fp32 when IEEE (tl.dot otherwise uses TF32 for fp32 inputs)."""
    if IEEE:  # noqa: SIM108 (a constexpr branch, resolved when Triton compiles)
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _row_norm(x, EPS: tl.constexpr):
    """`max(|x_i|, eps)` for every row, as F.normalize divides by."""
    return tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), EPS)


@triton.jit
def _softmax(scores, bias, row_ok):
    """`softmax(scores + bias)` over the keys; padded key columns get probability 0."""
    scores = tl.where(row_ok[None, :], scores + bias, float("-inf"))
    scores = scores - tl.max(scores, axis=1)[:, None]
    probs = tl.exp(scores)
    return probs / tl.sum(probs, axis=1)[:, None]


@triton.jit
def _tile(N, C, D, NUM_MASKS, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (window, head): its head, the valid rows / (row, column) / (query, key) pairs, and the
    offsets of its q tile in `(B * nW, N, 3C)` (k and v follow at +C, +2C), of its output tile in
    `(B * nW, N, C)` and of its mask tile in `(nW, heads, N, N)`."""
    window = tl.program_id(0)
    head = tl.program_id(1)
    heads = tl.num_programs(1)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    tile_ok = row_ok[:, None] & (cols[None, :] < D)
    pair_ok = row_ok[:, None] & row_ok[None, :]
    qkv_offsets = window.to(tl.int64) * N * 3 * C + head * D + rows[:, None] * (3 * C) + cols[None, :]
    out_offsets = window.to(tl.int64) * N * C + head * D + rows[:, None] * C + cols[None, :]
    mask_offsets = ((window % NUM_MASKS) * heads + head).to(tl.int64) * N * N + rows[:, None] * N + rows[None, :]
    return head, row_ok, tile_ok, pair_ok, qkv_offsets, out_offsets, mask_offsets


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
    head, row_ok, tile_ok, pair_ok, offsets, out_offsets, mask_offsets = _tile(N, C, D, NUM_MASKS, BLOCK_N, BLOCK_D)
    q = tl.load(qkv_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    k = tl.load(qkv_ptr + C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    v = tl.load(qkv_ptr + 2 * C + offsets, mask=tile_ok, other=0.0)
    scale = tl.load(scale_ptr + head).to(tl.float32)
    q = q * (scale / _row_norm(q, EPS))[:, None]
    k = k / _row_norm(k, EPS)[:, None]
    # Same rounding as the SDPA path: q and k are cast to the activation dtype before the product.
    scores = _dot(q.to(v.dtype), tl.trans(k.to(v.dtype)), IEEE)
    bias = tl.load(mask_ptr + mask_offsets, mask=pair_ok, other=0.0).to(tl.float32)
    probs = _softmax(scores, bias, row_ok)
    out = _dot(probs.to(v.dtype), v, IEEE)
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=tile_ok)


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
    """Recomputes the probabilities (in fp32) instead of reading saved ones; the mask's and the scale's
    gradients are shared by every window at the same position and added atomically."""
    head, row_ok, tile_ok, pair_ok, offsets, out_offsets, mask_offsets = _tile(N, C, D, NUM_MASKS, BLOCK_N, BLOCK_D)
    q = tl.load(qkv_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    k = tl.load(qkv_ptr + C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    v = tl.load(qkv_ptr + 2 * C + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    grad_out = tl.load(grad_out_ptr + out_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + head).to(tl.float32)
    # the forward again: normalise, scale, scores, bias + mask, softmax
    q_norm = _row_norm(q, EPS)
    k_norm = _row_norm(k, EPS)
    q_unit = q / q_norm[:, None]
    k_unit = k / k_norm[:, None]
    q_scaled = q_unit * scale
    scores = _dot(q_scaled, tl.trans(k_unit), IEEE)
    bias = tl.load(mask_ptr + mask_offsets, mask=pair_ok, other=0.0).to(tl.float32)
    probs = _softmax(scores, bias, row_ok)
    # out = probs @ v
    grad_v = _dot(tl.trans(probs), grad_out, IEEE)
    grad_probs = _dot(grad_out, tl.trans(v), IEEE)
    # softmax: dS = P * (dP - sum_j P dP)
    grad_scores = probs * (grad_probs - tl.sum(probs * grad_probs, axis=1)[:, None])
    grad_scores = tl.where(pair_ok, grad_scores, 0.0)
    tl.atomic_add(grad_mask_ptr + mask_offsets, grad_scores, mask=pair_ok)
    # scores = q_scaled @ k_unit^T
    grad_q_scaled = _dot(grad_scores, k_unit, IEEE)
    grad_k_unit = _dot(tl.trans(grad_scores), q_scaled, IEEE)
    tl.atomic_add(grad_scale_ptr + head, tl.sum(tl.sum(grad_q_scaled * q_unit, axis=1), axis=0))
    grad_q_unit = grad_q_scaled * scale
    # x / max(|x|, eps): the projection removes the radial part. A vector shorter than eps (a padded token's
    # key, 0) gets no gradient: 1 / eps overflows fp16 to inf, and inf times the token's zero input is NaN
    # in the weight gradient, which it otherwise does not reach.
    q_kept = q_norm > EPS
    k_kept = k_norm > EPS
    q_radial = tl.sum(grad_q_unit * q_unit, axis=1)
    k_radial = tl.sum(grad_k_unit * k_unit, axis=1)
    grad_q = tl.where(q_kept[:, None], (grad_q_unit - q_unit * q_radial[:, None]) / q_norm[:, None], 0.0)
    grad_k = tl.where(k_kept[:, None], (grad_k_unit - k_unit * k_radial[:, None]) / k_norm[:, None], 0.0)
    dtype = grad_qkv_ptr.dtype.element_ty
    tl.store(grad_qkv_ptr + offsets, grad_q.to(dtype), mask=tile_ok)
    tl.store(grad_qkv_ptr + C + offsets, grad_k.to(dtype), mask=tile_ok)
    tl.store(grad_qkv_ptr + 2 * C + offsets, grad_v.to(dtype), mask=tile_ok)
