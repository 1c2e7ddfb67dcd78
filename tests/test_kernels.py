"""The Triton window-attention kernel against the exact attention path.

Without a GPU the kernel runs on CPU through Triton's interpreter (TRITON_INTERPRET=1, set here before
Triton is imported), on small shapes; with a GPU the same tests run it compiled on CUDA.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from conftest import cosine_window_attention_reference
from torch.utils.flop_counter import FlopCounterMode

from swinv2 import Swinv2Config, Swinv2Model, kernels
from swinv2.layers import (
    Swinv2Block,
    WindowAttention,
    shifted_window_mask,
    window_layout,
    window_partition,
    window_reverse,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not kernels.TRITON_FOUND, reason="needs triton"
)  # a dependency of torch's CUDA wheels


def _attention(dim: int, heads: int, window: int, seed: int) -> WindowAttention:
    torch.manual_seed(seed)
    attn = WindowAttention(dim, heads, window)
    with torch.no_grad():  # away from the initial values: per-head scales, non-zero biases
        attn.logit_scale.copy_(math.log(10.0) + 0.7 * torch.randn(heads, 1, 1))
        attn.q_bias.normal_(0, 0.5)
        attn.v_bias.normal_(0, 0.5)
        for p in attn.cpb_mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return attn.to(DEVICE).eval()


def _mask(attn: WindowAttention, grid: int, window: int, shift: int) -> torch.Tensor:
    mask = attn.position_bias().unsqueeze(0)
    if shift:
        mask = mask + shifted_window_mask(grid, grid, window, shift, DEVICE).unsqueeze(1)
    return mask.detach().contiguous()


@pytest.mark.parametrize(
    ("dim", "heads", "window", "grid", "shift"),
    [
        (32, 2, 4, 8, 2),  # 4 windows of 16 tokens, shifted: folded bias + shift mask per window
        (16, 2, 3, 6, 1),  # 9 tokens per window (not a power of 2), head dim 8 (padded to 16 in the kernel)
        (24, 3, 4, 4, 0),  # one window, head dim 8
        (16, 2, 1, 2, 0),  # window of one token: softmax over a single key
    ],
)
def test_kernel_matches_exact_path(dim: int, heads: int, window: int, grid: int, shift: int) -> None:
    attn = _attention(dim, heads, window, seed=dim + window)
    windows = (grid // window) ** 2
    x = torch.randn(2 * windows, window * window, dim, device=DEVICE)
    x[0, -1] = 0.0  # a padded token: k = 0 must give zero scores, not NaN
    mask = _mask(attn, grid, window, shift)
    with torch.no_grad():
        expected, _ = attn.forward_explicit(x, mask)
        qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv_bias())
        out = kernels.window_attention(qkv, mask, attn.logit_scale_exp().view(heads), heads)
        actual = attn.proj(out)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        # Triton's CPU interpreter gets bf16 dot products wrong (numpy has no bf16); the GPU checks bf16.
        pytest.param(torch.bfloat16, marks=pytest.mark.skipif(DEVICE == "cpu", reason="bf16 needs a GPU")),
    ],
)
def test_kernel_half_precision_close_to_fp32(dtype: torch.dtype) -> None:
    attn = _attention(32, 2, 4, seed=1)
    x = torch.randn(8, 16, 32, device=DEVICE)
    mask = _mask(attn, 8, 4, 2)
    with torch.no_grad():
        expected, _ = attn.forward_explicit(x, mask)
        qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv_bias()).to(dtype)
        out = kernels.window_attention(qkv, mask.to(dtype), attn.logit_scale_exp().view(2), 2)
        actual = attn.proj(out.float())
    assert out.dtype == dtype
    # bf16 keeps 8 bits of mantissa (fp16 11): q, k, v, the mask and the probabilities are each rounded once.
    torch.testing.assert_close(actual, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "layout",
    [
        dict(window_size=4),
        dict(window_size=[4, 2], window_layout="timm", always_partition=True),
        dict(window_size=[3, 5], window_layout="torchvision"),
    ],
    ids=["square", "timm-4x2-always-partition", "torchvision-3x5"],
)
def test_model_uses_kernel_and_matches_exact_path(layout: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel, the gathers and the fused norms on square windows, timm's and torchvision's rectangular
    ones and timm's always_partition (shifts larger than a stage's grid)."""
    monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", True)
    calls = []
    launch = kernels.window_attention
    monkeypatch.setattr(kernels, "window_attention", lambda *a: calls.append(1) or launch(*a))
    config = Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], **layout)
    torch.manual_seed(0)
    model = Swinv2Model(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 3, 36, 36, device=DEVICE)  # 9x9 patches: padded to the window in every block
    with torch.no_grad():
        fast = model(x).last_hidden_state
        assert len(calls) == sum(config.depths)  # every block went through the kernel
        exact = model(x, output_attentions=True).last_hidden_state  # the explicit path
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("dim", "heads", "window", "grid", "shift"),
    [
        (32, 2, 4, 8, 2),  # 4 shifted windows of 16 tokens: each mask's gradient sums over the batch
        (16, 2, 3, 6, 1),  # 9 tokens (padded to 16 in the kernel), head dim 8
        (16, 2, 1, 2, 0),  # a window of one token
    ],
)
def test_kernel_gradients_match_autograd(dim: int, heads: int, window: int, grid: int, shift: int) -> None:
    attn = _attention(dim, heads, window, seed=dim + window)
    windows = (grid // window) ** 2
    x = torch.randn(3 * windows, window * window, dim, device=DEVICE)
    x[0, -1] = 0.0  # a padded token (k = 0)
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv_bias()).detach()
    mask = _mask(attn, grid, window, shift)
    scale = attn.logit_scale_exp().view(heads).detach()
    grad_out = torch.randn(qkv.shape[0], qkv.shape[1], dim, device=DEVICE)
    results = []
    for fn in (kernels.window_attention, cosine_window_attention_reference):
        inputs = [t.clone().requires_grad_(True) for t in (qkv, mask, scale)]
        out = fn(*inputs, heads)
        out.backward(grad_out)
        results.append((out.detach(), *(t.grad for t in inputs)))
    for name, actual, expected in zip(("out", "qkv", "mask", "scale"), *results):
        # the padded key's gradient is scaled by 1 / eps in both (x / max(|x|, eps)); compare the rest
        if name == "qkv":
            actual, expected = actual[1:], expected[1:]
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_kernel_second_order_gradients_are_the_math_ones() -> None:
    """create_graph=True through the kernel (a gradient penalty) differentiates its plain-op math again: the
    same second-order gradients as the math alone, which is the reference's forward."""
    heads, window, grid = 2, 4, 8
    attn = _attention(16, heads, window, seed=5)
    x = torch.randn(2 * (grid // window) ** 2, window * window, 16, device=DEVICE)
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv_bias()).detach()
    mask = _mask(attn, grid, window, 2).detach()
    scale = attn.logit_scale_exp().view(heads).detach()
    expected = cosine_window_attention_reference(qkv, mask, scale, heads)
    torch.testing.assert_close(kernels.window_attention_math(qkv, mask, scale, heads), expected, rtol=1e-5, atol=1e-5)
    results = []
    for fn in (kernels.window_attention, kernels.window_attention_math):
        inputs = [t.clone().requires_grad_(True) for t in (qkv, mask, scale)]
        (g,) = torch.autograd.grad(fn(*inputs, heads).square().sum(), inputs[0], create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), inputs))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_kernel_padded_keys_keep_fp16_gradients_finite() -> None:
    """A padded key (k = 0) gets no gradient instead of 1 / eps = 1e12 times one, which is inf in fp16 (and
    NaN in the qkv weight's gradient once multiplied by the token's zero input)."""
    attn = _attention(32, 2, 4, seed=3)
    x = torch.randn(8, 16, 32, device=DEVICE)
    x[:, -3:] = 0.0  # three padded tokens in every window
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv_bias()).detach().half().requires_grad_(True)
    mask = _mask(attn, 8, 4, 2).half().requires_grad_(True)
    scale = attn.logit_scale_exp().view(2).detach().requires_grad_(True)
    out = kernels.window_attention(qkv, mask, scale, 2)
    out.backward(torch.randn_like(out))
    assert all(torch.isfinite(t.grad).all() for t in (qkv, mask, scale))
    assert (qkv.grad[:, -3:, 32:64] == 0).all() and qkv.grad[:, :-3, 32:64].abs().sum() > 0


def test_model_trains_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on the kernels (attention, layout gathers) gives the fast path's gradients (SDPA / broadcast
    attention, ATen layout moves), the input's included."""
    config = Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                          window_size=4, drop_path_rate=0.0)
    torch.manual_seed(0)
    model = Swinv2Model(config).to(DEVICE).train()
    x = torch.randn(2, 3, 36, 36, device=DEVICE, requires_grad=True)  # 9x9 patches: padded, shifted windows
    grads = []
    for use_kernel in (True, False):
        monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", use_kernel)
        monkeypatch.setattr(kernels, "TRITON_FOUND", use_kernel)
        model.zero_grad()
        x.grad = None
        model(x).pooler_output.square().sum().backward()
        grads.append({"input": x.grad.clone(), **{n: p.grad.clone() for n, p in model.named_parameters()}})
    for name, expected in grads[1].items():  # fp32 sums in another order: 1e-5 of the gradient's size
        torch.testing.assert_close(grads[0][name], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_kernel_rejects_mismatched_shapes() -> None:
    qkv = torch.randn(4, 16, 48, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.window_attention(
            qkv, torch.zeros(3, 2, 16, 16, device=DEVICE), torch.ones(2, device=DEVICE), 2
        )


@pytest.mark.parametrize(
    ("rows", "channels", "low"),
    [
        (37, 96, None),  # rows not a multiple of the tile's 32
        (50, 40, torch.float16),  # C not a power of 2; the next Linear's half-precision input written too
        (5, 768, torch.bfloat16),  # 4 rows per tile
        (3, 4608, None),  # wider than one 4096-value tile
    ],
)
def test_residual_layer_norm_matches_aten(rows: int, channels: int, low: torch.dtype | None) -> None:
    torch.manual_seed(rows + channels)
    norm = torch.nn.LayerNorm(channels, eps=1e-5).to(DEVICE)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)
        norm.bias.normal_(0.0, 0.5)
    x = torch.randn(rows, channels, device=DEVICE)
    y = 3.0 + 2.0 * torch.randn(rows, channels, device=DEVICE)  # mean and scale away from 0 and 1
    if low is not None:
        y = y.to(low)  # under autocast the branch output arrives in low precision
    with torch.no_grad():
        out, out_low = kernels.residual_layer_norm(x, y, norm, low)
        expected = x + torch.nn.functional.layer_norm(y.float(), (channels,), norm.weight, norm.bias, norm.eps)
    assert out.dtype == x.dtype
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if low is None:
        assert out_low is None
    else:
        assert out_low.dtype == low
        # Triton's CPU interpreter truncates to bf16 instead of rounding (numpy has no bf16): one ulp there
        ulp = 2.0**-7 if DEVICE == "cpu" and low == torch.bfloat16 else 0.0
        torch.testing.assert_close(out_low, out.to(low), rtol=ulp, atol=0)


@pytest.mark.parametrize("shift_first", [False, True], ids=["pad-then-roll", "roll-then-pad"])
@pytest.mark.parametrize(
    ("height", "width", "window", "shift"),
    # padded, shifted, one window; a grid smaller than the window's shift (a crop that flatten could keep)
    [(8, 8, 4, 2), (9, 7, 4, 2), (6, 10, 3, 1), (5, 5, 5, 0), (3, 4, 4, 0), (2, 1, 4, 2)],
)
def test_window_layout_is_the_layout_moves(height: int, width: int, window: int, shift: int, shift_first: bool) -> None:
    """Indexing with `window_layout` equals pad + roll + partition, and reverse + roll + crop (transformers'
    order), or roll + pad + partition and reverse + crop + roll (timm's, `shift_first`), as timm writes them."""
    x = torch.randn(2, height, width, 5)
    pad_h, pad_w = (-height) % window, (-width) % window
    if shift_first:
        moved = torch.nn.functional.pad(torch.roll(x, (-shift, -shift), (1, 2)), (0, 0, 0, pad_w, 0, pad_h))
    else:
        moved = torch.roll(torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h)), (-shift, -shift), (1, 2))
    windows = window_partition(moved, window)
    back = window_reverse(windows, window, height + pad_h, width + pad_w)
    if shift_first:
        back = torch.roll(back[:, :height, :width], (shift, shift), (1, 2))
    else:
        back = torch.roll(back, (shift, shift), (1, 2))[:, :height, :width]
    to_windows, from_windows = window_layout(height, width, window, shift, shift_first)
    assert to_windows.dtype == from_windows.dtype == torch.int32
    assert to_windows.is_contiguous() and from_windows.is_contiguous()  # the kernels read them as flat arrays
    flat = torch.cat((x.reshape(2, -1, 5), torch.zeros(2, 1, 5)), dim=1)  # row -1: the zero row
    torch.testing.assert_close(flat[:, to_windows.long()].reshape(windows.shape), windows, rtol=0, atol=0)
    gathered = windows.reshape(2, -1, 5)[:, from_windows.long()]
    torch.testing.assert_close(gathered.view(x.shape), back, rtol=0, atol=0)


@pytest.mark.parametrize(("channels", "dtype"), [(5, None), (96, torch.float16), (130, torch.bfloat16)])
def test_gather_rows_picks_rows_and_zero_fills(channels: int, dtype: torch.dtype | None) -> None:
    torch.manual_seed(channels)
    x = torch.randn(3, 11, channels, device=DEVICE)
    rows = torch.tensor([4, -1, 0, 10, 10, -1, 7], dtype=torch.int32, device=DEVICE)
    out = kernels.gather_rows(x, rows.repeat_interleave(2)[::2], dtype)  # strided indices are read right too
    zero_row = torch.cat((x, x.new_zeros(3, 1, channels)), dim=1)
    expected = zero_row[:, rows.long()].to(dtype or x.dtype)
    assert out.shape == (3, 7, channels) and out.dtype == expected.dtype
    ulp = 2.0**-7 if DEVICE == "cpu" and dtype == torch.bfloat16 else 0.0  # the interpreter truncates bf16
    torch.testing.assert_close(out, expected, rtol=ulp, atol=0)
    assert kernels.gather_rows(x[:0], rows).shape == (0, 7, channels)


@pytest.mark.parametrize("shift", [0, 2])
def test_gathers_backward_is_the_layout_moves_backward(shift: int) -> None:
    """Training through the gathers: the gradients of pad + roll + partition (with the cast to half) and of
    reverse + roll + crop, exactly."""
    height, width, window = 7, 9, 4
    to_windows, from_windows = (t.to(DEVICE) for t in window_layout(height, width, window, shift))
    x = torch.randn(2, height, width, 8, device=DEVICE, requires_grad=True)
    grad = torch.randn(2, to_windows.numel(), 8, device=DEVICE).half()
    windows = kernels.gather_rows(x.view(2, -1, 8), to_windows, torch.float16, from_windows)
    (windows.float() * grad.float()).sum().backward()
    pad_h, pad_w = (-height) % window, (-width) % window
    reference = x.detach().clone().requires_grad_()
    moved = torch.roll(torch.nn.functional.pad(reference.half(), (0, 0, 0, pad_w, 0, pad_h)), (-shift, -shift), (1, 2))
    (window_partition(moved, window).reshape(grad.shape).float() * grad.float()).sum().backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, reference.grad, rtol=0, atol=0)

    y = torch.randn(2, to_windows.numel(), 8, device=DEVICE, requires_grad=True)
    grad = torch.randn(2, height, width, 8, device=DEVICE)
    (kernels.gather_rows(y, from_windows, None, to_windows).view(grad.shape) * grad).sum().backward()
    reference = y.detach().clone().requires_grad_()
    back = window_reverse(reference.view(-1, window * window, 8), window, height + pad_h, width + pad_w)
    (torch.roll(back, (shift, shift), (1, 2))[:, :height, :width] * grad).sum().backward()
    torch.testing.assert_close(y.grad, reference.grad, rtol=0, atol=0)  # padding rows: zero gradient
    # second order: the backward is itself a differentiable gather
    (g,) = torch.autograd.grad(kernels.gather_rows(y, from_windows, None, to_windows).square().sum(), y,
                               create_graph=True)
    (gg,) = torch.autograd.grad(g.sin().sum(), y)
    torch.testing.assert_close(gg, 2 * (2 * y.detach()).cos() * (to_windows >= 0)[None, :, None], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="pass inverse"):
        kernels.gather_rows(y, from_windows)


def test_residual_layer_norm_reads_y_through_row_indices() -> None:
    torch.manual_seed(1)
    norm = torch.nn.LayerNorm(24).to(DEVICE)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)
        norm.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 3, 5, 24, device=DEVICE)  # 15 rows per image
    y = torch.randn(2, 16, 24, device=DEVICE)  # 16 rows per image (one of padding)
    y_rows = torch.randperm(16, device=DEVICE)[:15].to(torch.int32)
    with torch.no_grad():
        out, _ = kernels.residual_layer_norm(x, y, norm, None, y_rows.repeat_interleave(2)[::2])  # strided
        expected = x + norm(y[:, y_rows.long()].view(x.shape))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.residual_layer_norm(x, y, norm, None, y_rows[:14])


def _record_row_kernels(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record each call of the row kernels: its low-precision dtype and, for the norm, whether y is gathered."""
    calls: list[tuple] = []
    norm, gather = kernels.residual_layer_norm, kernels.gather_rows

    def recording_norm(x, y, module, low_dtype=None, y_rows=None):
        calls.append(("norm", low_dtype, y_rows is not None))
        return norm(x, y, module, low_dtype, y_rows)

    def recording_gather(x, rows, dtype=None, inverse=None):
        calls.append(("gather", dtype))
        return gather(x, rows, dtype, inverse)

    monkeypatch.setattr(kernels, "residual_layer_norm", recording_norm)
    monkeypatch.setattr(kernels, "gather_rows", recording_gather)
    return calls


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).last_hidden_state


def test_model_fuses_residual_norms_and_matches_unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager inference takes the fused `x + norm(y)` at the end of both branches of every block and gives
    the unfused model's outputs."""
    config = Swinv2Config(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                          window_size=4)
    torch.manual_seed(0)
    model = Swinv2Model(config).to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 3, 36, 36, device=DEVICE)  # 9x9 patches: padded and shifted windows
    calls = _record_row_kernels(monkeypatch)
    outputs = []
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", use_kernels)
        monkeypatch.setattr(kernels, "TRITON_FOUND", use_kernels)
        with torch.no_grad():
            outputs.append(model(x, output_hidden_states=True))
    # per block: the gather into windows, then the two residual norms (the first reading y through indices)
    assert calls == [("gather", None), ("norm", None, True), ("norm", None, False)] * sum(config.depths)
    for fast, plain in zip(outputs[0].hidden_states, outputs[1].hidden_states):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # Tracers and dispatch modes cannot see into a raw kernel launch: they get the ordinary ops.
    monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", True)
    monkeypatch.setattr(kernels, "TRITON_FOUND", True)
    calls.clear()
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(x)
    with torch.no_grad():
        traced = torch.jit.trace(_LastHiddenState(model), x, check_trace=False)
        assert calls == [] and flops.get_total_flops() > 0
        torch.testing.assert_close(traced(x), outputs[1].last_hidden_state, rtol=1e-5, atol=1e-5)


class _Fp32LayerNorm(torch.nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def test_block_under_autocast_feeds_the_mlp_the_fused_low_precision_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast the residual stream stays fp32 (CUDA autocast runs layer_norm in fp32) and the fused
    pass also writes the MLP's input in autocast's dtype, as autocast would cast it: same outputs."""
    torch.manual_seed(0)
    block = Swinv2Block(16, 2, window=4, shift=2).to(DEVICE).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 9, 9, 16, device=DEVICE)
    calls = _record_row_kernels(monkeypatch)
    monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", True)
    outputs = []
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.float16):
        outputs.append(block(x)[0])
        # the reference: unfused, with the norms in fp32 as CUDA autocast runs them (CPU autocast does not)
        for name in ("norm1", "norm2"):
            reference = _Fp32LayerNorm(16).to(DEVICE)
            reference.load_state_dict(getattr(block, name).state_dict())
            setattr(block, name, reference)
        outputs.append(block(x)[0])
    # the windows gathered in half precision; the attention branch's norm writes the MLP's half input too;
    # the reference (its norms not plain LayerNorms) still gathers, then normalises with ATen
    assert calls == [("gather", torch.float16), ("norm", torch.float16, True), ("norm", None, False),
                     ("gather", torch.float16), ("gather", None)]
    assert outputs[0].dtype == outputs[1].dtype == torch.float32
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_fused_block_takes_a_non_contiguous_input(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = Swinv2Block(8, 2, window=4, shift=2).to(DEVICE).eval()
    x = torch.randn(2, 9, 6, 8, device=DEVICE).transpose(1, 2)  # (2, 6, 9, 8), not contiguous
    outputs = []
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "INTERPRET_ON_CPU", use_kernels)
        monkeypatch.setattr(kernels, "TRITON_FOUND", use_kernels)
        with torch.no_grad():
            outputs.append(block(x)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
