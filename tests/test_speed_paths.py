"""The speed-only code paths give the exact path's numbers: the fused CPU Linear, the bf16 fallback on
CPUs without bf16 units, and torch.compile without graph breaks or a recompile per input size."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import cosine_window_attention_reference

import swinv2.layers as layers
import swinv2.modeling as modeling
from swinv2 import Swinv2Config, Swinv2ForImageClassification
from swinv2.layers import linear

SMALL = dict(
    image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5
)


def _model(**overrides) -> Swinv2ForImageClassification:
    torch.manual_seed(0)
    model = Swinv2ForImageClassification(Swinv2Config(**{**SMALL, **overrides})).eval()
    with torch.no_grad():  # away from the initial values (zero biases would hide a dropped bias)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(params=[True, False], ids=["fp32-onednn", "fp32-mkl"])
def fp32_gemms(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both routes of CPU fp32 GEMMs, whichever this machine's CPU takes: oneDNN with the bias and GELU in
    its epilogue (AVX-512), or F.linear (MKL) with GELU afterwards (AVX2)."""
    onednn = request.param and layers._ONEDNN_LINEAR is not None
    monkeypatch.setattr(layers, "_ONEDNN_FP32", onednn)
    return onednn


@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
def test_linear_matches_reference(gelu: str | None, fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    onednn_calls = []
    onednn = layers._onednn_linear
    monkeypatch.setattr(layers, "_onednn_linear", lambda *a: onednn_calls.append(a[0].dtype) or onednn(*a))
    x, w, b = torch.randn(2, 37, 24), torch.randn(40, 24), torch.randn(40)
    expected = F.linear(x, w, b) if gelu is None else F.gelu(F.linear(x, w, b), approximate=gelu)
    with torch.no_grad():
        actual = linear(x, w, b, gelu)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = linear(x, w, b, gelu)
    assert half.dtype == torch.bfloat16  # as autocast's own linear would give
    torch.testing.assert_close(half.float(), expected, rtol=0.05, atol=0.1)
    # fp32 through oneDNN on its route, bf16 wherever oneDNN has a bf16 GEMM
    assert onednn_calls == [torch.float32] * fp32_gemms + [torch.bfloat16] * layers._ONEDNN_BF16


def test_linear_keeps_autograd() -> None:
    x = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    linear(x, w, None, "none").sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.parametrize("gelu", ["none", "tanh"])
def test_linear_gelu_in_place_where_autograd_records_nothing(gelu: str) -> None:
    """The route CUDA inference takes (grad mode on, nothing requiring grad): GELU overwrites the GEMM's
    output, and neither the input nor the weights change."""
    x, w, b = torch.randn(2, 37, 24), torch.randn(40, 24), torch.randn(40)
    copies = [t.clone() for t in (x, w, b)]
    expected = F.gelu(F.linear(x, w, b), approximate=gelu)
    torch.testing.assert_close(linear(x, w, b, gelu), expected, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(t, c) for t, c in zip((x, w, b), copies))


def test_fast_path_matches_exact_path() -> None:
    model = _model()
    x = torch.randn(3, 3, 44, 40)  # padded to the window in every block
    with torch.no_grad():
        fast = model(x).logits
        exact = model(
            x, output_attentions=True
        ).logits  # the explicit attention, no fused Linear in attention
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [False, True])  # the shifted windows in one run, or whole and border apart
@pytest.mark.parametrize("per_thread", [1, 5, 24, 4096])  # one window, runs of windows, whole images, all
def test_cpu_inference_in_groups_matches_exact_path(
    per_thread: int, split: bool, fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU inference runs each block's attention on groups of windows and its MLP on groups of tokens; the
    numbers are the exact path's, for padded, shifted grids and groups that split images unevenly, with the
    shifted windows in one run or split by region."""
    model = _model()
    x = torch.randn(3, 3, 44, 40)  # grids of 11x10 and 6x5 patches: padded to the window 4 in both stages
    with torch.no_grad():
        exact = model(x, output_attentions=True).logits
    calls = []
    forward = layers.WindowAttention.forward_rows
    monkeypatch.setattr(
        layers.WindowAttention, "forward_rows", lambda self, *a: calls.append(a[0].shape[0]) or forward(self, *a)
    )
    monkeypatch.setattr(layers, "CPU_GROUP_TOKENS_PER_THREAD", per_thread)
    if split:
        monkeypatch.setattr(layers, "REGION_MASK_BYTES", 0)
    with torch.inference_mode():
        grouped = model(x).logits
    torch.testing.assert_close(grouped, exact, rtol=1e-5, atol=1e-5)
    windows = 3 * (3 * 3 + 2 * 2)  # padded grids of 12x12 and 8x8 patches: 9 and 4 windows of 4x4 per image
    assert sum(calls) == 2 * windows  # every window attended once, in the two blocks of each stage
    tokens = per_thread * torch.get_num_threads()
    assert all(n * 16 <= max(tokens, 16) for n in calls)  # a group is one window at least, else <= tokens
    # one group per block when it holds everything, split: the shifted block's whole and border windows apart
    # (stage 2 is not shifted: its 4x4 grid at image_size fits one window)
    assert len(calls) == 4 + split if tokens >= 3 * 9 * 16 else len(calls) > 4 + split


@pytest.mark.parametrize(
    "layout",
    [
        dict(window_layout="timm", window_size=[4, 2]),
        dict(window_layout="timm", window_size=[[2, 6], 3], always_partition=True),
        dict(window_layout="torchvision", window_size=[3, 5]),
    ],
    ids=["timm-4x2", "timm-per-stage-always-partition", "torchvision-3x5"],
)
@pytest.mark.parametrize("split", [False, True])
def test_cpu_inference_with_rectangular_windows_matches_exact_path(
    layout: dict, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timm's and torchvision's rectangular and per-stage windows, and windows that never shrink but shift
    (always_partition), through the grouped CPU inference and the training path: the exact path's numbers."""
    model = _model(**layout, drop_path_rate=0.0)
    x = torch.randn(3, 3, 44, 28)
    with torch.no_grad():
        exact = model(x, output_attentions=True).logits
    monkeypatch.setattr(layers, "CPU_GROUP_TOKENS_PER_THREAD", 24)  # several groups per image
    if split:
        monkeypatch.setattr(layers, "REGION_MASK_BYTES", 0)
    with torch.inference_mode():
        grouped = model(x).logits
    torch.testing.assert_close(grouped, exact, rtol=1e-5, atol=1e-5)
    pixels = x.clone().requires_grad_()
    model.train()(pixels).logits.sum().backward()
    trained = pixels.grad
    pixels.grad = None
    model(pixels, output_attentions=True).logits.sum().backward()
    torch.testing.assert_close(trained, pixels.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid", [(12, 8), (11, 10), (8, 8), (4, 16), (5, 3)])
def test_region_masks_are_the_folded_mask_of_their_windows(
    grid: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouped CPU inference keeps one mask for the windows the shift left whole and one per border window
    where the folded mask would be large; they are the folded mask's rows of those windows, and the layout
    takes every grid row there and back. Where it would be small, every window is in one run."""
    block = layers.Swinv2Block(8, 2, window=4, shift=2).eval()
    h, w = grid
    hp, wp = block._padded(h, w)
    with torch.inference_mode():
        folded = block.attention_mask(hp, wp, torch.float32, torch.device("cpu"))
        assert not block.splits_regions(hp, wp)
        one_run, nothing = block.region_masks(hp, wp, torch.float32, torch.device("cpu"))
        assert torch.equal(one_run, folded) and nothing.shape[0] == 0
        assert block.regions(h, w, torch.device("cpu")).counts == (hp * wp // 16, 0)
    monkeypatch.setattr(layers, "REGION_MASK_BYTES", folded.numel() * 4 - 1)  # just over the limit
    block.clear_cache()
    assert block.splits_regions(hp, wp)
    whole, border = layers.window_regions(hp, wp, 4, 2)
    per_row = wp // 4
    expected_border = [i for i in range(hp // 4 * per_row) if i // per_row == hp // 4 - 1 or i % per_row == per_row - 1]
    assert border.tolist() == expected_border and sorted(whole.tolist() + border.tolist()) == list(range(hp * wp // 16))
    with torch.inference_mode():
        folded = block.attention_mask(hp, wp, torch.float32, torch.device("cpu"))
        whole_mask, border_mask = block.region_masks(hp, wp, torch.float32, torch.device("cpu"))
    assert whole_mask.shape[0] == 1 and torch.equal(folded[whole], whole_mask.expand(len(whole), -1, -1, -1))
    assert torch.equal(folded[border], border_mask)
    layout = block.regions(h, w, torch.device("cpu"))
    x = torch.randn(3, h * w, 5)
    regions = [x.index_select(1, rows.clamp(min=0)).masked_fill_((rows < 0)[:, None], 0) for rows in layout.to_windows]
    assert [r.shape[1] for r in regions] == [16 * len(whole), 16 * len(border)]
    region_major = torch.cat([r.reshape(-1, 5) for r in regions])
    assert torch.equal(region_major[layout.from_windows(3)].view_as(x), x)
    unshifted = layers.window_regions(hp, wp, 4, 0)
    assert unshifted[0].tolist() == list(range(hp * wp // 16)) and unshifted[1].numel() == 0


@pytest.mark.parametrize("variant", ["default", "float64", "relu", "wrapped-layers", "plain-norms"])
def test_cpu_inference_groups_in_scratch_buffers_match_exact_path(
    variant: str, fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's projections, attention temporaries and norms are written into scratch buffers (no fresh
    tensor to page-fault in) where the layers allow it, and each layer that does not allow it (another
    dtype, activation, a wrapped Linear, a LayerNorm without weights) runs its own forward: the same numbers
    as the exact path either way."""
    monkeypatch.setattr(layers, "CPU_GROUP_TOKENS_PER_THREAD", 24)  # several groups per image
    model = _model(hidden_act="relu") if variant == "relu" else _model()
    if variant == "float64":
        model.double()
    for block in (m for m in model.modules() if isinstance(m, layers.Swinv2Block)):
        if variant == "wrapped-layers":
            block.attn.proj, block.mlp.fc1, block.mlp.fc2 = (
                _LowRank(block.attn.proj), _LowRank(block.mlp.fc1), _LowRank(block.mlp.fc2)
            )
        if variant == "plain-norms":
            block.norm1 = torch.nn.LayerNorm(block.norm1.normalized_shape, elementwise_affine=False)
            block.norm2 = torch.nn.LayerNorm(block.norm2.normalized_shape, elementwise_affine=False, bias=False)
    dtype = torch.float64 if variant == "float64" else torch.float32
    x = torch.randn(3, 3, 44, 40, dtype=dtype)
    layers.release_scratch()
    with torch.no_grad():
        exact = model(x, output_attentions=True).logits
    assert not layers._SCRATCH.buffers
    with torch.inference_mode():
        grouped = model(x).logits
    tolerance = 1e-12 if variant == "float64" else 1e-5
    torch.testing.assert_close(grouped, exact, rtol=tolerance, atol=tolerance)
    slots = {slot for slot, _, _ in layers._SCRATCH.buffers}
    if variant in ("default", "relu", "plain-norms"):  # the attention core in fp32
        assert {0, 1, 2, 3, 8, 9} <= slots
        assert {11, 12} <= slots  # both norms written in place
    if not fp32_gemms and variant in ("default", "relu", "plain-norms"):  # the qkv and output projections
        assert {7, 10} <= slots


def test_window_groups_cover_every_window_once_with_its_mask() -> None:
    cases = [(27, 16, 9, 16), (27, 16, 9, 70), (27, 16, 9, 300), (8, 4, 1, 9), (49, 64, 49, 2048), (34, 4, 17, 20)]
    for count, n, per_image, tokens in cases:  # windows, tokens per window, windows per image, group size
        mask = torch.arange(per_image).view(per_image, 1, 1, 1).expand(per_image, 2, n, n)
        seen = []
        for rows, group_mask in layers._window_groups(count, n, mask, tokens):
            index = list(range(count))[rows]
            assert index, "no empty groups"
            if group_mask.shape[0] == len(index):  # runs inside one image: the rows of its windows
                assert group_mask[:, 0, 0, 0].tolist() == [i % per_image for i in index]
                assert index[0] // per_image == index[-1] // per_image
            else:  # whole images, the mask broadcast over them
                assert group_mask.shape[0] == per_image and len(index) % per_image == 0
            seen += index
        assert seen == list(range(count))


def test_cpu_inference_groups_not_with_hooks() -> None:
    """A forward hook sees each call of its module once, with the whole batch: no groups then."""
    model = _model()
    seen = []
    handle = model.swinv2.stages[0].blocks[1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with torch.inference_mode():
        model(torch.randn(3, 3, 32, 32))
    assert seen == [torch.Size([3, 8, 8, 16])]
    handle.remove()
    seen.clear()  # the same with a global hook, which sees every module call
    with torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(args[0].shape) if m is model.swinv2.stages[0].blocks[0].mlp else None
    ), torch.inference_mode():
        model(torch.randn(3, 3, 32, 32))
    assert seen == [torch.Size([3, 8, 8, 16])]


class _LowRank(torch.nn.Module):
    """A LoRA-style wrapper: the frozen layer plus a trainable low-rank update."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.down = torch.nn.Parameter(0.3 * torch.randn(rank, base.in_features))
        self.up = torch.nn.Parameter(0.3 * torch.randn(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)


def test_replaced_or_hooked_qkv_layers_run_their_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrapped `attn.qkv` (LoRA, quantised) is called, not bypassed for its weight: the model gives what the
    merged weights give on every path (grouped CPU inference, the exact path, training with the hand-written
    Functions), and a forward hook on a plain `qkv` sees every call."""
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)  # the training Functions for this small model too
    model, merged = _model(drop_path_rate=0.0), _model(drop_path_rate=0.0)
    attentions = [m for m in model.modules() if isinstance(m, layers.WindowAttention)]
    merged_attentions = [m for m in merged.modules() if isinstance(m, layers.WindowAttention)]
    for attn, merged_attn in zip(attentions, merged_attentions):
        attn.qkv = _LowRank(attn.qkv)
        with torch.no_grad():
            merged_attn.qkv.weight += attn.qkv.up @ attn.qkv.down
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, merged(x).logits, rtol=1e-5, atol=1e-5)
        exact = model(x, output_attentions=True).logits
        torch.testing.assert_close(exact, merged(x, output_attentions=True).logits, rtol=1e-5, atol=1e-5)
    model.train(), merged.train()
    loss, merged_loss = model(x).logits.square().mean(), merged(x).logits.square().mean()
    torch.testing.assert_close(loss, merged_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    merged_loss.backward()
    for attn, merged_attn in zip(attentions, merged_attentions):
        torch.testing.assert_close(attn.qkv.base.weight.grad, merged_attn.qkv.weight.grad, rtol=1e-4, atol=1e-6)
        assert attn.qkv.up.grad.abs().max() > 0

    calls = []
    merged.eval()
    merged_attentions[0].qkv.register_forward_hook(lambda *args: calls.append(args[1][0].shape))
    with torch.no_grad():
        merged(x)
    assert calls == [(3 * 4, 16, 16)]  # one call with every window of the 8x8 grid's 4x4 windows


def test_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fp32 = model(x).logits
    monkeypatch.setattr(modeling, "CPU_NATIVE_BF16", False)
    monkeypatch.setattr(modeling, "_warned_bf16", False)
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always")
        fallback = model(x).logits
    assert any("no native bf16" in str(w.message) for w in seen)
    torch.testing.assert_close(fallback.float(), fp32, rtol=1e-5, atol=1e-5)


def test_bf16_fallback_leaves_bf16_models_and_backward_under_autocast_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without bf16 units: a model converted to bf16 runs in bf16 under bf16 autocast (in fp32 its
    input would not match its weights); and a training step that calls backward() inside the autocast region,
    after the forward fell back to fp32, works: the hand-written backward passes keep their saved dtypes
    (autocast would recast their GEMMs' inputs against fp32 outputs), and autograd's own backward ops,
    which autocast does recast, leave gradients within bf16 rounding of the fp32 ones (measured 1-2%)."""
    monkeypatch.setattr(modeling, "CPU_NATIVE_BF16", False)
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)  # the hand-written backward passes at this size
    x = torch.randn(2, 3, 32, 32)
    model = _model().bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model(x).logits.dtype == torch.bfloat16
    model = _model(drop_path_rate=0.0).train()
    labels = torch.tensor([1, 3])
    reference = torch.autograd.grad(model(x, labels=labels).loss, list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = model(x, labels=labels).loss
        grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), g, r in zip(model.named_parameters(), grads, reference):
        assert g.dtype == torch.float32, name
        assert (g - r).abs().max() <= 0.05 * r.abs().max(), name


def test_attention_dropout_applies_without_autograd() -> None:
    """A model in train mode under no_grad (e.g. Monte Carlo dropout) still drops attention probabilities:
    the fast CPU inference attention is only for eval."""
    model = _model(attention_probs_dropout_prob=0.5, drop_path_rate=0.0, hidden_dropout_prob=0.0)
    for module in model.modules():
        if isinstance(module, layers.WindowAttention):
            module.proj_drop.p = 0.0  # (the same config value): only the probabilities' dropout is left
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        a = model(x).logits
        b = model(x).logits
        torch.manual_seed(0)
        again = model(x).logits
        model.eval()
        c, d = model(x).logits, model(x).logits
    assert not torch.allclose(a, b) and torch.equal(a, again)
    assert torch.equal(c, d) and not torch.allclose(a, c)


def test_bf16_kept_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modeling, "CPU_NATIVE_BF16", True)
    model = _model()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.swinv2(torch.randn(1, 3, 32, 32)).last_hidden_state
    assert hidden.dtype == torch.bfloat16


def test_compile_has_no_graph_breaks_and_no_recompile_per_size() -> None:
    """One graph for every input size, whichever of the patch grid, the patch merging and the windows it pads,
    with guards in floor divisions only (n + (-n) % p in a size grew expressions that dynamo's and inductor's
    symbolic algebra took minutes over: a 4-block model compiled its dynamic graph in 17 min, now ~1 min)."""
    from torch._guards import detect_fake_mode

    torch._dynamo.reset()
    model = _model()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()  # with labels too: their range check must not break the graph
    labels = torch.tensor([0, 2])
    explained = torch._dynamo.explain(lambda x: model(x, labels=labels).loss)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    guards = []

    def record_guards(gm: torch.fx.GraphModule, example_inputs):
        guards.extend(str(guard.expr) for guard in detect_fake_mode(example_inputs).shape_env.guards)
        return gm.forward

    compiled = torch.compile(model, backend=record_guards, dynamic=True)
    with torch.no_grad():
        # 42 px: 11x11 patches (a partial patch padded), merged from an odd grid, windows padded in both stages;
        # 64: nothing padded; 56: windows padded only; 70: a partial patch, an odd grid. (Square sizes: dynamo
        # gives equal sizes one symbol, and a non-square one a graph of its own, once.)
        for size in (42, 64, 56, 70):
            x = torch.randn(1, 3, size, size)
            torch.testing.assert_close(compiled(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
    assert counts["stats"]["unique_graphs"] == 1, dict(counts["stats"])
    assert guards and not [guard for guard in guards if "PythonMod" in guard]


def test_compile_with_a_smaller_last_batch_runs_in_inference_and_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled model fed a smaller batch (an epoch's last) compiles again with the batch's size symbolic and
    the grid's fixed. That graph keeps the static layout (pad, roll, partition: faster than gathers by index
    rows), and only sizes of the image or grid take the closed-form rows; those rows, at a fixed grid, had
    failed inductor's CPU code generator (an AssertionError from its value ranges: a remainder of a possibly
    negative number), which every such graph took, in inference and in training."""
    torch._dynamo.reset()
    model = _model(drop_path_rate=0.0)
    codes = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        codes.append(gm.code)
        return gm.forward

    with torch.no_grad():  # which layout each graph takes
        recorded = torch.compile(model, backend=record)
        for size in ((4, 32), (3, 32), (3, 40)):
            recorded(torch.randn(size[0], 3, size[1], 32))
    assert len(codes) == 3 and ["torch.roll" in code for code in codes] == [True, True, False]
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with monkeypatch.context() as patch:  # the closed-form rows at a fixed grid, as every such graph took them
        patch.setattr(layers, "_symbolic", lambda *sizes: True)
        for batch in (4, 3):  # (the batch marked dynamic from the start: the second call's graph, compiled once)
            x = torch.randn(batch, 3, 32, 32)
            torch._dynamo.mark_dynamic(x, 0)
            with torch.inference_mode():
                torch.testing.assert_close(compiled(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    model.train()
    for batch in (4, 3):
        x = torch.randn(batch, 3, 32, 32)
        torch._dynamo.mark_dynamic(x, 0)
        gradients = []
        for forward in (compiled, model):
            model.zero_grad()
            forward(x).logits.square().sum().backward()
            gradients.append(model.swinv2.embeddings.proj.weight.grad.clone())
        error = (gradients[0] - gradients[1]).abs().max() / gradients[1].abs().max()
        assert error < 1e-4, f"batch {batch}: compiled gradients {error:.1e} (relative) from eager"
    torch._dynamo.reset()


def test_import_leaves_dynamo_unimported() -> None:
    """Importing swinv2 does not import torch._dynamo (1.5 s and ~150 MiB resident for users who never
    compile): the compiled path's trace-time function is marked for dynamo without it."""
    code = "import sys, swinv2, swinv2.layers; assert 'torch._dynamo' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compiled_cpu_inference_runs_blocks_in_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile, CPU inference runs each block on groups of tokens (`COMPILED_GROUP_BYTES` of MLP
    hidden layer each: temporaries the allocator reuses instead of mapping them afresh): the same numbers, in
    one graph; a hook on a block's layers, and dynamic sizes, keep the whole-block path."""
    monkeypatch.setattr(layers, "COMPILED_GROUP_BYTES", 4 * 16 * 4 * 32)  # C = 16: 32 tokens a group
    model = _model(depths=[2], num_heads=[2]).eval()
    x = torch.randn(2, 3, 32, 32)  # 8x8 patches a picture, 128 tokens: 4 groups
    graphs = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    def graph_of(module, inputs) -> str:
        graphs.clear()
        torch._dynamo.reset()
        with torch.no_grad():
            out = torch.compile(module, backend=record)(inputs).logits
            torch.testing.assert_close(out, module(inputs).logits, rtol=1e-5, atol=1e-5)
        assert len(graphs) == 1
        return graphs[0].code

    grouped = graph_of(model, x)
    seen = []
    hook = model.swinv2.stages[0].blocks[0].attn.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    graph_of(model, x)
    hook.remove()
    assert seen and all(shape[0] == 2 * 4 for shape in seen)  # each call: every window of both pictures
    monkeypatch.setattr(layers, "COMPILED_GROUP_BYTES", 1 << 30)
    whole = graph_of(model, x)
    assert grouped.count("torch.cat") >= whole.count("torch.cat") + 2 * 2  # two blocks, attention and MLP
    graphs.clear()
    torch._dynamo.reset()
    monkeypatch.setattr(layers, "COMPILED_GROUP_BYTES", 4 * 16 * 4 * 32)
    with torch.no_grad():
        torch.compile(model, backend=record, dynamic=True)(x)
    # whole blocks: no group is concatenated, only each block's gather takes its zero row for the padding
    assert graphs[0].code.count("torch.cat") == whole.count("torch.cat") + 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_cpu_attention_is_matmuls_in_fp32_and_sdpa_in_half_precision(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled CPU inference takes the batched matmuls and softmax in fp32 (SDPA's CPU kernel is 2x slower
    on 64-token windows; inductor fuses the mask add into the softmax) and SDPA under autocast, as eager."""
    monkeypatch.setattr(modeling, "CPU_NATIVE_BF16", True)  # else bf16 falls back to fp32 on such CPUs
    torch._dynamo.reset()
    graphs = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = _model().eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend=record)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        out, expected = compiled(x).logits, model(x).logits
    code = "\n".join(gm.code for gm in graphs)
    assert len(graphs) == 1
    assert ("scaled_dot_product_attention" in code) == (dtype != torch.float32), code
    assert ("softmax" in code) == (dtype == torch.float32)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_autocast_weight_copies_follow_weight_changes() -> None:
    """Inference under autocast keeps the weights' bf16 copies; an in-place change must be seen."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    fc1 = model.swinv2.stages[0].blocks[0].mlp.fc1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = model(x).logits
        assert torch.equal(model(x).logits, first)  # the cached copies give what fresh casts gave
        fc1.weight.mul_(-1.5)
        changed = model(x).logits
        model.clear_attention_cache()
        fresh = model(x).logits
    assert (changed.float() - first.float()).abs().max() > 1e-2  # a stale copy would repeat `first`
    assert torch.equal(changed, fresh)
    model.train()
    assert all(p not in layers._CAST_CACHE for p in model.parameters())  # training drops the copies


@pytest.mark.parametrize("name", ["q_bias", "v_bias", "logit_scale"])
def test_kept_qkv_bias_and_logit_scale_follow_parameter_changes(name: str) -> None:
    """Inference keeps the fused qkv bias and the clamped logit scale between calls: an in-place change
    (an optimiser step, load_state_dict) must be seen, and train() or clear_attention_cache() drop them."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    attn = model.swinv2.stages[0].blocks[1].attn
    with torch.no_grad():
        first = model(x).logits
        assert attn._constants is not None and torch.equal(model(x).logits, first)
        getattr(attn, name).mul_(-0.5)
        changed = model(x).logits
        model.clear_attention_cache()
        assert attn._constants is None
        fresh = model(x).logits
    assert (changed - first).abs().max() > 1e-3  # a stale bias or scale would repeat `first`
    assert torch.equal(changed, fresh)
    model.train()
    assert attn._constants is None


def test_flop_counter_counts_the_fused_linears() -> None:
    """Under a dispatch mode (FlopCounterMode) inference takes plain F.linear, which the counter knows."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = _model()
    x = torch.randn(1, 3, 32, 32)
    counts = []
    # With grad the Linear layers never take the fused path. SDPA's math backend, whose matmuls the counter
    # sees, as the CPU attention of training does.
    for grad in (True, False):
        with torch.set_grad_enabled(grad), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_torchscript_tracer_records_plain_linears_in_inference() -> None:
    """The TorchScript tracer (the ONNX exporter's fallback) cannot record oneDNN's fused op: under it,
    inference takes F.linear, and the trace gives the model's outputs."""

    class Logits(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    model = _model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python booleans and its deprecation
        traced = torch.jit.trace(Logits(model), x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x).logits, rtol=1e-5, atol=1e-5)


def test_torchscript_trace_passes_its_check_with_grad_on() -> None:
    """transformers' documented export (`torchscript=True`, `torch.jit.trace(model, x)` with grad on and
    the trace check on): the check traces again without grad, and the graphs must be the same."""
    model = _model()
    model.config.torchscript = True
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python booleans and its deprecation
        traced = torch.jit.trace(model, x)  # raised TracingCheckError: "Graphs differed across invocations"
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_patch_projection_is_the_convolution() -> None:
    """The patch embedding runs its convolution as a Linear on flattened patches; a hooked `proj` keeps its
    own forward (and its hook runs)."""
    model = _model()
    embeddings = model.swinv2.embeddings
    x = torch.randn(2, 3, 32, 28)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            fast = embeddings._project(x)
            conv = embeddings.proj(x).permute(0, 2, 3, 1)
        torch.testing.assert_close(fast, conv, rtol=1e-5, atol=1e-5)
    calls = []
    embeddings.proj.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    with torch.no_grad():
        hooked = embeddings._project(x)
    assert calls == [(2, 16, 8, 7)]
    torch.testing.assert_close(hooked, fast.detach(), rtol=1e-5, atol=1e-5)


def _attention_inputs(dtype: torch.dtype, windows: int = 2, images: int = 3, n: int = 9, heads: int = 3, d: int = 4):
    torch.manual_seed(1)
    qkv = torch.randn(images * windows, n, 3 * heads * d, dtype=dtype)
    mask = torch.randn(windows, heads, n, n, dtype=dtype)
    scale = torch.rand(heads, dtype=dtype) * 20 + 1
    return qkv.requires_grad_(), mask.requires_grad_(), scale.requires_grad_()


def test_cpu_training_attention_backward_is_the_derivative() -> None:
    """The hand-written backward of CPU training: numerically (float64 gradcheck) and against autograd of the
    reference, for qkv, the folded mask (shared by the same window of every image) and the logit scale."""
    heads = 3
    qkv, mask, scale = _attention_inputs(torch.float64, heads=heads)

    def fused(qkv, mask, scale):
        return layers._CosineWindowAttention.apply(qkv, mask, scale, heads)

    assert torch.autograd.gradcheck(fused, (qkv, mask, scale))
    assert torch.autograd.gradcheck(lambda mask, scale: fused(qkv.detach(), mask, scale), (mask, scale))  # frozen qkv
    assert torch.autograd.gradcheck(lambda qkv: fused(qkv, mask.detach(), scale.detach()), (qkv,))  # frozen bias
    assert torch.autograd.gradgradcheck(fused, (qkv, mask, scale))  # create_graph=True differentiates again
    with torch.no_grad():
        qkv[0, 2, 12:24] = 0.0  # a padded token: k = 0 (normalised by eps), where gradcheck's steps would not apply
    grad = torch.randn(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3, dtype=torch.float64)
    out = fused(qkv, mask, scale)
    expected_out = cosine_window_attention_reference(qkv, mask, scale, heads)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    actual = torch.autograd.grad(out, (qkv, mask, scale), grad)
    expected = torch.autograd.grad(expected_out, (qkv, mask, scale), grad)
    # The padded key gets no gradient (autograd's is 1 / eps = 1e12 times larger than the rest, and reaches no
    # parameter: the token's input is 0); everything else is autograd's.
    padded_key = (0, 2, slice(12, 24))
    assert (actual[0][padded_key] == 0).all() and expected[0][padded_key].abs().max() > 1e9
    expected[0][padded_key] = 0.0
    for a, e, name in zip(actual, expected, ("qkv", "mask", "scale")):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_padded_tokens_keep_fp16_gradients_finite() -> None:
    """fp16 training with padded windows: the padded keys (k = 0) must not send inf into the gradients (inf
    times the token's zero input would be NaN in the qkv weight's gradient, and a GradScaler would skip every
    step). Autograd of the reference does overflow here."""
    heads = 3
    qkv, mask, scale = _attention_inputs(torch.float32, heads=heads)
    with torch.no_grad():
        qkv[:, -2:, 12:24] = 0.0  # two padded tokens in every window
    half = [t.detach().half().requires_grad_() for t in (qkv, mask)]
    out = layers._CosineWindowAttention.apply(*half, scale, heads)
    grads = torch.autograd.grad(out, (*half, scale), torch.randn(out.shape).half())
    assert all(torch.isfinite(g).all() for g in grads)
    reference = [t.detach().half().requires_grad_() for t in (qkv, mask)]
    out = cosine_window_attention_reference(*reference, scale.half(), heads)
    (grad_qkv,) = torch.autograd.grad(out, reference[0], torch.randn(out.shape).half())
    assert not torch.isfinite(grad_qkv).all()  # what this guards against


def test_cpu_training_attention_in_bf16() -> None:
    """Under bf16 the inputs' dtypes come back as the gradients' dtypes, within bf16's precision of fp32."""
    heads = 3
    qkv, mask, scale = _attention_inputs(torch.float32, windows=4, n=16, heads=heads, d=8)
    low = [t.detach().bfloat16().requires_grad_() for t in (qkv, mask)]
    out = layers._CosineWindowAttention.apply(*low, scale, heads)
    assert out.dtype == torch.bfloat16
    grad = torch.randn(out.shape)
    actual = torch.autograd.grad(out, (*low, scale), grad.bfloat16())
    expected_out = cosine_window_attention_reference(qkv, mask, scale, heads)
    expected = torch.autograd.grad(expected_out, (qkv, mask, scale), grad)
    assert [a.dtype for a in actual] == [torch.bfloat16, torch.bfloat16, torch.float32]
    for a, e in zip((out, *actual), (expected_out, *expected)):
        assert (a.float() - e).abs().max() <= 0.03 * e.abs().max()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_cpu_training_mlp_backward_is_the_derivative(approximate: str) -> None:
    torch.manual_seed(2)
    shapes = [(2, 3, 4, 6), (10, 6), (10,), (6, 10), (6,)]
    tensors = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]

    def mlp(*t):
        return layers._GeluMlp.apply(*t, approximate)

    assert torch.autograd.gradcheck(mlp, tuple(tensors))
    x, w1, b1, w2, b2 = tensors
    assert torch.autograd.gradcheck(lambda x, w1, w2: mlp(x, w1, None, w2, None), (x, w1, w2))  # no biases
    expected = F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)
    torch.testing.assert_close(mlp(*tensors), expected, rtol=1e-12, atol=1e-12)


def _backward_node_names(loss: torch.Tensor) -> set[str]:
    """The class names of every node in the autograd graph behind `loss`."""
    nodes, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack.extend(f for f, _ in node.next_functions)
    return {type(n).__name__ for n in nodes}


def test_cpu_training_takes_the_hand_written_backward_and_keeps_less(
    fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU training step runs the three Functions, saves fewer bytes for the backward than autograd of the plain
    modules would, and gives the same gradients as the exact path (forward_explicit, plain Linear layers)."""
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)  # this small model's layers are below the threshold
    model = _model(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).logits.square().mean()
    names = _backward_node_names(loss)
    assert {"_CosineWindowAttentionBackward", "_GeluMlpBackward"} <= names
    assert ("_TrainingLinearBackward" in names) == fp32_gemms  # without oneDNN, autograd's own Linear
    fast_bytes = sum(saved.values()) - sum(p.untyped_storage().nbytes() for p in model.parameters())
    fast = torch.autograd.grad(loss, list(model.parameters()))

    # The exact path: explicit attention (asked for the probabilities), and the MLP's Linear layers through
    # their own forward (a hooked layer is never bypassed).
    for module in model.modules():
        if isinstance(module, layers.Mlp):
            module.fc1.register_forward_hook(lambda *args: None)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, output_attentions=True).logits.square().mean()
    exact_bytes = sum(saved.values()) - sum(p.untyped_storage().nbytes() for p in model.parameters())
    exact = torch.autograd.grad(loss, list(model.parameters()))
    assert fast_bytes < 0.8 * exact_bytes
    for (name, _), f, e in zip(model.named_parameters(), fast, exact):
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_cpu_training_scratch_buffers_are_reused_and_never_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training Functions keep their temporaries in per-thread scratch buffers reused from call to call.
    Across input sizes (the buffers are grown and viewed smaller) and with a one-head stage (where a reshape
    would return a view of the buffer) the gradients stay the exact path's, a later step leaves an earlier
    step's results alone, and eval() frees the buffers."""
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)  # this small model's layers are below the threshold
    model = _model(num_heads=[1, 2], drop_path_rate=0.0).train()
    params = list(model.parameters())
    inputs = [torch.randn(2, 3, 32, 32), torch.randn(3, 3, 48, 40), torch.randn(1, 3, 32, 32)]

    def step(x: torch.Tensor, exact: bool = False) -> list[torch.Tensor]:
        logits = model(x, output_attentions=exact).logits
        return [logits, *torch.autograd.grad(logits.square().mean(), params)]

    results = [step(x) for x in inputs]
    assert layers._SCRATCH.buffers
    kept = [[t.clone() for t in r] for r in results]
    step(inputs[1])  # a later step with the largest buffers
    for r, k in zip(results, kept):
        assert all(torch.equal(t, c) for t, c in zip(r, k))
    # the exact path: explicit attention (asked for the probabilities), the MLP's Linear layers through their
    # own forward (a hooked layer is never bypassed)
    hooks = [m.fc1.register_forward_hook(lambda *args: None) for m in model.modules() if isinstance(m, layers.Mlp)]
    for x, fast in zip(inputs, results):
        for f, e in zip(fast, step(x, exact=True)):
            torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-6)
    for hook in hooks:
        hook.remove()
    model.eval()
    assert not layers._SCRATCH.buffers

    # What the Functions return (outputs and gradients) is never a view of a scratch buffer.
    def in_scratch(t: torch.Tensor) -> bool:
        buffers = layers._SCRATCH.buffers.values()
        return any(t.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in buffers)

    for heads in (1, 3):
        qkv, mask, scale = _attention_inputs(torch.float32, heads=heads)
        out = layers._CosineWindowAttention.apply(qkv, mask, scale, heads)
        out.backward(torch.randn_like(out))
        assert layers._SCRATCH.buffers and not any(in_scratch(t) for t in (out, qkv.grad, mask.grad, scale.grad))
    shapes = [(2, 3, 4, 6), (10, 6), (10,), (6, 10), (6,)]
    tensors = [torch.randn(shape, requires_grad=True) for shape in shapes]
    out = layers._GeluMlp.apply(*tensors, "none")
    out.backward(torch.randn_like(out))
    assert not any(in_scratch(t) for t in (out, *(t.grad for t in tensors)))


def test_cpu_training_linear_layers_in_fp32_and_bf16(fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a CPU training step `linear` and the MLP run oneDNN (bf16 where it has a bf16 GEMM, fp32 on its
    route) forward and for the inputs' gradients (so the float64 gradchecks above take the plain matmul):
    same values and gradients as autograd of F.linear, and under autocast the dtypes autocast gives."""
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)
    torch.manual_seed(3)
    x = torch.randn(2, 5, 7, 24, requires_grad=True)
    w1, b1 = torch.randn(40, 24, requires_grad=True), torch.randn(40, requires_grad=True)
    w2, b2 = torch.randn(24, 40, requires_grad=True), torch.randn(24, requires_grad=True)
    grad = torch.randn(2, 5, 7, 24)
    tensors = (x, w1, b1, w2, b2)
    runs = {
        "linear": (lambda: linear(F.gelu(linear(x, w1, b1)), w2, b2), "_TrainingLinearBackward"),
        "mlp": (lambda: layers._GeluMlp.apply(x, w1, b1, w2, b2, "none"), "_GeluMlpBackward"),
    }
    expected_out = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    expected = torch.autograd.grad(expected_out, tensors, grad)
    for name, (run, node) in runs.items():
        out = run()
        assert type(out.grad_fn).__name__ == node or (name == "linear" and not fp32_gemms), name
        torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
        for a, e in zip(torch.autograd.grad(out, tensors, grad), expected):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(x, w1, b1)
    assert out.dtype == torch.bfloat16
    assert (type(out.grad_fn).__name__ == "_TrainingLinearBackward") == layers._ONEDNN_BF16
    grads = torch.autograd.grad(out.float().square().sum(), (x, w1, b1))
    assert [g.dtype for g in grads] == [torch.float32] * 3
    reference = torch.autograd.grad(F.linear(x, w1, b1).square().sum(), (x, w1, b1))
    for a, e in zip(grads, reference):
        assert (a - e).abs().max() <= 0.03 * e.abs().max()


@pytest.mark.parametrize("fp32_gemms", [True], indirect=True)  # the Functions' route, on any CPU
def test_second_order_gradients(fp32_gemms: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_graph=True: the Linear, MLP and attention Functions differentiate their plain ops (a
    Hessian-vector product equals autograd's), so gradient penalties work on the whole model."""
    monkeypatch.setattr(layers, "_FUNCTION_MIN_MACS", 0)
    torch.manual_seed(4)
    x = torch.randn(3, 4, 6, requires_grad=True)
    w1, b1 = torch.randn(10, 6, requires_grad=True), torch.randn(10, requires_grad=True)
    w2, b2 = torch.randn(6, 10, requires_grad=True), torch.randn(6, requires_grad=True)

    def hessian_vector(run):
        (g,) = torch.autograd.grad(run().square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), (w1, b1, w2))

    plain = hessian_vector(lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))
    assert type(linear(x, w1, b1).grad_fn).__name__ == "_TrainingLinearBackward"
    for run in (
        lambda: linear(F.gelu(linear(x, w1, b1)), w2, b2),
        lambda: layers._GeluMlp.apply(x, w1, b1, w2, b2, "none"),
    ):
        for a, e in zip(hessian_vector(run), plain):
            assert (a - e).abs().max() <= 1e-4 * e.abs().max()

    model = _model(drop_path_rate=0.0).train()
    pixels = torch.randn(2, 3, 44, 40, requires_grad=True)  # padded windows: zero keys on the way
    weights = [model.classifier.weight, model.swinv2.stages[0].blocks[1].attn.logit_scale,
               model.swinv2.stages[1].blocks[0].attn.cpb_mlp[0].weight, model.swinv2.stages[0].blocks[0].attn.q_bias]

    def penalty(exact: bool) -> list[torch.Tensor]:  # a gradient penalty on the input, differentiated again
        (g,) = torch.autograd.grad(
            model(pixels, output_attentions=exact).logits.square().sum(), pixels, create_graph=True
        )
        return list(torch.autograd.grad(g.square().sum(), weights))

    assert "_CosineWindowAttentionBackward" in _backward_node_names(model(pixels).logits.sum())
    for fast, exact in zip(penalty(False), penalty(True)):  # the exact path is plain autograd throughout
        assert exact.abs().sum() > 0
        torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())


@pytest.mark.parametrize("fp32_gemms", [True], indirect=True)  # the Linear Function's route, on any CPU
def test_small_layers_stay_on_autograd_ops(fp32_gemms: bool) -> None:
    """Below the size where a Function's fixed cost pays, a training step keeps autograd's own Linear and MLP."""
    model = _model(drop_path_rate=0.0).train()
    names = _backward_node_names(model(torch.randn(2, 3, 32, 32)).logits.sum())
    assert "_TrainingLinearBackward" not in names and "_GeluMlpBackward" not in names
    assert "_CosineWindowAttentionBackward" in names  # no fixed cost to amortise: used at every size
    x = torch.randn(64, 64, 256, requires_grad=True)  # 4096 rows x 256 x 4096 multiply-adds: above
    assert type(linear(x, torch.randn(4096, 256, requires_grad=True)).grad_fn).__name__ == "_TrainingLinearBackward"


@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])  # the hand-written attention, and autograd's with dropout
def test_fp16_training_with_padded_windows_has_finite_gradients(attention_dropout: float) -> None:
    torch.manual_seed(5)
    config = Swinv2Config(image_size=44, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4,
                          num_labels=3, drop_path_rate=0.0, attention_probs_dropout_prob=attention_dropout)
    model = Swinv2ForImageClassification(config).train()  # 11x11 patches: every block pads its grid
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(torch.randn(2, 3, 44, 44), labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()] == []


# Ops that read a device tensor's value back to the host: on a GPU each stalls the queue of work and
# breaks CUDA-graph capture.
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), bool(t), int(t)
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,  # data-dependent output sizes
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.repeat_interleave.Tensor,
}


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_inference_reads_nothing_back_from_the_device() -> None:
    """No host synchronisation in an inference forward of any head, first call (caches built) or later,
    with the finite-input check off as it is by default on accelerators."""
    config = Swinv2Config(
        **{**SMALL, "check_finite_inputs": False, "out_features": ["stage1", "stage2"], "encoder_stride": 8}
    )
    torch.manual_seed(0)
    models = [
        Swinv2ForImageClassification(config).eval(),
        modeling.Swinv2ForMaskedImageModeling(config).eval(),
        modeling.Swinv2Backbone(config).eval(),
    ]
    x = torch.randn(2, 3, 44, 36)  # padded windows
    mask = torch.rand(2, 11 * 9) > 0.5
    for model in models:
        kwargs = {"bool_masked_pos": mask} if isinstance(model, modeling.Swinv2ForMaskedImageModeling) else {}
        for _ in range(2):
            with torch.inference_mode(), _HostReads() as reads:
                model(x, output_hidden_states=True, **kwargs)
            assert reads.seen == [], (type(model).__name__, reads.seen)
    with torch.inference_mode(), _HostReads() as reads:  # the recorder sees a read when there is one
        bool(x.sum() > 0)
    assert reads.seen


def test_data_parallel_replicas_get_caches_of_their_own() -> None:
    """nn.DataParallel replicas get new parameter tensors each forward: they must not share (and so read)
    the original's masks, layouts and qkv constants, which are keyed by the parameters' storage."""
    model = _model()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    block = model.swinv2.stages[0].blocks[1]
    assert block._mask_cache and block.attn._constants is not None
    replica, attn = block._replicate_for_data_parallel(), block.attn._replicate_for_data_parallel()
    assert not replica._mask_cache and not replica._layout_cache and attn._constants is None
    assert replica._mask_cache is not block._mask_cache and replica._layout_cache is not block._layout_cache
    assert block._mask_cache and block.attn._constants is not None  # the original keeps its own


def test_caches_follow_tensors_made_anew_not_their_addresses() -> None:
    """The caches were keyed by storage address and version: a Parameter made anew (a re-initialisation, a
    sweep) or torch.func.functional_call's tensors often land where a freed one was, at version 0 too, and
    were handed its masks and qkv constants (errors of 1e-2). Each call now matches the exact path, and a
    model ensemble through torch.func.vmap runs under no_grad (the keys read addresses its batched tensors
    do not have)."""
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    block = model.swinv2.stages[0].blocks[1]
    for step in range(8):  # the same shape each time: glibc hands the freed tensor's memory back
        with torch.no_grad():
            block.attn.cpb_mlp[2].weight = torch.nn.Parameter(torch.randn_like(block.attn.cpb_mlp[2].weight))
            block.attn.q_bias = torch.nn.Parameter(torch.randn_like(block.attn.q_bias))
            fast = model(x).logits
            exact = model(x, output_attentions=True).logits
        torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5, msg=f"step {step}")

    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for scale in (1.5, 3.0, 1.5, 3.0):  # fresh tensors each call, freed after it
        params = {k: v * scale if k.endswith(("q_bias", "logit_scale")) else v.clone() for k, v in reference.items()}
        with torch.no_grad():
            got = torch.func.functional_call(model, params, (x,)).logits
        fresh = _model()
        fresh.load_state_dict(params)
        with torch.no_grad():
            torch.testing.assert_close(got, fresh(x).logits, rtol=1e-5, atol=1e-5, msg=f"scale {scale}")

    members = [_model() for _ in range(3)]
    stacked, buffers = torch.func.stack_module_state(members)
    template = _model().to("meta")

    def one(params, buffers, x):
        return torch.func.functional_call(template, (params, buffers), (x,)).logits

    with torch.no_grad():
        ensemble = torch.func.vmap(one, in_dims=(0, 0, None))(stacked, buffers, x)
        for member, got in zip(members, ensemble):
            torch.testing.assert_close(got, member(x).logits, rtol=1e-5, atol=1e-5)


def test_closed_form_layout_rows_are_the_layout_moves() -> None:
    """The gather rows used under torch.compile's dynamic shapes equal `window_layout`, which is built with
    the pad, roll and partition of the eager path, for every grid up to 13x13, several windows/shifts and both
    orders of shift and padding, square windows and (timm's, torchvision's) per-side ones, and shifts that
    exceed the grid (timm's always_partition)."""
    from swinv2.layers import Swinv2Block, window_layout

    for window, shift, shift_first in ((4, 2, False), (4, 0, False), (3, 1, False), (7, 3, False), (1, 0, False),
                                       (4, 2, True), (3, 1, True), (7, 3, True), ((4, 3), (2, 0), True),
                                       ((2, 5), (1, 2), False), ((4, 4), (0, 2), False), ((3, 5), (1, 2), True),
                                       # timm's always_partition: shifts larger than small grids
                                       ((8, 8), (4, 4), True), ((6, 3), (3, 1), True)):
        block = Swinv2Block(8, 2, window=window, shift=shift, shift_first=shift_first)
        for h in range(1, 14):
            for w in range(1, 14):
                to_windows, from_windows = window_layout(h, w, window, shift, shift_first)
                padding_row = torch.full_like(to_windows, h * w, dtype=torch.long)
                expected = torch.where(to_windows < 0, padding_row, to_windows.long())
                assert torch.equal(block._symbolic_rows(h, w, torch.device("cpu"), to_windows=True), expected)
                assert torch.equal(block._symbolic_rows(h, w, torch.device("cpu"), to_windows=False),
                                   from_windows.long())


def test_cpu_inference_scratch_buffers_never_leak_and_work_in_any_grad_mode() -> None:
    """Grouped CPU inference gathers the windows into scratch buffers reused from call to call: the outputs
    are never views of them, a later call leaves an earlier call's outputs alone, buffers made under
    inference_mode stay writable under no_grad (and back), and train() and clear_attention_cache() free them."""
    model = _model()
    layers.release_scratch()
    x1, x2 = torch.randn(2, 3, 44, 40), torch.randn(3, 3, 32, 32)  # padded grids, then whole windows
    with torch.no_grad():
        exact1 = model(x1, output_attentions=True, output_hidden_states=True).hidden_states
        exact2 = model(x2, output_attentions=True).logits
    with torch.inference_mode():
        out1 = model(x1, output_hidden_states=True).hidden_states
    assert layers._SCRATCH.buffers
    kept = [h.clone() for h in out1]
    with torch.no_grad():
        out2 = model(x2).logits
    with torch.inference_mode():
        out1_again = model(x1, output_hidden_states=True).hidden_states
    for fast, slow, before, again in zip(out1, exact1, kept, out1_again):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        assert torch.equal(fast, before) and torch.equal(again, before)
    torch.testing.assert_close(out2, exact2, rtol=1e-5, atol=1e-5)
    storages = {b.untyped_storage().data_ptr() for b in layers._SCRATCH.buffers.values()}
    assert not any(h.untyped_storage().data_ptr() in storages for h in (*out1, *out1_again, out2))
    model.train()
    assert not layers._SCRATCH.buffers
    model.eval()
    with torch.inference_mode():
        model(x2)
    assert layers._SCRATCH.buffers
    model.clear_attention_cache()
    assert not layers._SCRATCH.buffers


def test_hooks_of_any_kind_see_the_layers_the_fast_paths_would_fuse() -> None:
    """A hook on the MLP's activation fires (and an ablation by it takes effect); a backward hook alone on a
    fused Linear or the patch convolution fires; a global module hook sees every Linear and the convolution:
    the fused paths step aside for all of them, in training and in inference."""
    model = _model(drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x).logits
    mlp = model.swinv2.stages[0].blocks[0].mlp
    calls = []
    handle = mlp.act.register_forward_hook(lambda m, args, out: calls.append(1) or out * 0)
    with torch.no_grad():
        ablated = model(x).logits
        exact = model(x, output_attentions=True).logits  # the step-by-step path calls every module
    handle.remove()
    assert len(calls) == 2 and not torch.allclose(ablated, reference, atol=1e-3)
    torch.testing.assert_close(ablated, exact, rtol=1e-5, atol=1e-5)

    layers_hooked = {
        "qkv": model.swinv2.stages[0].blocks[0].attn.qkv,
        "proj": model.swinv2.stages[0].blocks[1].attn.proj,
        "fc1": mlp.fc1,
        "fc2": model.swinv2.stages[1].blocks[0].mlp.fc2,
        "patch": model.swinv2.embeddings.proj,
        "reduction": model.swinv2.stages[0].downsample.reduction,
    }
    fired = []
    handles = [m.register_full_backward_hook(lambda m, gi, go, name=name: fired.append(name))
               for name, m in layers_hooked.items()]
    model.train()
    model(x).logits.sum().backward()
    for h in handles:
        h.remove()
    assert sorted(fired) == sorted(layers_hooked)
    model.eval()

    seen = []
    with torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(type(m).__name__)
    ), torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference, rtol=1e-5, atol=1e-5)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert seen.count("Linear") == linears and seen.count("Conv2d") == 1


def test_position_bias_cache_follows_hooks_buffers_and_the_tracer() -> None:
    """The folded masks kept between inference calls are not used where they would be stale: with a hook on
    the position-bias MLP (added after a cached call, or removed after a hooked one), after an in-place change
    of the coordinate table, and under the TorchScript tracer (which would record them as constants)."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    attn = model.swinv2.stages[0].blocks[1].attn

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(x).logits, model(x, output_attentions=True).logits

    def exact() -> torch.Tensor:
        with torch.no_grad():
            model.clear_attention_cache()
            return model(x, output_attentions=True).logits

    with torch.no_grad():
        plain = model(x).logits  # cached now
    handle = attn.cpb_mlp.register_forward_hook(lambda m, args, out: out * 1.5)
    hooked, hooked_exact = both()
    torch.testing.assert_close(hooked, hooked_exact, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, plain, atol=1e-4)
    handle.remove()
    torch.testing.assert_close(both()[0], plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        attn.relative_coords_table.mul_(0.5)
    moved = both()[0]
    torch.testing.assert_close(moved, exact(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved, plain, atol=1e-4)

    with torch.no_grad():
        model(x)  # the caches are full before tracing
        model.config.torchscript = True  # tuples out, as transformers' models are traced
        traced = torch.jit.trace(model, (x,))
        attn.cpb_mlp[0].weight.mul_(1.2)
        model.swinv2.stages[1].blocks[0].attn.logit_scale.add_(0.3)
        model.config.torchscript = False
        torch.testing.assert_close(traced(x)[0], exact(), rtol=1e-5, atol=1e-5)


def test_attention_hooks_see_the_exact_path_too() -> None:
    """output_attentions and head_mask take the step-by-step attention; it runs as the attention module's call
    as the fast path does, so a hook on it (forward, backward, global) fires on every path and an edit by it
    gives the same model whichever path runs."""
    model = _model(drop_path_rate=0.0)
    attn = model.swinv2.stages[0].blocks[1].attn
    calls = []
    attn.register_forward_hook(lambda m, args, out: calls.append("forward") or (1.5 * out[0], out[1]))
    attn.register_full_backward_hook(lambda m, grad_in, grad_out: calls.append("backward"))
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for kwargs in ({}, {"output_attentions": True}, {"head_mask": [torch.ones(2), torch.ones(4)]}):
        calls.clear()
        logits = model(x, **kwargs).logits
        logits.sum().backward()
        assert calls == ["forward", "backward"], kwargs
        outputs.append(logits.detach())
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=1e-5, atol=1e-5)
    seen = []
    with torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(type(m).__name__)
    ), torch.no_grad():
        model(x, output_attentions=True)
    assert seen.count("WindowAttention") == sum(isinstance(m, layers.WindowAttention) for m in model.modules())


def test_forward_mode_ad_matches_transformers(tmp_path) -> None:
    """torch.func.jvp through the default path (SDPA's CPU kernel has no forward-mode AD; under torch.func
    transforms the attention takes batched matmuls), against transformers' jvp on the same weights."""
    import transformers

    model = _model()
    model.save_pretrained(tmp_path)
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path).eval()
    x, tangent = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    _, ours = torch.func.jvp(lambda image: model(image).logits, (x,), (tangent,))
    _, expected = torch.func.jvp(lambda image: theirs(pixel_values=image).logits, (x,), (tangent,))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # torch.autograd.forward_ad, with and without grad: it used to reach the training Function (no jvp) and,
    # without grad, the grouped inference's out= kernels
    import torch.autograd.forward_ad as fwAD

    for grad in (False, True):
        with torch.set_grad_enabled(grad), fwAD.dual_level():
            ours = fwAD.unpack_dual(model(fwAD.make_dual(x, tangent)).logits).tangent
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_region_caches_follow_the_split_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two grids that pad to the same size, one run with the windows split and one without: each gets its own
    layout and masks (a cached split mask with an unsplit layout was 5.3 off)."""
    model = _model()
    x_split, x_whole = torch.randn(1, 3, 26, 30), torch.randn(1, 3, 28, 30)  # 13x15 and 14x15 patches: 16x16
    with torch.no_grad():
        expected = model(x_whole, output_attentions=True).logits
    with torch.inference_mode():
        monkeypatch.setattr(layers, "REGION_MASK_BYTES", 0)
        model(x_split)
        monkeypatch.setattr(layers, "REGION_MASK_BYTES", 1 << 40)
        got = model(x_whole).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_model_built_or_loaded_in_inference_mode_runs(tmp_path) -> None:
    """Parameters made under torch.inference_mode have no version counter, which the caches key on: such a
    model computes its masks and constants on every call instead of failing, with the same outputs."""
    model = _model()
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
    with torch.inference_mode():
        loaded = Swinv2ForImageClassification.from_pretrained(tmp_path)
        assert loaded.classifier.weight.is_inference()
        for _ in range(2):
            torch.testing.assert_close(loaded(x).logits, expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(loaded(x).logits).all()


def test_block_caches_tolerate_entries_evicted_by_other_threads() -> None:
    """Threads calling one model share its per-block caches: an entry another thread evicts between the
    lookup and the reordering is a miss, not a KeyError (multi-scale inputs from several threads)."""

    class EvictedMeanwhile(OrderedDict):
        def get(self, key, default=None):
            value = super().get(key, default)
            self.clear()  # another thread's _remember ran between the two steps
            return value

    cache = EvictedMeanwhile({("a",): 1})
    assert layers._recall(cache, ("a",)) == 1 and not cache
    block = layers.Swinv2Block(8, 2, window=4, shift=2).eval()
    block._mask_cache, block._layout_cache = EvictedMeanwhile(), EvictedMeanwhile()
    x = torch.randn(1, 8, 8, 8)
    with torch.inference_mode():
        first, second = block(x)[0], block(x)[0]
    torch.testing.assert_close(first, second)


def test_channels_last_model_vmap_and_torchscript_outputs() -> None:
    """A model converted to channels_last runs (its 4-D patch weights are not contiguous); torch.func.vmap over
    the batch gives the batched outputs; config.torchscript asks for tuples, as in transformers."""
    model = _model()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x).logits
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x).logits, reference, rtol=1e-5, atol=1e-5)
        per_image = torch.func.vmap(lambda image: model(image[None]).logits[0])(x)
        torch.testing.assert_close(per_image, reference, rtol=1e-5, atol=1e-5)
    model.config.torchscript = True
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, tuple)
        torch.testing.assert_close(out[0], reference, rtol=1e-5, atol=1e-5)
