"""Property tests: random small architectures and input sizes, drawn by hypothesis.

For every draw the documented outputs have the documented shapes, are finite, the fast attention path
(SDPA with the cached folded mask) agrees with the exact path (taken when `output_attentions=True`), and
low precision (bf16/fp16 autocast, `.half()`, `.bfloat16()`) stays finite. A few draws are also compared
with transformers on the same weights.

The draws are derandomised (the same examples on every run, so CI is stable and fast). To explore new ones,
many more of them: `SWINV2_EXPLORE=1 pytest tests/test_properties.py`.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import torch
import transformers
from conftest import perturb_
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import swinv2
from swinv2 import Swinv2Config

EXPLORE = os.environ.get("SWINV2_EXPLORE") == "1"


def examples(n: int) -> settings:
    """n examples (model building dominates each; the bounds keep the file well under a minute on 2 cores)."""
    return settings(
        max_examples=n * 20 if EXPLORE else n,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@dataclass
class Draw:
    config: dict
    batch: int
    height: int
    width: int


@st.composite
def architectures(draw: st.DrawFn, transformers_compatible: bool = False) -> Draw:
    """A small random architecture and input. `transformers_compatible` draws only what transformers runs:
    input size == image_size, every stage's grid at least one token (transformers builds an empty window
    otherwise), and no absolute position embeddings (transformers allocates num_patches + 1 of them and
    then fails to add them to num_patches tokens), and no pretrained window of 1 (transformers divides the
    coordinates by pretrained_window - 1 = 0 and gets NaN; we leave a window of one token unscaled)."""
    stages = draw(st.integers(1, 3))
    heads0 = draw(st.sampled_from([1, 2, 4]))
    embed_dim = heads0 * draw(st.integers(max(1, math.ceil(8 / heads0)), 32 // heads0))
    # Later stages have embed_dim * 2**i channels: heads0 * 2**i or heads0 heads both divide them.
    num_heads = [heads0 * (2**i if draw(st.booleans()) else 1) for i in range(stages)]
    patch = draw(st.integers(1, 4))
    window = draw(st.integers(1, 5))
    image = draw(st.integers(patch * 2 ** (stages - 1) if transformers_compatible else patch, 24))
    config = dict(
        image_size=image,
        patch_size=patch,
        num_channels=draw(st.integers(1, 4)),
        embed_dim=embed_dim,
        depths=draw(st.lists(st.integers(1, 2), min_size=stages, max_size=stages)),
        num_heads=num_heads,
        window_size=window,
        pretrained_window_sizes=draw(
            st.lists(st.sampled_from([0, 2, 3, 4, 5, 6] if transformers_compatible else range(7)),
                     min_size=stages, max_size=stages)
        ),
        use_absolute_embeddings=False if transformers_compatible else draw(st.booleans()),
        encoder_stride=patch * 2 ** (stages - 1),
        num_labels=draw(st.integers(1, 5)),
        drop_path_rate=0.1,
    )
    if transformers_compatible:
        height = width = image
    else:
        # From 1x1 up to a few windows of the first stage, square or not, odd or even.
        limit = min(40, patch * window * 3)
        height, width = draw(st.integers(1, limit)), draw(st.integers(1, limit))
    return Draw(config, draw(st.integers(1, 3)), height, width)


def _built(cls: type, d: Draw, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(Swinv2Config(**d.config)).eval()
    perturb_(model, torch.Generator().manual_seed(seed + 1))
    return model


def _pixels(d: Draw, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d.batch, d.config["num_channels"], d.height, d.width, generator=g)


def _expected_grids(d: Draw) -> list[tuple[int, int]]:
    """Token grid entering each stage: the patch grid (padded up), then halved (rounded up) per stage."""
    p = d.config["patch_size"]
    grids = [(-(-d.height // p), -(-d.width // p))]
    for _ in range(len(d.config["depths"]) - 1):
        h, w = grids[-1]
        grids.append((-(-h // 2), -(-w // 2)))
    return grids


def _stage_window(d: Draw, stage: int) -> int:
    """Windows are sized from config.image_size (as in transformers), not from the input."""
    grid = d.config["image_size"] // d.config["patch_size"] // 2**stage
    return max(1, min(d.config["window_size"], grid))


def _assert_finite(name: str, t: torch.Tensor) -> None:
    assert torch.isfinite(t).all(), f"{name} has {(~torch.isfinite(t)).sum().item()} non-finite values"


@examples(25)
@given(architectures())
def test_encoder_and_classifier_shapes_finite_and_fast_path_exact(d: Draw):
    model = _built(swinv2.Swinv2ForImageClassification, d)
    x = _pixels(d)
    with torch.no_grad():
        fast = model(x, output_hidden_states=True)
        exact = model(x, output_hidden_states=True, output_attentions=True)
        encoder = model.swinv2(x, output_hidden_states=True, output_attentions=True)
    b, stages, e = d.batch, len(d.config["depths"]), d.config["embed_dim"]
    grids = _expected_grids(d)
    last = grids[-1]
    width_last = e * 2 ** (stages - 1)
    assert fast.logits.shape == (b, d.config["num_labels"])
    assert encoder.last_hidden_state.shape == (b, last[0] * last[1], width_last)
    assert encoder.pooler_output.shape == (b, width_last)
    # hidden_states: the embeddings, then each stage's output after its patch merging.
    after = [*grids[1:], last]
    widths = [e * 2 ** min(i + 1, stages - 1) for i in range(stages)]
    expected_hidden = [(b, e, *grids[0])] + [(b, c, *g) for c, g in zip(widths, after)]
    assert [tuple(t.shape) for t in encoder.reshaped_hidden_states] == expected_hidden
    assert [tuple(t.shape) for t in encoder.hidden_states] == [(s[0], s[2] * s[3], s[1]) for s in expected_hidden]
    for i, (attn, grid) in enumerate(zip(encoder.attentions, grids)):
        win = _stage_window(d, i)
        windows = -(-grid[0] // win) * -(-grid[1] // win)
        assert attn.shape == (b * windows, d.config["num_heads"][i], win * win, win * win)
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-5, rtol=0)
    for name, t in [("logits", fast.logits), ("pooler", encoder.pooler_output), *enumerate(encoder.hidden_states)]:
        _assert_finite(str(name), t)
    # The fast path (SDPA, cached folded mask) and the exact path compute the same numbers.
    torch.testing.assert_close(fast.logits, exact.logits, atol=1e-5, rtol=1e-5)
    for a, c in zip(fast.hidden_states, exact.hidden_states):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@examples(10)
@given(architectures())
def test_masked_image_modeling_and_backbone_shapes(d: Draw):
    mim = _built(swinv2.Swinv2ForMaskedImageModeling, d)
    x = _pixels(d)
    grids = _expected_grids(d)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(d.batch, grids[0][0] * grids[0][1], generator=g) < 0.5
    mask[:, 0] = True  # at least one masked patch, so the loss has something to average
    with torch.no_grad():
        out = mim(x, bool_masked_pos=mask)
    assert out.reconstruction.shape == x.shape
    _assert_finite("reconstruction", out.reconstruction)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss > 0

    names = ["stem"] + [f"stage{i + 1}" for i in range(len(d.config["depths"]))]
    backbone = _built(swinv2.Swinv2Backbone, Draw({**d.config, "out_features": names}, d.batch, d.height, d.width))
    with torch.no_grad():
        maps = backbone(x).feature_maps
    e = d.config["embed_dim"]
    # Stage maps are taken before each stage's patch merging.
    expected = [(d.batch, e, *grids[0])] + [(d.batch, e * 2**i, *grid) for i, grid in enumerate(grids)]
    assert [tuple(m.shape) for m in maps] == expected
    for name, m in zip(names, maps):
        _assert_finite(name, m)


@examples(15)
@given(architectures(), st.sampled_from(["timm", "torchvision", "microsoft"]))
def test_every_window_layout_computes_alike_on_every_path(d: Draw, layout: str):
    """The other libraries' layouts (windows and shifts per side, shifts decided per input, partial patches
    dropped) on random architectures and inputs of at least one patch: the grouped CPU path, the whole-block
    path (hooks on the blocks' layers keep it) and the exact path give the same outputs, and the attention
    probabilities of the exact path have one row per token of each window, summing to 1."""
    patch = d.config["patch_size"]
    d = Draw({**d.config, "window_layout": layout}, d.batch, max(d.height, patch), max(d.width, patch))
    model = _built(swinv2.Swinv2ForImageClassification, d)
    x = _pixels(d)
    with torch.no_grad():
        grouped = model(x, output_hidden_states=True)
        exact = model(x, output_hidden_states=True, output_attentions=True)
        handle = model.swinv2.stages[0].blocks[0].mlp.fc1.register_forward_hook(lambda *args: None)
        whole = model(x, output_hidden_states=True)
        handle.remove()
    for other in (exact, whole):
        torch.testing.assert_close(other.logits, grouped.logits, atol=1e-5, rtol=1e-5)
        for a, b in zip(other.hidden_states, grouped.hidden_states):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert exact.hidden_states[0].shape[1] == (d.height // patch) * (d.width // patch)  # whole patches only
    for probs, stage in zip(exact.attentions, model.swinv2.stages):
        wh, ww = stage.blocks[-1].window
        assert probs.shape[-2:] == (wh * ww, wh * ww)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5, rtol=0)


@examples(8)
@given(architectures())
def test_low_precision_stays_finite(d: Draw):
    """bf16/fp16 autocast and half-precision weights: padded tokens (k = 0) must not give 0/0 anywhere."""
    model = _built(swinv2.Swinv2ForImageClassification, d)
    x = _pixels(d)
    with torch.no_grad():
        reference = model(x).logits
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                out = model(x, output_hidden_states=True)
                exact = model(x, output_attentions=True)
            _assert_finite(f"autocast {dtype} logits", out.logits)
            _assert_finite(f"autocast {dtype} exact-path logits", exact.logits)
            for i, h in enumerate(out.hidden_states):
                _assert_finite(f"autocast {dtype} hidden state {i}", h)
            # Low precision must still compute the same function, not merely finite numbers.
            torch.testing.assert_close(out.logits.float(), reference, atol=0.25, rtol=0.1)
        for dtype in (torch.float16, torch.bfloat16):
            low = _built(swinv2.Swinv2ForImageClassification, d).to(dtype)
            out = low(x.to(dtype), output_hidden_states=True)
            exact = low(x.to(dtype), output_attentions=True)
            assert out.logits.dtype == dtype
            _assert_finite(f".to({dtype}) logits", out.logits)
            _assert_finite(f".to({dtype}) exact-path logits", exact.logits)
            for i, h in enumerate(out.hidden_states):
                _assert_finite(f".to({dtype}) hidden state {i}", h)
            torch.testing.assert_close(out.logits.float(), reference, atol=0.25, rtol=0.1)


@examples(6)
@given(architectures(transformers_compatible=True))
def test_matches_transformers_on_drawn_architectures(d: Draw):
    torch.manual_seed(0)
    hf = transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**d.config)).eval()
    perturb_(hf, torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = swinv2.Swinv2ForImageClassification.from_pretrained(folder)
    x = _pixels(d)
    with torch.no_grad():
        expected = hf(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(got.reshaped_hidden_states, expected.reshaped_hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@examples(10)
@given(architectures(), st.integers(0, 8))
def test_checkpoints_load_back_on_drawn_architectures(d: Draw, widen: int):
    """Our save_pretrained folder (transformers' layout), with a non-square image_size when `widen` > 0, and
    a Microsoft .pth without a config (square images only, as Microsoft's code) give back the same logits: the
    config is read or inferred to build the same windows, shifts and position embeddings."""
    from swinv2 import checkpoints as ck

    image = d.config["image_size"]
    config = dict(d.config, image_size=[image, image + widen]) if widen else d.config
    model = _built(swinv2.Swinv2ForImageClassification, Draw(config, d.batch, d.height, d.width))
    x = _pixels(d)
    with torch.no_grad():
        expected = model(x).logits
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = swinv2.Swinv2ForImageClassification.from_pretrained(folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected, atol=0, rtol=0)
        if not widen:
            path = os.path.join(folder, "released.pth")
            torch.save({"model": ck.export_state_dict(model, "microsoft")}, path)
            loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path)
            with torch.no_grad():
                torch.testing.assert_close(loaded(x).logits, expected, atol=0, rtol=0)
