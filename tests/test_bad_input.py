"""Bad input at the model level: every mistake gets an error that names the problem and the fix.

tests/test_api.py covers the wrong channel count, channels-last input, a missing batch dimension, uint8
input, out-of-range labels, a bool_masked_pos of the wrong length or without a mask token, and a single
head_mask tensor for stages with different head counts; this file covers the rest.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PARITY_CONFIGS, perturb_
from PIL import Image

import swinv2
from swinv2 import Swinv2Config
from swinv2.modeling import _check_finite

SMALL = PARITY_CONFIGS["two_stage"]  # 32 px, patch 4 -> 8x8 patches; heads [2, 4]; depths [2, 2]


def built(cls: type, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls(Swinv2Config(**{**SMALL, **overrides})).eval()
    perturb_(model, torch.Generator().manual_seed(1))
    return model


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return built(swinv2.Swinv2ForImageClassification, num_labels=3)


@pytest.fixture(scope="module")
def mim() -> torch.nn.Module:
    return built(swinv2.Swinv2ForMaskedImageModeling, encoder_stride=8)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------------------------------------- pixel_values
@pytest.mark.parametrize(
    ("pixel_values", "error", "message"),
    [
        (None, ValueError, r"pixel_values is required: a float tensor \(batch, channels, height, width\)"),
        (np.zeros((1, 3, 32, 32), np.float32), TypeError, "must be a torch.Tensor.*got ndarray.*Swinv2ImageProcessor"),
        ([[0.0]], TypeError, "must be a torch.Tensor.*got list"),
        (Image.new("RGB", (32, 32)), TypeError, "must be a torch.Tensor.*got Image.*Swinv2ImageProcessor"),
        (torch.tensor(1.0), ValueError, r"4 dimensions.*got shape \(\); reshape it"),
        (torch.zeros(32, 32), ValueError, r"got shape \(32, 32\); for one single-channel image use pixel_values\[None"),
        (torch.zeros(1, 1, 3, 32, 32), ValueError, r"got shape \(1, 1, 3, 32, 32\); reshape it to \(batch, channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), TypeError,
         r"floating-point tensor, got torch.int64.*float\(\) / 255"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.bool), TypeError, "floating-point tensor, got torch.bool"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.complex64), TypeError, "floating-point tensor, got torch.complex64"),
        (torch.zeros(0, 3, 32, 32), ValueError, r"pixel_values is empty: shape \(0, 3, 32, 32\); every image needs"),
        (torch.zeros(1, 3, 0, 32), ValueError, r"pixel_values is empty: shape \(1, 3, 0, 32\)"),
        (torch.zeros(1, 3, 32, 0), ValueError, r"pixel_values is empty: shape \(1, 3, 32, 0\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.float64), TypeError,
         r"pixel_values is torch.float64 but the model's weights are torch.float32; convert the input with "
         r"pixel_values.to\(model.dtype\), or run the model under torch.autocast"),
        (torch.zeros(1, 3, 32, 32, device="meta"), ValueError,
         r"pixel_values is on meta but the model's weights are on cpu; move the input with "
         r"pixel_values.to\(model.device\)"),
    ],
    ids=["none", "numpy", "list", "pil", "scalar", "rank2", "rank5", "int64", "bool", "complex", "empty-batch",
         "zero-height", "zero-width", "float64", "other-device"],
)
def test_bad_pixel_values(classifier, pixel_values, error, message):
    with pytest.raises(error, match=message):
        classifier(pixel_values)


@pytest.mark.parametrize("model_class", ["Swinv2Model", "Swinv2ForMaskedImageModeling", "Swinv2Backbone"])
def test_every_model_checks_its_input(model_class):
    model = built(getattr(swinv2, model_class), encoder_stride=8)
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"torch.float64 but the model's weights are torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    bad = torch.zeros(1, 3, 32, 32)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN and 0 infinite"):
        model(bad)


def test_low_precision_model_wants_its_dtype_or_autocast(x):
    model = built(swinv2.Swinv2ForImageClassification, num_labels=3).bfloat16()
    with pytest.raises(TypeError, match=r"float32 but the model's weights are torch.bfloat16.*\.to\(model.dtype\)"):
        model(x)
    with torch.no_grad():
        direct = model(x.bfloat16()).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x).logits  # autocast converts the input itself: allowed
    assert torch.isfinite(direct).all() and torch.isfinite(autocast).all()
    torch.testing.assert_close(autocast, direct, atol=0.05, rtol=0.05)


def test_non_contiguous_input_is_fine(classifier, x):
    """Channels-last memory and strided views are valid inputs with the same numbers."""
    wide = torch.cat([x, x.flip(-1)], dim=3)
    assert not wide[..., ::2].is_contiguous()
    with torch.no_grad():
        expected = classifier(x).logits
        channels_last = classifier(x.contiguous(memory_format=torch.channels_last)).logits
        strided = classifier(wide[..., ::2]).logits
        copied = classifier(wide[..., ::2].contiguous()).logits
    torch.testing.assert_close(channels_last, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(strided, copied, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- NaN / Inf
def test_nan_and_inf_are_rejected_naming_the_images(classifier, x):
    x = x.clone()
    x[1, 0, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError) as err:
        classifier(x)
    message = str(err.value)
    assert "1 NaN and 1 infinite values (batch indices [1])" in message
    assert "torch.nan_to_num" in message and "check_finite_inputs=False" in message


def test_finite_check_can_be_switched_off(x, tmp_path):
    """With the check off, NaN stays inside its image: the other images of the batch are unaffected."""
    model = built(swinv2.Swinv2ForImageClassification, num_labels=3, check_finite_inputs=False)
    bad = x.clone()
    bad[0, 1, 10, 10] = float("nan")
    with torch.no_grad():
        logits = model(bad).logits
        clean = model(x).logits
    assert torch.isnan(logits[0]).all()
    torch.testing.assert_close(logits[1], clean[1], atol=1e-5, rtol=1e-5)
    # The switch travels in config.json and can be overridden when loading.
    model.save_pretrained(tmp_path)
    assert swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path).config.check_finite_inputs is False
    strict = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path, check_finite_inputs=True)
    with pytest.raises(ValueError, match="1 NaN"):
        strict(bad)


def test_finite_check_policy_by_device():
    """None (default) checks CPU tensors only; True checks everywhere; False never. A meta tensor has no
    values, so it shows which policy looks at them without a GPU."""
    on_meta = torch.empty(1, 3, 4, 4, device="meta")
    _check_finite(on_meta, None)  # skipped: not on the CPU (on a GPU the check would cost a host sync)
    _check_finite(torch.full((1, 3, 4, 4), float("nan")), False)  # switched off
    with pytest.raises(ValueError, match="16 NaN"):
        _check_finite(torch.full((1, 1, 4, 4), float("nan")), None)
    with pytest.raises((RuntimeError, NotImplementedError)):
        _check_finite(on_meta, True)  # True does look, even off the CPU (meta cannot answer)
    # Finite values whose sum overflows (the quick test) pass the exact one: no false alarm.
    _check_finite(torch.full((1, 3, 4, 4), 3e38), None)
    _check_finite(torch.full((1, 3, 4, 4), 6e4, dtype=torch.float16), None)
    with pytest.raises(ValueError, match="1 NaN and 2 infinite"):  # +inf and -inf summed give NaN: still caught
        _check_finite(torch.tensor([[[[float("inf"), float("-inf"), float("nan")]]]]), None)
    with pytest.raises(ValueError, match=r"check_finite_inputs must be None .*, true or false, got 'yes'"):
        Swinv2Config(**SMALL, check_finite_inputs="yes")


# ---------------------------------------------------------------------------------------------- bool_masked_pos
@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.full((2, 64), 0.5), ValueError, r"must hold True/False \(or 1/0\), got the values \[0.5\]; "
         r"convert it to a bool tensor, e.g. bool_masked_pos > 0.5"),
        (torch.full((2, 64), float("nan")), ValueError, r"must hold True/False \(or 1/0\), got the values \[nan\]"),
        (torch.zeros(2, 64, dtype=torch.complex64), TypeError, r"or 0/1 integers or floats, got torch.complex64"),
        (torch.full((2, 64), 2), ValueError, r"must hold True/False \(or 1/0\), got the values \[2\]; "
         r"convert it to a bool tensor, e.g. bool_masked_pos != 0"),
        ([[0] * 64] * 2, TypeError, r"got list; convert it with torch.as_tensor\(bool_masked_pos, dtype=torch.bool\)"),
        (torch.zeros(3, 64, dtype=torch.bool), ValueError,
         r"= \(2, 64\) for this input \(8x8 patches\), got \(3, 64\)"),
        (torch.zeros(2, 7, 9, dtype=torch.bool), ValueError, r"got \(2, 7, 9\)"),
    ],
    ids=["fraction", "nan", "complex", "not-0-or-1", "list", "batch", "grid"],
)
def test_bad_bool_masked_pos(mim, x, mask, error, message):
    with pytest.raises(error, match=message):
        mim(x, bool_masked_pos=mask)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(encoder_stride=32), r"reconstructs \(128, 128\) pixels for a 32x32 input: encoder_stride \(32\) must "
         r"equal patch_size \* 2\*\*\(num_stages - 1\) = 8; set encoder_stride=8"),
        (dict(patch_size=[4, 2], encoder_stride=8), r"needs a square patch, not 4x2: use patch_size=4 \(or 2\)"),
    ],
    ids=["stride", "non-square-patch"],
)
def test_masked_image_modeling_with_a_decoder_that_does_not_fit(x, overrides, message):
    """A decoder stride that does not undo the encoder's (the reconstruction would only be cropped to fit)."""
    model = built(swinv2.Swinv2ForMaskedImageModeling, **overrides)
    grid = model.swinv2.embeddings.grid_size
    with pytest.raises(ValueError, match=message):
        model(x, bool_masked_pos=torch.ones(2, grid[0] * grid[1], dtype=torch.bool))


def test_integer_and_grid_shaped_masks_mean_the_same(mim, x):
    mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(3)) < 0.4
    with torch.no_grad():
        expected = mim(x, bool_masked_pos=mask)
        as_int = mim(x, bool_masked_pos=mask.long())
        as_grid = mim(x, bool_masked_pos=mask.view(2, 8, 8))
    for other in (as_int, as_grid):
        torch.testing.assert_close(other.reconstruction, expected.reconstruction)
        torch.testing.assert_close(other.loss, expected.loss)


# ---------------------------------------------------------------------------------------------- head_mask
@pytest.mark.parametrize(
    ("head_mask", "error", "message"),
    [
        (torch.ones(2, 2, 2, 2), ValueError, r"head_mask has shape \(2, 2, 2, 2\); .* must be \(num_stages, "
         r"max\(depths\), num_heads or 1, .* with heads 1; or a list with one \(num_heads_i,\) or \(depth_i, "
         r"num_heads_i\) tensor \(or None\) per stage \(num_heads \[2, 4\] differ"),
        (torch.ones(2, 2, 2, 1, 1), ValueError, r"head_mask has shape \(2, 2, 2, 1, 1\); for num_heads=\[2, 4\] "
         r".* must be \(num_stages, max\(depths\), num_heads or 1, 1 or N, 1 or N\) .* with heads 1; or a list"),
        (torch.ones(2, 2, 1, 1, 3), ValueError, r"a block's head_mask of shape \(1, 1, 3\) does not broadcast over "
         r"its attention probabilities \(2 heads, 16x16 window tokens\); give \(2,\) or \(2 or 1, 16 or 1, 16 or 1\)"),
        (torch.ones(1, 2, 2), ValueError, r"head_mask has shape \(1, 2, 2\); "),
        ([torch.ones(2)], ValueError, r"one entry per stage \(2: .*got 1 entries"),
        ([torch.ones(3), None], ValueError, r"stage 1 must have shape \(2,\), \(2, 2\) or \(2, 2 or 1, N or 1, N or "
         r"1\) \(stage 1 has 2 blocks of 2 heads\), got \(3,\)"),
        ([None, torch.ones(3, 4)], ValueError, r"stage 2 must have shape \(4,\), \(2, 4\) or .*got \(3, 4\)"),
        ("all", TypeError, "head_mask must be a tensor .* or a list with one entry per stage, got str"),
    ],
    ids=["rank4", "rank5-heads-differ", "rank5-tokens", "rank3-one-stage", "too-few-stages", "stage-heads",
         "stage-depth", "string"],
)
def test_bad_head_mask(classifier, x, head_mask, error, message):
    with pytest.raises(error, match=message):
        classifier(x, head_mask=head_mask)


@pytest.mark.parametrize("shape", [(3,), (5,), (1, 2), (2, 2, 3), (2, 3, 2, 1, 1), (2, 2, 3, 1, 1)])
def test_head_mask_error_names_the_shape_given_and_every_form(x, shape):
    """The shape passed (a (3,) mask was reported as (2, 3), after its expansion to one row per stage), and
    every form that fits this model, the per-block ones included; each of them runs."""
    model = built(swinv2.Swinv2Model, num_heads=[2, 2])  # depths [2, 2]: every form fits
    forms = [(2,), (2, 2), (2, 2, 2)]
    with pytest.raises(ValueError) as caught:
        model(x, head_mask=torch.ones(shape))
    message = str(caught.value)
    assert message.startswith(f"head_mask has shape {shape};")
    assert all(str(form) in message for form in forms) and "a list with one (num_heads_i,)" in message
    assert "(num_stages, max(depths), num_heads or 1, 1 or N, 1 or N)" in message
    with torch.no_grad():
        plain = model(x).last_hidden_state
        for form in [*forms, (2, 2, 2, 1, 1), (2, 2, 1, 1, 1), (2, 2, 2, 16, 16), (2, 2, 1, 1, 16)]:
            torch.testing.assert_close(model(x, head_mask=torch.ones(form)).last_hidden_state, plain)


def test_head_mask_per_stage_is_applied(classifier, x):
    with torch.no_grad():
        plain = classifier(x).logits
        ones = classifier(x, head_mask=[torch.ones(2), torch.ones(2, 4)]).logits
        off = classifier(x, head_mask=[torch.tensor([1.0, 0.0]), None]).logits
    torch.testing.assert_close(ones, plain, atol=1e-5, rtol=1e-5)
    assert (off - plain).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- labels
def test_bad_labels(x):
    model = built(swinv2.Swinv2ForImageClassification, num_labels=3)
    with pytest.raises(TypeError, match=r"labels must be a tensor, got list; convert it with torch.as_tensor"):
        model(x, labels=[0, 1])
    with pytest.raises(ValueError, match=r"labels has 3 entries for a batch of 2 images; .* shape \(2,\)"):
        model(x, labels=torch.tensor([0, 1, 2]))
    # -100 marks ignored samples; any other negative value is an error even next to it.
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\] \(num_labels=3\) or -100 \(ignored\), got "
                       r"values in \[-5, -5\]"):
        model(x, labels=torch.tensor([-100, -5]))
    assert torch.isfinite(model(x, labels=torch.tensor([-100, 2])).loss)
    assert torch.isfinite(model(x, labels=torch.tensor([[0], [2]])).loss)  # (B, 1) is one index per image
    # The first integer labels fixed problem_type; float labels then fail with the way out.
    with pytest.raises(TypeError, match=r"integer class labels, got torch.float32; convert them with labels.long\(\)"):
        model(x, labels=torch.tensor([0.0, 1.0]))


def test_bad_regression_and_multi_label_targets(x):
    regression = built(swinv2.Swinv2ForImageClassification, num_labels=1)
    with pytest.raises(ValueError, match=r"regression needs one target per output: .* \(2, 1\) \(or \(batch,\)\), "
                       r"got \(2, 2\)"):
        regression(x, labels=torch.randn(2, 2))  # would broadcast into a meaningless loss
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        regression(x, labels=torch.randn(3))
    targets = torch.tensor([0.5, -1.0])
    loss = regression(x, labels=targets).loss
    torch.testing.assert_close(loss, ((regression(x).logits.view(-1) - targets) ** 2).mean())

    multi = built(swinv2.Swinv2ForImageClassification, num_labels=3, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match=r"shaped like the logits \(2, 3\) \(one 0/1 target per class\), got \(2, 2\)"):
        multi(x, labels=torch.ones(2, 2))

    headless = built(swinv2.Swinv2ForImageClassification, num_labels=0)
    with pytest.raises(ValueError, match=r"num_labels=0 .*computes no loss; drop the labels"):
        headless(x, labels=torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------- hostile files
def _safetensors_bytes(header: dict, payload: bytes) -> bytes:
    import json
    import struct

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def test_safetensors_header_that_lies_about_sizes(tmp_path):
    """A header claiming more bytes than the file holds is refused with a clear message, not a crash."""
    from swinv2 import Swinv2Model
    from swinv2.checkpoints import CheckpointError

    lying = {"embeddings.proj.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    (tmp_path / "model.safetensors").write_bytes(_safetensors_bytes(lying, b"\0" * 64))
    with pytest.raises(CheckpointError, match="safetensors"):
        Swinv2Model.from_pretrained(tmp_path / "model.safetensors")
    huge_header = b"\xff" * 8 + b"{}"
    (tmp_path / "model.safetensors").write_bytes(huge_header)
    with pytest.raises(CheckpointError, match="safetensors"):
        Swinv2Model.from_pretrained(tmp_path / "model.safetensors")


def test_zero_byte_checkpoint(tmp_path):
    from swinv2 import Swinv2Model
    from swinv2.checkpoints import CheckpointError

    for name in ("model.safetensors", "model.pth"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(CheckpointError, match="empty"):
            Swinv2Model.from_pretrained(tmp_path / name)
