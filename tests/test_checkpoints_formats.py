"""Checkpoints of every library: timm, torchvision, Microsoft (and SimMIM), Hugging Face, mapped both ways.

The other libraries build their models with random weights, moved away from their initial values (timm
initialises the post-norms to zero, which would hide any mistake in the blocks), and their logits are the
reference. Tolerance: atol 1e-5 on float32 logits (the same math in another order); the models' logits are
~0.1-2 in size, and the measured differences ~1e-8 (small models) to ~5e-7 (the real tiny architectures).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import transformers
from conftest import perturb_, torchvision_swinv2
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer_v2 import SwinTransformerV2, checkpoint_filter_fn
from torchvision.models.swin_transformer import SwinTransformer

import swinv2
from swinv2 import checkpoints as ck
from swinv2 import kernels
from swinv2.config import PRESET_NAMES, preset_config

ATOL = 1e-5
SMALL = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)


def images(size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_small(num_classes: int = 5, **kwargs) -> SwinTransformerV2:
    torch.manual_seed(0)
    return perturb_(SwinTransformerV2(img_size=64, num_classes=num_classes, **{**SMALL, **kwargs}))


def torchvision_small(num_classes: int = 5) -> SwinTransformer:
    torch.manual_seed(0)
    return perturb_(torchvision_swinv2(num_classes))


def ours(kind: str = "Swinv2ForImageClassification", seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    fields = dict(image_size=64, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5)
    return perturb_(getattr(swinv2, kind)(swinv2.Swinv2Config(**{**fields, **config})), seed)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_timm_small_logits_match(tmp_path, suffix):
    reference = timm_small()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path, window_size=4, image_size=64)
    assert (model.config.embed_dim, model.config.depths, model.config.num_heads) == (32, [2, 2], [2, 4])
    assert model.config.num_labels == 5
    x = images(64)
    with torch.no_grad():
        diff = max_diff(model(x).logits, reference(x))
    assert diff < ATOL, f"timm (small): max |logits difference| {diff:.2e}"


@pytest.mark.parametrize(
    ("size", "window", "warning", "atol", "overrides"),
    [
        # 13x13 patches, window 5: timm shifts before it pads, as the file is read; a config that pads first
        # (transformers' and torchvision's order) computes otherwise, and is told so
        (52, 5, r"stage 1 \(13x13 patches\): timm shifts before it pads.*differ from timm's", 1e-5,
         {"window_layout": "transformers"}),
        # patch 4 does not divide 70 px: timm's convolution drops the last 2 pixels (17x17 patches) where
        # transformers' layout pads them (18x18), although 18x18 is whole windows of 3 (timm's own layout,
        # with which the file is read by default, drops them too)
        (70, 3, r"patch 4x4 does not divide the image 70x70: timm drops the last", 1e-4,
         {"window_layout": "transformers"}),
    ],
    ids=["window-padding", "patch-remainder"],
)
def test_timm_geometry_that_computes_otherwise_is_named(tmp_path, size, window, warning, atol, overrides):
    """Where swinv2 computes otherwise than timm the load says that timm's numbers differ; the official
    geometries (whole windows) load without a word."""
    torch.manual_seed(0)
    reference = perturb_(SwinTransformerV2(img_size=size, num_classes=5, **{**SMALL, "window_size": window}))
    save_file(reference.state_dict(), tmp_path / "odd.safetensors")
    with pytest.warns(UserWarning, match=warning):
        model = swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "odd.safetensors", window_size=window, image_size=size, **overrides
        )
    x = images(size)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) > atol  # the difference the warning names
    save_file(timm_small().state_dict(), tmp_path / "whole.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "whole.safetensors", window_size=4, image_size=64
        )


@pytest.mark.parametrize(
    ("fmt", "size", "patch", "window", "depths"),
    [
        ("timm", 52, 4, 5, [2, 2]),
        ("timm", 56, 4, 8, [2, 2]),
        ("timm", 60, 2, 4, [2, 3]),
        ("timm", 24, 4, 4, [2, 2, 2]),
        ("timm", (42, 22), 4, 4, [2, 2, 2]),
        ("torchvision", 32, 4, 8, [2, 2]),
        ("torchvision", 28, 4, 8, [2, 2]),
        ("torchvision", (30, 70), 4, 4, [2, 2]),
    ],
    ids=["timm-13x13-window5", "timm-14x14-window8", "timm-30x30-window4", "timm-6x6-small-stages",
         "timm-10x5-windows-per-side", "torchvision-8x8-window8", "torchvision-7x7-window8",
         "torchvision-7x17-shifts-per-side"],
)
def test_peer_checkpoints_lay_windows_out_as_their_library_does(
    tmp_path, monkeypatch, fmt, size, patch, window, depths
):
    """Where a grid is not whole windows or a stage is small the libraries lay windows out otherwise: timm
    rolls a grid before it pads it (transformers and torchvision pad first) and sizes a stage's window from
    the grid it runs on (6x6 patches -> 3x3 -> 2x2: a window of 2 at stage 3, where transformers'
    floor-halved 6 // 4 gives 1); torchvision never shrinks a window (7x7 patches with window 8: padded to
    8x8, where transformers shrinks the window to 7); both drop partial patches, and timm sizes a window per
    side (10x5 patches, window 4: 4x4, then 4x3 on 5x3, then 3x2), torchvision shifts per side (7x17 -> 4x9:
    shifted along the width only). Their files are read with their `window_layout`, and
    give their numbers at such sizes (the eager, grouped CPU and exact paths, and the gathers' row indices of
    the GPU path) with no warning; the setting is written to config.json and kept by a conversion back."""
    torch.manual_seed(0)
    heads = [2] * len(depths)
    hw = (size, size) if isinstance(size, int) else size
    size = size if isinstance(size, int) else list(size)
    if fmt == "timm":
        reference = SwinTransformerV2(
            img_size=hw, patch_size=patch, window_size=window, embed_dim=16, depths=depths, num_heads=heads,
            num_classes=3,
        )
    else:
        reference = torchvision_swinv2(3, embed_dim=16, depths=depths, num_heads=heads, window=window, patch=patch)
    reference = perturb_(reference)
    save_file(reference.state_dict(), tmp_path / "peer.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "peer.safetensors", window_size=window, image_size=size
        )
        assert model.config.window_layout == fmt
        ck.export_state_dict(model, fmt)  # (the layout the library computes in: nothing to warn about)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = reference(x)
        scale = theirs.abs().max().item()
        assert max_diff(model(x).logits, theirs) < 1e-5 * max(1.0, scale)
        exact = model(x, output_attentions=True).logits  # the step-by-step path
        assert max_diff(exact, theirs) < 1e-5 * max(1.0, scale)
    with monkeypatch.context() as context:  # the GPU path's Triton gathers, under the interpreter
        context.setattr(kernels, "INTERPRET_ON_CPU", True)
        context.setattr(kernels, "TRITON_FOUND", True)
        with torch.no_grad():
            assert max_diff(model(x).logits, theirs) < 1e-5 * max(1.0, scale)
    # the input's gradient through the layout moves and their backward (in eval mode: no stochastic depth)
    weights = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(3))
    grads = []
    for net, logits_of in ((model, lambda out: out.logits), (reference, lambda out: out)):
        pixels = x.clone().requires_grad_()
        (logits_of(net(pixels)) * weights).sum().backward()
        grads.append(pixels.grad)
    assert max_diff(*grads) < 1e-5 * max(1.0, grads[1].abs().max().item())
    model.save_pretrained(tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["window_layout"] == fmt
    again = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "folder")
    assert again.config.window_layout == fmt
    with torch.no_grad():
        assert max_diff(again(x).logits, theirs) < 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("mlp_ratio", [3.3, 1.7, 2.5])
def test_mlp_ratio_that_is_no_integer_is_inferred_from_every_stage(tmp_path, mlp_ratio):
    """int(16 * 3.3) = 52 but int(32 * 3.3) = 105, not 2 * 52: the ratio is the one that gives every stage's
    width, not stage 1's width over embed_dim."""
    torch.manual_seed(0)
    kwargs = {**SMALL, "embed_dim": 16, "mlp_ratio": mlp_ratio}
    reference = perturb_(SwinTransformerV2(img_size=64, num_classes=5, **kwargs))
    save_file(reference.state_dict(), tmp_path / "ratio.safetensors")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(
        tmp_path / "ratio.safetensors", window_size=4, image_size=64
    )
    assert model.config.mlp_ratio == mlp_ratio
    x = images(64)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


def test_mlp_widths_no_ratio_gives_are_refused():
    state = ck.export_state_dict(ours(), "timm")
    state["layers.1.blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)  # stage 1 has 64 = int(16 * 4)
    with pytest.raises(ck.CheckpointError, match=r"MLP widths \[64, 7\].*fit no single mlp_ratio"):
        ck.infer_config(state, window_size=4, image_size=64)


def test_timm_real_architecture_at_a_portrait_size_from_save_for_hf(tmp_path):
    """swinv2_tiny_window8_256 built at 256 x 192 px and saved with timm's save_for_hf: its last stage is 8x6
    patches, where timm narrows the window to 8x6 (unshifted); read from the folder, the model does the same
    and gives timm's logits."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256", img_size=(256, 192), num_classes=7)).eval()
    save_for_hf(reference, tmp_path / "portrait", model_args={"img_size": (256, 192), "num_classes": 7})
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "portrait")
    assert (model.config.image_size, model.config.window_layout) == ([256, 192], "timm")
    assert [(b.window, b.shift) for b in model.swinv2.stages[3].blocks] == [((8, 6), (0, 0))] * 2
    x = torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(x)
        assert max_diff(model(x).logits, expected) < 1e-5 * max(1.0, expected.abs().max().item())


def test_timm_real_architecture_from_timm_hub_layout(tmp_path):
    """swinv2_tiny_window8_256 as timm publishes it: model.safetensors, config.json naming the model."""
    import timm

    torch.manual_seed(0)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256"))
    folder = tmp_path / "timm-swinv2_tiny"
    folder.mkdir()
    save_file(reference.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text('{"architecture": "swinv2_tiny_window8_256", "num_classes": 1000}')
    model = swinv2.Swinv2ForImageClassification.from_pretrained(folder)
    assert (model.config.window_size, model.config.image_size, model.config.num_labels) == (8, 256, 1000)
    x = images(256, batch=1)
    with torch.no_grad():
        expected = reference(x)
        diff = max_diff(model(x).logits, expected)
    assert expected.abs().max() > 0.5  # the comparison means something
    assert diff < ATOL, f"timm swinv2_tiny_window8_256: max |logits difference| {diff:.2e}"


def timm_hub_folder(folder: Path, **kwargs) -> torch.nn.Module:
    """swinv2_tiny_window8_256 built with `kwargs`, perturbed, saved as timm saves for the Hugging Face Hub
    (config.json with architecture, model_args and pretrained_cfg, beside model.safetensors)."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256", **kwargs))
    save_for_hf(reference, folder, safe_serialization=True)
    return reference


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(img_size=64), dict(image_size=64, window_size=8, num_channels=3, num_labels=1000)),
        (dict(img_size=64, window_size=4), dict(image_size=64, window_size=4, num_channels=3, num_labels=1000)),
        (
            dict(img_size=64, in_chans=1, num_classes=7),
            dict(image_size=64, window_size=8, num_channels=1, num_labels=7),
        ),
        (dict(img_size=128), dict(image_size=128, window_size=8, num_channels=3, num_labels=1000)),
    ],
    ids=["img64", "img64-window4", "one-channel-7-classes", "img128"],
)
def test_timm_hub_folder_follows_its_model_args(tmp_path, kwargs, expected):
    """A timm Hub folder of a model created with other arguments than its name's (`img_size=64`, ...) builds
    what timm built: the config follows model_args, not only the name, and the logits are timm's (atol 1e-4
    in float32; measured 4e-7 to 1e-6). Read by the name alone (256 px, window 8) they differed by ~1."""
    reference = timm_hub_folder(tmp_path, **kwargs)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path)
    assert {name: getattr(model.config, name) for name in expected} == expected
    x = torch.randn(1, expected["num_channels"], expected["image_size"], expected["image_size"],
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference_logits = reference(x)
        diff = max_diff(model(x).logits, reference_logits)
    assert reference_logits.abs().max() > 0.5  # the comparison means something
    assert diff < 1e-4, f"timm folder {kwargs}: max |logits difference| {diff:.2e}"


def test_timm_hub_folder_settings_that_cannot_be_computed_are_refused(tmp_path):
    """global_pool other than 'avg' (and an argument with no counterpart, or a window_size that is none of
    timm's spellings) would give other numbers than timm's: an error naming the setting, not a silent 'avg'.
    An older folder without model_args gives its size by pretrained_cfg.input_size, and keyword arguments of
    from_pretrained win over the file."""
    import json

    timm_hub_folder(tmp_path / "max", img_size=64, global_pool="max")
    config = json.loads((tmp_path / "max" / "config.json").read_text())
    assert config["model_args"]["global_pool"] == "max"
    with pytest.raises(ck.CheckpointError, match=r"timm's global_pool='max' is not the mean.*not loaded"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "max")
    folder = tmp_path / "edited"
    timm_hub_folder(folder, img_size=64)
    original = json.loads((folder / "config.json").read_text())
    for change, error, message in [
        ({"norm_layer": "rmsnorm"}, ck.CheckpointError, r"model_args norm_layer have no counterpart"),
        ({"window_size": [8, 4, 2]}, ValueError, r"window_size must be .* one of either per stage \(4\)"),
        ({"always_partition": "yes"}, ValueError, r"always_partition must be true or false"),
    ]:
        edited = {**original, "model_args": {**original["model_args"], **change}}
        (folder / "config.json").write_text(json.dumps(edited))
        with pytest.raises(error, match=message):
            swinv2.Swinv2ForImageClassification.from_pretrained(folder)
    del original["model_args"]  # timm before model_args: the size is pretrained_cfg's input_size
    (folder / "config.json").write_text(json.dumps(original))
    assert swinv2.Swinv2ForImageClassification.from_pretrained(folder).config.image_size == 64
    overridden = swinv2.Swinv2ForImageClassification.from_pretrained(folder, image_size=128, window_size=4)
    assert (overridden.config.image_size, overridden.config.window_size) == (128, 4)


@pytest.mark.parametrize(
    ("kwargs", "window_size"),
    [
        (dict(window_size=(8, 4)), [8, 4]),
        (dict(window_size=(2, 6), always_partition=True), [2, 6]),
        (dict(always_partition=True), 8),  # stage 4's 2x2 grid padded to one 8x8 window, shifted by 4
        (dict(window_size=[8, (4, 2), 3, 3]), [8, [4, 2], 3, 3]),
        (dict(window_size=[(5, 5), (5, 5), (5, 5), (5, 5)], always_partition=True), 5),
    ],
    ids=["8x4", "2x6-always-partition", "always-partition", "per-stage", "per-stage-same"],
)
def test_timm_rectangular_per_stage_windows_and_always_partition_are_timms(tmp_path, kwargs, window_size):
    """timm's window_size as (height, width) or one per stage, and always_partition=True (windows that never
    shrink, every other block shifted whatever its grid), read from a Hub folder: timm's logits at img_size
    and at a size of another shape (atol 1e-4; measured <= 1.2e-7 on 300 random small timm models of these
    settings, and gradients within 1.1e-6 relative on 40)."""
    reference = timm_hub_folder(tmp_path, img_size=64, strict_img_size=False, **kwargs)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path)
    assert model.config.window_size == window_size
    assert model.config.always_partition == kwargs.get("always_partition", False)
    for size in [(64, 64), (96, 40)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        with torch.no_grad():
            expected = reference(x)
            diff = max_diff(model(x).logits, expected)
        assert expected.abs().max() > 0.5
        assert diff < 1e-4, f"{kwargs} at {size}: max |logits difference| {diff:.2e}"
    written = ck.ours_to_timm(model)  # back to timm: the same model loads strictly
    reference.load_state_dict(written, strict=True)


def test_timm_model_resized_to_a_non_square_size_is_timms(tmp_path):
    """timm's `set_input_size` to a non-square image scales each stage's window per side (64 px, window 8 ->
    96x64 px, windows 12x8), and save_for_hf records them per stage: read as that model, its logits (atol
    1e-4; measured 2.4e-7 on swinv2-tiny resized 256 -> 384x256 and three other resizes). These were refused
    as non-square windows before."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256", img_size=64, num_classes=5))
    reference.set_input_size(img_size=(96, 64))
    assert reference.layers[0].blocks[0].window_size == (12, 8)
    save_for_hf(reference, tmp_path, safe_serialization=True)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path)
    assert (model.config.image_size, model.config.window_size) == ([96, 64], [12, 8])
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        diff = max_diff(model(x).logits, expected)
    assert expected.abs().max() > 0.5
    assert diff < 1e-4, f"max |logits difference| {diff:.2e}"


def test_timm_checkpoint_without_window_asks_for_it(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(timm_small().state_dict(), path)
    with pytest.raises(
        ck.CheckpointError, match=r"window_size and image_size.*window_size=8, image_size=256"
    ):
        swinv2.Swinv2ForImageClassification.from_pretrained(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_features_only_weights_give_timms_feature_maps(tmp_path, suffix):
    """timm's `features_only=True` model (FeatureListNet) names its stages `layers_N` instead of `layers.N`;
    Swinv2Backbone reads them, from a file and through load_state_dict, and its stage maps are timm's."""
    import timm

    torch.manual_seed(0)
    kwargs = dict(img_size=64, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256", features_only=True, **kwargs))
    state = reference.state_dict()
    assert any(k.startswith("layers_1.downsample.") for k in state) and not any(k.startswith("layers.") for k in state)
    path = tmp_path / f"features{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    stages = ["stage1", "stage2", "stage3"]
    model = swinv2.Swinv2Backbone.from_pretrained(path, image_size=64, window_size=4, out_features=stages)
    assert (model.config.embed_dim, model.config.depths, model.config.num_heads) == (32, [2, 2, 2], [2, 4, 8])
    again = swinv2.Swinv2Backbone(model.config).eval()
    loaded = again.load_state_dict(state)  # timm's keys through load_state_dict as well
    assert not loaded.missing_keys and not loaded.unexpected_keys, loaded
    x = images(64)
    with torch.no_grad():
        expected = [m.permute(0, 3, 1, 2) for m in reference(x)]  # timm's maps are NHWC
        for ours_ in (model, again):
            maps = ours_(x).feature_maps
            assert [tuple(m.shape) for m in maps] == [tuple(e.shape) for e in expected]
            diffs = [max_diff(m, e) for m, e in zip(maps, expected)]
            assert max(diffs) < ATOL, f"timm features_only: max |feature map difference| per stage {diffs}"
    assert min(e.abs().max().item() for e in expected) > 0.5  # the comparison means something


# ---------------------------------------------------------------------------------------------- torchvision
def test_torchvision_small_logits_match(tmp_path):
    reference = torchvision_small()
    path = tmp_path / "swin_small.pth"
    torch.save(reference.state_dict(), path)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path, image_size=64)
    assert model.config.window_size == 4  # from the persisted coordinate tables
    x = images(64)
    with torch.no_grad():
        diff = max_diff(model(x).logits, reference(x))
    assert diff < ATOL, f"torchvision (small): max |logits difference| {diff:.2e}"


def test_torchvision_swin_v2_t_logits_match(tmp_path):
    torch.manual_seed(0)
    reference = perturb_(torchvision.models.swin_v2_t())
    path = tmp_path / "swin_v2_t-b137f0e2.pth"  # torchvision's file name
    torch.save(reference.state_dict(), path)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path)
    config = model.config
    assert (config.embed_dim, config.depths, config.num_heads) == (96, [2, 2, 6, 2], [3, 6, 12, 24])
    assert (config.window_size, config.image_size, config.num_labels) == (8, 256, 1000)
    x = images(256, batch=1)
    with torch.no_grad():
        expected = reference(x)
        diff = max_diff(model(x).logits, expected)
    assert expected.abs().max() > 0.5
    assert diff < ATOL, f"torchvision swin_v2_t: max |logits difference| {diff:.2e}"


def test_torchvision_layout_written_by_us_loads_into_torchvision():
    model = ours(embed_dim=32)
    reference = torchvision_small()
    state = ck.export_state_dict(model, "torchvision")
    assert sorted(state) == sorted(reference.state_dict())
    # qkv.bias = cat(q, 0, v)
    bias = state["features.1.0.attn.qkv.bias"].chunk(3)
    assert torch.equal(bias[0], model.swinv2.stages[0].blocks[0].attn.q_bias.detach())
    assert not bias[1].any()
    reference.load_state_dict(state)
    x = images(64)
    with torch.no_grad():
        diff = max_diff(reference(x), model(x).logits)
    assert diff < ATOL, f"ours -> torchvision: max |logits difference| {diff:.2e}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_file_of_a_model_without_qkv_bias_loads_back(tmp_path, suffix):
    """torchvision always has a qkv bias, so a qkv_bias=False model goes there with zeros; reading it back
    leaves them out. A non-zero bias for such a model is still an unexpected weight."""
    model = ours(qkv_bias=False)
    path = ck.write_checkpoint(model, tmp_path / f"no_bias{suffix}", "torchvision")
    loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path, config=model.config)
    x = images(64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    state = ck.export_state_dict(model, "torchvision")
    state["features.1.0.attn.qkv.bias"] = torch.ones_like(state["features.1.0.attn.qkv.bias"])
    torch.save(state, tmp_path / "biased.pth")
    with pytest.raises(ck.CheckpointError, match=r"1 unexpected: features.1.0.attn.qkv.bias"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "biased.pth", config=model.config)


def test_torchvision_pretrained_window_survives_in_the_coordinate_table():
    """torchvision persists the coordinate table, so a pretrained window rides along (and is read back)."""
    model = ours(image_size=64, window_size=8, pretrained_window_sizes=[4, 4], embed_dim=16)
    state = ck.export_state_dict(model, "torchvision")
    config = ck.infer_config(state, image_size=64)
    assert (config.window_size, config.pretrained_window_sizes) == (8, [4, 4])


# ---------------------------------------------------------------------------------------------- Microsoft
@pytest.mark.parametrize(
    "config",
    [
        dict(embed_dim=32),
        # the last stage's window shrinks to its 4x4 map, pretrained windows normalise the coordinates
        dict(
            embed_dim=16,
            depths=[2, 2, 2],
            num_heads=[2, 4, 8],
            window_size=8,
            pretrained_window_sizes=[4, 4, 2],
        ),
    ],
    ids=["two_stage", "shrunk_window_pretrained"],
)
def test_microsoft_layout_through_timms_own_filter(tmp_path, config):
    """ours -> Microsoft .pth -> timm's checkpoint_filter_fn (its reader of Microsoft files) -> timm model."""
    model = ours(**config)
    path = tmp_path / "swinv2.pth"
    ck.write_checkpoint(model, path, "microsoft")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "swinv2_config"}
    assert "layers.0.downsample.reduction.weight" in raw["model"] and "head.weight" in raw["model"]
    c = model.config
    reference = SwinTransformerV2(
        img_size=64,
        embed_dim=c.embed_dim,
        depths=c.depths,
        num_heads=c.num_heads,
        window_size=c.window_size,
        pretrained_window_sizes=c.pretrained_window_sizes,
        num_classes=5,
    ).eval()
    reference.load_state_dict(checkpoint_filter_fn(raw, reference))
    x = images(64)
    with torch.no_grad():
        diff = max_diff(reference(x), model(x).logits)
    assert diff < ATOL, f"ours -> microsoft -> timm: max |logits difference| {diff:.2e}"


def test_microsoft_buffers_match_microsofts_definitions():
    """The persisted buffers are what Microsoft's code computes: checked against timm's copy of that code."""
    model = ours(
        embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=8, pretrained_window_sizes=[4, 4, 2]
    )
    state = ck.export_state_dict(model, "microsoft")
    reference = SwinTransformerV2(
        img_size=64,
        embed_dim=16,
        depths=(2, 2, 2),
        num_heads=(2, 4, 8),
        window_size=8,
        pretrained_window_sizes=(4, 4, 2),
        num_classes=5,
    )
    for i, stage in enumerate(reference.layers):
        for j, block in enumerate(stage.blocks):
            prefix = f"layers.{i}.blocks.{j}."
            assert torch.allclose(
                state[prefix + "attn.relative_coords_table"], block.attn.relative_coords_table
            )
            assert torch.equal(
                state[prefix + "attn.relative_position_index"], block.attn.relative_position_index
            )
            if block.attn_mask is None:
                assert prefix + "attn_mask" not in state
            else:
                assert torch.equal(state[prefix + "attn_mask"], block.attn_mask)


def test_microsoft_file_without_config_infers_it(tmp_path):
    """A Microsoft .pth as released ({"model": ...}, buffers included, no config): everything is inferred."""
    model = ours(
        embed_dim=16, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=8, pretrained_window_sizes=[4, 4, 2]
    )
    path = tmp_path / "released.pth"
    torch.save({"model": ck.export_state_dict(model, "microsoft")}, path)
    loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path)
    for field in (
        "image_size",
        "embed_dim",
        "depths",
        "num_heads",
        "window_size",
        "pretrained_window_sizes",
        "num_labels",
        "mlp_ratio",
        "qkv_bias",
    ):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    x = images(64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "geometry",
    [
        dict(image_size=18, patch_size=2, depths=[2, 2], num_heads=[2, 4], window_size=6),  # padded stage 0
        dict(image_size=12, patch_size=2, depths=[2, 2], num_heads=[2, 4], window_size=5),
        dict(image_size=40, patch_size=4, depths=[2, 1, 2], num_heads=[2, 4, 4], window_size=7),
        dict(image_size=7, patch_size=1, depths=[2, 2], num_heads=[2, 2], window_size=8),  # every window shrunk
        dict(image_size=32, patch_size=4, depths=[2, 2], num_heads=[2, 4], window_size=4,
             use_absolute_embeddings=True),
    ],
    ids=["padded", "odd-grid", "three-stages", "shrunk", "absolute-positions"],
)
def test_microsoft_file_without_config_odd_geometries(geometry, tmp_path):
    """Grids that are no whole number of windows, or smaller than a window: the image size read from the
    file's buffers builds the same windows and shifts in every stage, hence the same logits."""
    model = ours(**geometry)
    path = tmp_path / "released.pth"
    torch.save({"model": ck.export_state_dict(model, "microsoft")}, path)
    loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path)
    windows = [(b.window, b.shift) for stage in model.swinv2.stages for b in stage.blocks]
    assert [(b.window, b.shift) for stage in loaded.swinv2.stages for b in stage.blocks] == windows
    if geometry.get("use_absolute_embeddings"):
        assert loaded.config.image_size == model.config.image_size
    x = images(geometry["image_size"])
    with torch.no_grad():
        assert max_diff(loaded(x).logits, model(x).logits) == 0.0


def test_official_file_name_gives_the_config(tmp_path):
    """swinv2_tiny_patch4_window8_256.pth: the name alone tells window and image size (no buffers needed)."""
    torch.manual_seed(0)
    reference = perturb_(swinv2.Swinv2ForImageClassification(preset_config("swinv2-tiny-patch4-window8-256")))
    state = ck.export_state_dict(reference, "microsoft")
    state = {k: v for k, v in state.items() if not ck._is_derived(k)}  # as if saved without buffers
    path = tmp_path / "swinv2_tiny_patch4_window8_256.pth"
    torch.save({"model": state}, path)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path)
    loaded = model.config.to_dict()
    assert (loaded.pop("torch_dtype"), loaded.pop("dtype")) == ("float32", "float32")  # what it was loaded in
    assert loaded.pop("shift_mask_value") == -100.0  # Microsoft's code adds its shift mask once
    assert loaded.pop("window_layout") == "microsoft"  # (and sizes windows by the shorter side)
    assert loaded == reference.config.to_dict()


def test_an_official_name_on_another_architecture_gives_no_window_nor_size(tmp_path, caplog):
    """A small timm model saved as swinv2_tiny_window8_256.pth: the name's window 8 and size 256 belong to the
    tiny architecture that the tensors contradict, so they are asked for, with the name once (no warning
    listing it with duplicates); given, the file loads."""
    reference = timm_small()
    path = tmp_path / "swinv2_tiny_window8_256.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="swinv2"), pytest.raises(ck.CheckpointError) as info:
        swinv2.Swinv2ForImageClassification.from_pretrained(path)
    message = str(info.value)
    assert "does not record its window_size and image_size" in message
    assert ("its name swinv2_tiny_window8_256.pth is that of another architecture: embed_dim 96, depths "
            "[2, 2, 6, 2], where its tensors have 32, [2, 2]") in message
    assert message.count("swinv2_tiny_window8_256.pth") == 1 and "keep the official file name" not in message
    assert caplog.text == ""
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path, window_size=4, image_size=64)
    assert (model.config.window_size, model.config.image_size) == (4, 64)


def test_simmim_checkpoint_round_trip_and_fine_tuning(tmp_path):
    model = ours("Swinv2ForMaskedImageModeling", encoder_stride=8)
    path = tmp_path / "simmim_pretrain__swinv2_tiny__img64_window4__100ep.pth"
    ck.write_checkpoint(model, path, "microsoft")
    raw = torch.load(path, weights_only=True)["model"]
    assert all(k.startswith(("encoder.", "decoder.")) for k in raw)
    assert "encoder.mask_token" in raw and "decoder.0.weight" in raw
    assert ck.detect_format(raw) == "microsoft-simmim"
    # Early Swin V2 code named the position-bias MLP rpe_mlp.
    old = {k.replace(".cpb_mlp.", ".rpe_mlp."): v for k, v in raw.items() if not ck._is_derived(k)}
    old_path = tmp_path / "old.pth"
    torch.save({"model": old}, old_path)
    loaded = swinv2.Swinv2ForMaskedImageModeling.from_pretrained(old_path, image_size=64, window_size=4)
    assert loaded.config.encoder_stride == 8
    assert_same_tensors(ck.model_state_canonical(loaded), ck.model_state_canonical(model))
    # Fine-tuning from SimMIM: the decoder and the mask token are left out, only the new head is initialised.
    with pytest.warns(UserWarning, match=r"newly initialised") as record:
        classifier = swinv2.Swinv2ForImageClassification.from_pretrained(path, num_labels=3)
    message = str(record[0].message)
    assert "classifier.weight" in message and "mask_token" not in message and "decoder" not in message
    assert torch.equal(
        classifier.swinv2.stages[1].blocks[1].attn.cpb_mlp[2].weight,
        model.swinv2.stages[1].blocks[1].attn.cpb_mlp[2].weight,
    )


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "kind", ["Swinv2ForImageClassification", "Swinv2Model", "Swinv2ForMaskedImageModeling"]
)
def test_every_format_maps_back_tensor_equal(kind):
    extra = {"encoder_stride": 8} if kind == "Swinv2ForMaskedImageModeling" else {}
    model = ours(kind, **extra)
    canonical = ck.model_state_canonical(model)
    formats = ["hf", "microsoft"] + (
        [] if kind == "Swinv2ForMaskedImageModeling" else ["timm", "torchvision"]
    )
    for fmt in formats:
        written = ck.export_state_dict(model, fmt)
        back, detected = ck.to_canonical(written)
        assert detected == ("microsoft-simmim" if fmt == "microsoft" and extra else fmt)
        assert_same_tensors(back, canonical)


def test_chain_hf_microsoft_timm_torchvision_is_lossless():
    model = ours()
    canonical = ck.model_state_canonical(model)
    state = canonical
    for fmt in ("hf", "microsoft", "timm", "torchvision", "hf"):
        carrier = ours(seed=7)
        ck.load_into_model(carrier, state, "swinv2")
        state, detected = ck.to_canonical(ck.export_state_dict(carrier, fmt))
        assert detected == fmt
    assert_same_tensors(state, canonical)


def test_timm_and_torchvision_refuse_what_they_cannot_hold():
    with pytest.raises(ck.CheckpointError, match=r"position_embeddings.*convert to hf or microsoft"):
        ck.export_state_dict(ours(use_absolute_embeddings=True), "timm")
    with pytest.raises(ck.CheckpointError, match=r"decoder.*convert to hf or microsoft"):
        ck.export_state_dict(ours("Swinv2ForMaskedImageModeling", encoder_stride=8), "torchvision")


def test_torchvision_checkpoints_shift_as_each_input_grid_asks(tmp_path, monkeypatch):
    """torchvision decides on every call along which sides to shift (those where the input's grid spans more
    than one window; its window never shrinks): a model read from its file does the same, so it gives
    torchvision's numbers at input sizes other than its image_size (64 px here, window 4: a 30x100 input's
    second stage is 4x13 patches, shifted along the width only, where a 64 px input's 8x8 is shifted both
    ways and a 17x23 input's 2x3 not at all), on the
    eager, grouped CPU, exact and interpreted-Triton paths, input gradients included."""
    torch.manual_seed(0)
    reference = perturb_(torchvision_swinv2(3, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window=4)).eval()
    save_file(reference.state_dict(), tmp_path / "tv.safetensors")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "tv.safetensors", image_size=64,
                                                                window_size=4).eval()
    stage2 = model.swinv2.stages[1].blocks[1]
    assert (stage2.shift_for(8, 8), stage2.shift_for(4, 13), stage2.shift_for(2, 3)) == ((2, 2), (0, 2), (0, 0))
    for hw in ((30, 100), (64, 64), (150, 30), (17, 23)):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
        with torch.no_grad():
            theirs = reference(x)
            tolerance = 1e-5 * max(1.0, theirs.abs().max().item())
            assert max_diff(model(x).logits, theirs) < tolerance, hw
            assert max_diff(model(x, output_attentions=True).logits, theirs) < tolerance, hw
            with monkeypatch.context() as context:  # the GPU path's Triton gathers, under the interpreter
                context.setattr(kernels, "INTERPRET_ON_CPU", True)
                context.setattr(kernels, "TRITON_FOUND", True)
                assert max_diff(model(x).logits, theirs) < tolerance, hw
        grads = []
        for net, logits_of in ((model, lambda out: out.logits), (reference, lambda out: out)):
            pixels = x.clone().requires_grad_()
            logits_of(net(pixels)).square().sum().backward()
            grads.append(pixels.grad)
        assert max_diff(*grads) < 1e-4 * grads[1].abs().max().item(), hw


PEER_GEOMETRIES = [  # (library, image (h, w), patch, window, depths): each way the layouts part, and alike
    ("timm", (64, 64), 4, 4, [2, 2]),  # whole windows everywhere: alike
    ("timm", (52, 52), 4, 5, [2, 2]),  # 13x13 patches: timm shifts, then pads
    ("timm", (28, 28), 4, 2, [2, 2]),  # 7x7 padded by half a window (the shift): alike
    ("timm", (36, 36), 4, 4, [1, 2]),  # 9x9 (never shifted), then 5x5: transformers' shift from 9 // 2 = 4
    ("timm", (32, 64), 4, 4, [2, 2]),  # non-square: timm shifts per side (stage 2: 4x8 patches)
    ("timm", (24, 40), 4, 8, [2, 2]),  # windows per side in timm, square (the height's) in transformers
    ("timm", (30, 30), 4, 3, [2, 2]),  # the patch convolution drops 2 pixels
    ("timm", (46, 27), 4, 5, [2, 2, 2]),  # partial patches both ways, then 11x6 -> 6x3 -> 3x2 per side
    ("timm", (20, 56), 2, 7, [2, 3]),  # 10x28: window 7 by the height, 7 by the width, shifted both ways
    ("torchvision", (52, 52), 4, 5, [2, 2]),  # padding before the shift, as transformers: alike
    ("torchvision", (32, 32), 4, 8, [2, 2]),  # transformers shrinks stage 2's window to 4, torchvision pads
    ("torchvision", (32, 64), 4, 4, [2, 2]),  # non-square: no shift on the side one window covers
    ("torchvision", (64, 32), 2, 8, [2, 1, 2]),  # the per-side stage (16x8) has no shifted block: alike
    ("torchvision", (72, 72), 4, 4, [2, 2, 2]),  # 18x18 -> 9x9 -> 5x5: transformers' stage-3 shift from 4
    ("torchvision", (29, 61), 4, 4, [2, 2]),  # partial patches dropped (7x15), then 4x8: per-side shift
]


@pytest.mark.parametrize(("fmt", "hw", "patch", "window", "depths"), PEER_GEOMETRIES)
def test_peer_geometry_warning_is_given_exactly_where_outputs_differ(tmp_path, fmt, hw, patch, window, depths):
    """timm and torchvision lay windows out otherwise than transformers in some geometries (per-side windows
    and shifts, shift before padding, windows never shrunk, a patch remainder dropped). Their files are read
    with their own `window_layout`, which gives their numbers in every one of these geometries without a
    word; read with transformers' layout, reading and writing warn where the outputs differ, and only there."""
    torch.manual_seed(0)
    heads = [2] * len(depths)
    if fmt == "timm":
        reference = SwinTransformerV2(
            img_size=hw, patch_size=patch, num_classes=3, embed_dim=16, depths=depths, num_heads=heads,
            window_size=window,
        )
    else:
        reference = torchvision_swinv2(3, embed_dim=16, depths=depths, num_heads=heads, window=window, patch=patch)
    reference = perturb_(reference).eval()
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    size = list(hw) if hw[0] != hw[1] else hw[0]
    save_file(reference.state_dict(), tmp_path / "peer.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own = swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "peer.safetensors", image_size=size, window_size=window, patch_size=patch
        )
        ck.export_state_dict(own, fmt)
    with torch.no_grad():
        theirs = reference(x)
        assert max_diff(own(x).logits, theirs) < 1e-5 * max(1.0, theirs.abs().max().item())
        assert max_diff(own(x, output_attentions=True).logits, theirs) < 1e-5 * max(1.0, theirs.abs().max().item())
    with warnings.catch_warnings(record=True) as read:
        warnings.simplefilter("always")
        model = swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "peer.safetensors", image_size=size, window_size=window, patch_size=patch,
            window_layout="transformers",
        )
    with warnings.catch_warnings(record=True) as written:
        warnings.simplefilter("always")
        ck.export_state_dict(model, fmt)
    with torch.no_grad():  # (measured over 200 random geometries: <= 6e-7 where alike, >= 3e-3 where not)
        differ = max_diff(model(x).logits, reference(x)) > 1e-5 * reference(x).abs().max().item()
    for caught in (read, written):
        messages = [str(w.message) for w in caught if "lays its windows out otherwise" in str(w.message)]
        assert bool(messages) == differ, (differ, messages)


@pytest.mark.parametrize("wrapper", ["state_dict_ema", "model_ema", "averaged_model"])
def test_averaged_weights_as_training_scripts_save_them_load(tmp_path, wrapper):
    """timm's train.py keeps the EMA under `state_dict_ema`, other scripts under `model_ema`, and
    torch.optim.swa_utils.AveragedModel (torchvision's reference scripts) saves `module.*` keys beside its
    `n_averaged` count: each loads as the plain state dict would."""
    reference = timm_small()
    if wrapper == "averaged_model":
        averaged = torch.optim.swa_utils.AveragedModel(reference)
        payload = averaged.state_dict()
        assert "n_averaged" in payload
    else:
        payload = {wrapper: reference.state_dict(), "epoch": 3}
    torch.save(payload, tmp_path / "ema.pth")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "ema.pth", window_size=4, image_size=64)
    x = images(64)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL


def test_weights_saved_from_wrappers_load_under_the_models_names(tmp_path):
    """A compiled model's state dict (`_orig_mod.`), a Lightning checkpoint of a module holding the model as
    `self.model` (`{"state_dict": {"model.*"}}`), and DDP around a compiled model (`module._orig_mod.`)."""
    reference = timm_small()
    compiled = torch.compile(reference)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    state = reference.state_dict()
    payloads = {
        "compiled.pth": compiled.state_dict(),
        "lightning.ckpt": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 2},
        "ddp-compiled.safetensors": {f"module._orig_mod.{k}": v.contiguous() for k, v in state.items()},
    }
    x = images(64)
    for name, payload in payloads.items():
        if name.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(payload, tmp_path / name)
        else:
            torch.save(payload, tmp_path / name)
        model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / name, window_size=4, image_size=64)
        with torch.no_grad():
            assert max_diff(model(x).logits, reference(x)) < ATOL, name


def test_timm_train_py_checkpoints_load_and_stay_safe(tmp_path):
    """timm's train.py writes model_best.pth.tar / last.pth.tar through its CheckpointSaver: the weights under
    `state_dict` (the EMA's under `state_dict_ema`) beside the optimizer, the epoch, `arch` and its options as
    an argparse.Namespace (`args`). They load with weights_only=True, the model's own weights (not the EMA's),
    and a file of that name is found in a folder; a Namespace still cannot smuggle in code."""
    import argparse

    from timm.utils import CheckpointSaver, ModelEmaV3

    reference = timm_small()
    ema = ModelEmaV3(reference, decay=0.5)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the EMA lags behind the model
    ema.update(reference)
    args = argparse.Namespace(model="swinv2_small", img_size=64, lr=1e-3, input_size=None, mean=[0.5, 0.5, 0.5])
    optimizer = torch.optim.AdamW(reference.parameters())
    runs = tmp_path / "run"
    runs.mkdir()
    saver = CheckpointSaver(
        reference, optimizer, args=args, model_ema=ema, checkpoint_dir=str(runs), recovery_dir=str(runs),
        decreasing=False, max_history=1,
    )
    saver.save_checkpoint(epoch=0, metric=1.0)
    saved = torch.load(runs / "last.pth.tar", weights_only=False)
    assert {"state_dict", "state_dict_ema", "optimizer", "arch", "args", "epoch"} <= saved.keys()
    assert isinstance(saved["args"], argparse.Namespace)
    x = images(64)
    with torch.no_grad():
        expected, averaged = reference.eval()(x), ema.module.eval()(x)
    assert max_diff(expected, averaged) > 1e-2  # which weights were loaded shows in the logits
    single = tmp_path / "single"
    single.mkdir()
    (single / "model_best.pth.tar").write_bytes((runs / "model_best.pth.tar").read_bytes())
    for source in (runs / "model_best.pth.tar", runs / "last.pth.tar", single):
        model = swinv2.Swinv2ForImageClassification.from_pretrained(source, window_size=4, image_size=64)
        with torch.no_grad():
            diff = max_diff(model(x).logits, expected)
        assert diff < ATOL, f"{source}: max |logits difference| from timm's model {diff:.2e}"
    assert ck.find_weights(single) == single / "model_best.pth.tar"
    # The Namespace is allowed, not what it holds: an attribute that runs code is still refused.
    marker = tmp_path / "pwned.txt"
    evil = runs / "evil.pth.tar"
    torch.save({"state_dict": saved["state_dict"], "args": argparse.Namespace(hook=_WritesAFile(marker))}, evil)
    with pytest.raises(ck.CheckpointError, match=r"Python objects besides tensors.*not loaded"):
        swinv2.Swinv2ForImageClassification.from_pretrained(evil, window_size=4, image_size=64)
    assert not marker.exists()


def test_timm_train_py_checkpoints_tell_their_architecture(tmp_path):
    """A train.py checkpoint records the name it gave create_model (`arch`) and, in `args`, what train.py adds
    (`model_kwargs`, `in_chans`, `gp`): enough to build the model without a config, as timm's config.json
    is. A pooling other than the mean is refused, as from timm's config.json."""
    import argparse

    import timm

    kwargs = dict(img_size=48, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    torch.manual_seed(0)
    reference = perturb_(timm.create_model("swinv2_tiny_window8_256", num_classes=3, in_chans=1, **kwargs))
    args = argparse.Namespace(model="swinv2_tiny_window8_256", model_kwargs=kwargs, in_chans=1, gp=None)
    torch.save({"arch": args.model, "args": args, "state_dict": reference.state_dict(), "epoch": 3},
               tmp_path / "model_best.pth.tar")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "model_best.pth.tar")
    assert (model.config.image_size, model.config.window_size, model.config.num_channels) == (48, 4, 1)
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = max_diff(model(x).logits, reference.eval()(x))
    assert diff < ATOL, f"max |logits difference| from timm's model {diff:.2e}"
    args.gp = "max"
    torch.save({"arch": args.model, "args": args, "state_dict": reference.state_dict()}, tmp_path / "max.pth.tar")
    with pytest.raises(ck.CheckpointError, match="global_pool='max'"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "max.pth.tar")


def test_timm_fine_tuned_name_keeps_its_pretrained_windows_under_other_model_args(tmp_path):
    """timm builds `create_model("swinv2_base_window12to16_192to256", **model_args)`: the name's pretrained
    windows (12, 12, 12, 6) hold where model_args change width and depth (read as another architecture's name,
    they were lost: [0, 0]). Checked against timm's blocks and outputs, from its Hub folder and from a train.py
    checkpoint. The pretrained window only rescales the position-bias coordinates, so the encoder output is
    compared (it differed by 1e-4, the logits by 2e-6; measured alike to 1e-6)."""
    import argparse

    import timm
    from timm.models._hub import save_for_hf

    name = "swinv2_base_window12to16_192to256"
    model_args = dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=8)
    torch.manual_seed(0)
    reference = perturb_(timm.create_model(name, num_classes=3, **model_args))
    expected_windows = [stage.blocks[0].attn.pretrained_window_size[0] for stage in reference.layers]
    assert expected_windows == [12, 12]
    save_for_hf(reference, tmp_path / "hub", safe_serialization=True)
    args = argparse.Namespace(model=name, model_kwargs=model_args, gp=None)
    torch.save({"arch": name, "args": args, "state_dict": reference.state_dict()}, tmp_path / "last.pth.tar")
    x = images(64)
    with torch.no_grad():
        features, logits = reference.forward_features(x), reference(x)
    for source in (tmp_path / "hub", tmp_path / "last.pth.tar"):
        model = swinv2.Swinv2ForImageClassification.from_pretrained(source)
        assert model.config.pretrained_window_sizes[:2] == expected_windows, source
        with torch.no_grad():
            ours_features = model.swinv2(x).last_hidden_state.reshape(features.shape)
            assert max_diff(ours_features, features) < ATOL, source
            assert max_diff(model(x).logits, logits) < ATOL, source


def test_a_checkpoint_of_only_nested_mappings_names_them(tmp_path):
    torch.save({"weights": {"inner": {"a": torch.zeros(1)}}, "epoch": 1}, tmp_path / "nested.pth")
    with pytest.raises(ck.CheckpointError, match=r"holds no tensors \(but mappings under 'weights'"):
        swinv2.Swinv2Model.from_pretrained(tmp_path / "nested.pth")


def test_rectangular_torchvision_window_is_torchvisions(tmp_path):
    """torchvision takes window_size=[4, 2] (its coordinate tables record it): read as that window, its
    logits at inputs of several shapes (atol 1e-4; 60 random rectangular models measured <= 1.2e-7), and
    written back for torchvision's strict load."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

    torch.manual_seed(0)
    reference = perturb_(SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 2], num_classes=3,
        block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
    ))
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "weights.pth", image_size=64)
    assert (model.config.window_size, model.config.window_layout) == ([4, 2], "torchvision")
    for size in [(64, 64), (36, 70), (20, 12)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            expected = reference(x)
            diff = max_diff(model(x).logits, expected)
            # (pooled, the noise images look alike: the token features show a wrong window at once)
            features = reference.norm(reference.features(x)).flatten(1, 2)
            feature_diff = max_diff(model.swinv2(x).last_hidden_state, features)
        assert features.std() > 0.5
        assert diff < 1e-4 and feature_diff < 1e-4, f"at {size}: max differences {diff:.2e}, {feature_diff:.2e}"
    written = ck.ours_to_torchvision(model)
    assert written["features.1.0.attn.relative_coords_table"].shape == (1, 7, 3, 2)
    reference.load_state_dict(written, strict=True)


def test_windows_a_format_cannot_hold_are_refused_by_name():
    """Microsoft's code has one square window for every stage; torchvision one window for every stage; and a
    rectangular coordinate table in a Microsoft file is no file of its code."""
    rectangular = ours(window_layout="timm", window_size=[4, 2])
    with pytest.raises(ck.CheckpointError, match=r"Microsoft's Swin V2 has one square window.*window_size \[4, 2\]"):
        ck.ours_to_microsoft(rectangular)
    with pytest.raises(ck.CheckpointError, match=r"Microsoft's .* timm's always_partition"):
        ck.ours_to_microsoft(ours(window_layout="timm", always_partition=True))
    per_stage = ours(window_layout="torchvision", window_size=[4, [4, 2]])
    with pytest.raises(ck.CheckpointError, match=r"torchvision's Swin V2 has one window for every stage"):
        ck.ours_to_torchvision(per_stage)
    state = ck.ours_to_microsoft(ours())
    state["layers.0.blocks.0.attn.relative_coords_table"] = torch.zeros(1, 7, 3, 2)
    with pytest.raises(ck.CheckpointError, match=r"stage 1 has 4x2 windows .* microsoft's Swin V2 has square"):
        ck.infer_config(state, "microsoft")


def test_shard_index_without_weight_map_is_named(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ck.CheckpointError, match=r"has no weight_map"):
        swinv2.Swinv2Model.from_pretrained(tmp_path)


def test_convert_refuses_to_write_over_its_source_or_into_a_folder(tmp_path):
    ours().save_pretrained(tmp_path / "hf")
    with pytest.raises(ck.CheckpointError, match=r"is where .* is read from"):
        ck.convert(tmp_path / "hf", tmp_path / "hf" / "model.safetensors", "timm")
    with pytest.raises(ck.CheckpointError, match=r"is where .* is read from"):
        ck.convert(tmp_path / "hf", tmp_path / "hf", "hf")
    with pytest.raises(ck.CheckpointError, match=r"is where .* is read from"):  # a timm folder there
        ck.convert(tmp_path / "hf", tmp_path / "hf", "timm")
    (tmp_path / "out.pth").mkdir()
    with pytest.raises(ck.WriteError, match=r"out.pth is a folder: name the file"):
        ck.convert(tmp_path / "hf", tmp_path / "out.pth", "timm")
    assert list((tmp_path / "hf").iterdir()) and not list((tmp_path / "out.pth").iterdir())


# ---------------------------------------------------------------------------------------------- errors
def test_missing_and_unexpected_keys_are_listed_with_the_format(tmp_path):
    state = timm_small().state_dict()
    del state["layers.1.blocks.0.attn.q_bias"]
    state["layers.0.blocks.0.attn.surprise"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(ck.CheckpointError) as info:
        swinv2.Swinv2ForImageClassification.from_pretrained(path, window_size=4, image_size=64)
    message = str(info.value)
    assert "detected format: timm" in message
    assert "1 missing: layers.1.blocks.0.attn.q_bias" in message  # named as timm names them
    assert "1 unexpected: layers.0.blocks.0.attn.surprise" in message


def test_unknown_format_names_the_formats_we_read(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"backbone.conv1.weight": torch.zeros(2, 3, 1, 1)}, path)
    with pytest.raises(ck.CheckpointError) as info:
        swinv2.Swinv2Model.from_pretrained(path)
    message = str(info.value)
    assert "unknown checkpoint format" in message and "backbone.conv1.weight" in message
    for name in ("hf", "microsoft", "microsoft-simmim", "timm", "torchvision"):
        assert f"{name}:" in message


def test_swin_v1_checkpoint_is_named_as_such():
    with pytest.raises(ck.CheckpointError, match="Swin Transformer V1"):
        ck.detect_format({"layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(49, 3)})


def test_timm_swinv2_cr_checkpoint_is_named_as_another_architecture(tmp_path):
    """timm's swinv2_cr_* models (another Swin V2 implementation, other weights) are refused by name, by
    from_pretrained and by load_state_dict, instead of read as timm's swinv2_* with a config question."""
    import timm

    cr = timm.create_model("swinv2_cr_tiny_ns_224", pretrained=False, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    save_file({k: v.contiguous() for k, v in cr.state_dict().items()}, tmp_path / "cr.safetensors")
    with pytest.raises(ck.CheckpointError, match="swinv2_cr_"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "cr.safetensors")
    model = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(embed_dim=16, depths=[1, 1], num_heads=[1, 2]))
    with pytest.raises(ck.CheckpointError, match="swinv2_cr_"):
        model.load_state_dict(cr.state_dict())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_gives_a_clear_error(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        torch.save(timm_small().state_dict(), whole)
    else:
        save_file(timm_small().state_dict(), whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ck.CheckpointError, match=r"truncated or corrupt"):
        swinv2.Swinv2Model.from_pretrained(cut, window_size=4, image_size=64)


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("photo.pth", None, "a JPEG image"),
        ("model.bin", b"<!DOCTYPE html><html>Not Found</html>", "an HTML or XML page"),
        ("model.safetensors.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:0", "a Git LFS pointer"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, name, content, kind):
    """Not a pickle error: what the file is, and what weights files look like."""
    from PIL import Image
    from skimage import data as photos

    path = tmp_path / name
    if content is None:
        Image.fromarray(photos.astronaut()).save(path, format="JPEG")
    else:
        path.write_bytes(content)
    with pytest.raises(ck.CheckpointError, match=rf"is no checkpoint \({kind}.*\.safetensors, or \.bin/\.pth/\.pt"):
        swinv2.Swinv2Model.from_pretrained(path, window_size=4, image_size=64)
    # safetensors under another suffix is still read as safetensors
    save_file(timm_small().state_dict(), tmp_path / "weights.bin")
    swinv2.Swinv2Model.from_pretrained(tmp_path / "weights.bin", window_size=4, image_size=64)


class _WritesAFile:
    """Unpickling this calls Path.write_text: what a malicious checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran while loading a checkpoint"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    state = {k: v for k, v in timm_small().state_dict().items()}
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": state, "extra": _WritesAFile(marker)}, f)
    assert not marker.exists()
    with pytest.raises(ck.CheckpointError, match=r"Python objects besides tensors.*not loaded"):
        swinv2.Swinv2Model.from_pretrained(path, window_size=4, image_size=64)
    assert not marker.exists()
    # The payload is real: an unrestricted load would have written the file.
    torch.load(path, weights_only=False)
    assert marker.exists()


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_naming_a_blocked_module_is_refused_as_unsafe_not_corrupt(tmp_path):
    """torch blocks os and sys outright, with its own words ("unsupported GLOBAL posix.system whose module
    posix is blocked"): such a file is named for the object it holds, not sent to be downloaded again."""
    path = tmp_path / "evil.pth"
    torch.save({"model": timm_small().state_dict(), "extra": _RunsACommand()}, path)
    refused = r"Python objects besides tensors \((posix|nt|os)\.system\).*not loaded"
    with pytest.raises(ck.CheckpointError, match=refused):
        swinv2.Swinv2Model.from_pretrained(path, window_size=4, image_size=64)


def test_a_damaged_pickle_is_named_corrupt_not_unsafe(tmp_path):
    """weights_only refuses bytes that are no pickle ("Unsupported operand") under the same heading as a real
    object: the first is a damaged file to download again, not one to re-save; the second names its object."""
    whole = tmp_path / "whole.pth"
    torch.save(timm_small().state_dict(), whole)
    data = bytearray(whole.read_bytes())
    pickle_start = data.index(b"\x80\x02", data.index(b"data.pkl"))  # torch.save's pickle, stored uncompressed
    data[pickle_start + 2] = 0xFF  # no pickle opcode
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError) as info:
        swinv2.Swinv2Model.from_pretrained(damaged, window_size=4, image_size=64)
    message = str(info.value)
    assert f"{damaged} is not a readable checkpoint: it is truncated or corrupt" in message
    assert "Unsupported operand 255" in message and "Download it again" in message
    assert "Python objects" not in message
    import fractions

    with_object = tmp_path / "with_object.pth"
    torch.save({"model": timm_small().state_dict(), "learning_rate": fractions.Fraction(1, 3)}, with_object)
    with pytest.raises(ck.CheckpointError, match=r"Python objects besides tensors \(fractions\.Fraction\)"):
        swinv2.Swinv2Model.from_pretrained(with_object, window_size=4, image_size=64)


def test_other_timm_architectures_are_named_not_taken_for_swin(tmp_path):
    """A timm ViT shares Microsoft's and timm's Swin names (patch_embed.proj, head) and was read as a Microsoft
    Swin V2 missing its stages; a ConvNeXt as an unknown format. Each is named for what it is."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    convnext = timm.create_model("convnext_atto", depths=(1, 1, 1, 1), num_classes=3)
    save_file(convnext.state_dict(), tmp_path / "convnext.safetensors")
    for path, what in ((tmp_path / "vit.pth", "Vision Transformer"), (tmp_path / "convnext.safetensors", "convnext")):
        with pytest.raises(ck.CheckpointError, match=rf"not a Swin V2 checkpoint: its keys .* are those of .*{what}"):
            swinv2.Swinv2ForImageClassification.from_pretrained(path, window_size=4, image_size=32)
    model = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(image_size=32, embed_dim=16, depths=[1, 1],
                                                                     num_heads=[1, 2], window_size=4))
    with pytest.raises(ck.CheckpointError, match=r"cls_token.*Vision Transformer"):
        model.load_state_dict(vit.state_dict())
    # a partial dict of Swin V2 names is still no other architecture
    model.load_state_dict({"classifier.weight": model.classifier.weight.detach()}, strict=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_saved_from_distributed_data_parallel_load(tmp_path, suffix):
    """`module.` before every key (a state dict of the DDP wrapper): from_pretrained and convert read the model's
    names, in every file format (safetensors files kept the prefix, and nothing matched)."""
    reference = timm_small()
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / f"ddp{suffix}"
    save_file(wrapped, path) if suffix == ".safetensors" else torch.save(wrapped, path)
    model = swinv2.Swinv2ForImageClassification.from_pretrained(path, window_size=4, image_size=64)
    x = images(64)
    with torch.no_grad():
        assert max_diff(model(x).logits, reference(x)) < ATOL
    ck.convert(path, tmp_path / "timm.safetensors", "timm", config=model.config)
    converted = SwinTransformerV2(img_size=64, num_classes=5, **SMALL).eval()
    converted.load_state_dict(load_file(tmp_path / "timm.safetensors"))
    with torch.no_grad():
        assert max_diff(converted(x), reference(x)) == 0.0


# ---------------------------------------------------------------------------------------------- transfer
def test_window_and_resolution_transfer_matches_transformers(tmp_path):
    """Weights trained at 32 px / window 4 load into 64 px / window 8 with pretrained_window_sizes: the CPB
    MLP is continuous, nothing is resized; transformers given the same weights and config agrees."""
    source = ours(image_size=32, window_size=4)
    folder = tmp_path / "small"
    source.save_pretrained(folder)
    overrides = dict(image_size=64, window_size=8, pretrained_window_sizes=[4, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is re-initialised
        model = swinv2.Swinv2ForImageClassification.from_pretrained(folder, **overrides)
    assert model.swinv2.stages[0].blocks[0].window == (8, 8)
    reference = transformers.Swinv2ForImageClassification.from_pretrained(folder, **overrides).eval()
    x = images(64)
    with torch.no_grad():
        diff = max_diff(model(x).logits, reference(pixel_values=x).logits)
    assert diff < ATOL, f"transfer 32/w4 -> 64/w8: max |logits difference| {diff:.2e}"


def test_absolute_position_embeddings_are_interpolated(tmp_path):
    source = ours(image_size=32, window_size=4, use_absolute_embeddings=True)
    path = tmp_path / "with_positions.pth"
    ck.write_checkpoint(source, path, "microsoft")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(
        path, image_size=64, window_size=8, pretrained_window_sizes=[4, 4]
    )
    old = source.swinv2.embeddings.position_embeddings.detach().reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(old, size=(16, 16), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 256, -1)
    assert torch.allclose(model.swinv2.embeddings.position_embeddings, expected, atol=1e-6)


def test_non_square_absolute_position_embeddings_are_interpolated(tmp_path):
    """An 8x12 grid of positions resized to 16x24; to another aspect ratio is an error naming the fix."""
    source = ours(image_size=[32, 48], window_size=4, use_absolute_embeddings=True)
    source.save_pretrained(tmp_path / "wide")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "wide", image_size=[64, 96])
    old = source.swinv2.embeddings.position_embeddings.detach().reshape(1, 8, 12, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(old, size=(16, 24), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 16 * 24, -1)
    assert torch.allclose(model.swinv2.embeddings.position_embeddings, expected, atol=1e-6)
    with pytest.raises(ck.CheckpointError, match=r"aspect ratio 16x16.*image_size"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "wide", image_size=64)


def test_new_number_of_labels_reinitialises_the_head_with_a_warning(tmp_path):
    source = ours()
    folder = tmp_path / "five"
    source.save_pretrained(folder)
    with pytest.warns(
        UserWarning, match=r"newly initialised.*classifier\.weight \(checkpoint \(5, 32\), model \(10, 32\)\)"
    ):
        model = swinv2.Swinv2ForImageClassification.from_pretrained(folder, num_labels=10)
    assert model.classifier.weight.shape == (10, 32)
    assert torch.equal(model.swinv2.norm.weight, source.swinv2.norm.weight)


# ---------------------------------------------------------------------------------------------- presets
def test_presets_resolve_in_every_spelling():
    base = swinv2.Swinv2Config.from_pretrained(
        "microsoft/swinv2-base-patch4-window12to24-192to384-22kto1k-ft"
    )
    assert (base.embed_dim, base.depths, base.num_heads) == (128, [2, 2, 18, 2], [4, 8, 16, 32])
    assert (base.window_size, base.image_size, base.pretrained_window_sizes) == (24, 384, [12, 12, 12, 6])
    assert base.num_labels == 1000
    for spelling in (
        "swinv2_base_patch4_window12to24_192to384_22kto1k_ft",
        "swinv2-base-patch4-window12to24-192to384-22kto1k-ft",
        "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
    ):
        assert swinv2.Swinv2Config.from_pretrained(spelling) == base, spelling
    large = swinv2.Swinv2Config.from_pretrained("swinv2_large_patch4_window12_192_22k")
    assert (large.embed_dim, large.window_size, large.image_size, large.num_labels) == (192, 12, 192, 21841)
    assert large.pretrained_window_sizes == [0, 0, 0, 0]
    for name in PRESET_NAMES:
        config = swinv2.Swinv2Config.from_pretrained(name)
        window, image = re.search(r"window(?:\d+to)?(\d+)-(?:\d+to)?(\d+)", name).groups()
        assert (config.window_size, config.image_size) == (int(window), int(image)), name


def test_tiny_preset_holds_timms_tiny_exactly():
    import timm

    reference = timm.create_model("swinv2_tiny_window8_256")
    model = swinv2.Swinv2ForImageClassification(
        swinv2.Swinv2Config.from_pretrained("swinv2-tiny-patch4-window8-256")
    )
    canonical, _ = ck.to_canonical(reference.state_dict())
    ck.load_into_model(
        model, canonical, "timm"
    )  # strict: raises on any missing, unexpected or mis-shaped key
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize(
    "name",
    [
        "swinv2-tiny-patch4-window8-256",
        "swinv2-base-patch4-window12to16-192to256-22kto1k-ft",
        "swinv2-large-patch4-window12-192-22k",
    ],
)
def test_microsoft_buffers_tell_the_official_geometries(name):
    """Window, image size and pretrained windows of the official checkpoints, read back from the buffers
    Microsoft's files persist (narrow models with the official depths, windows and resolutions)."""
    preset = preset_config(name, embed_dim=16, num_heads=[1, 2, 4, 8])
    state = ck.export_state_dict(swinv2.Swinv2ForImageClassification(preset), "microsoft")
    inferred = ck.infer_config(state)  # no name given
    for field in (
        "window_size",
        "image_size",
        "pretrained_window_sizes",
        "depths",
        "num_heads",
        "num_labels",
    ):
        assert getattr(inferred, field) == getattr(preset, field), field


def test_transformers_checkpoint_logits_match(tmp_path):
    torch.manual_seed(0)
    config = transformers.Swinv2Config(image_size=64, num_labels=5, **{**SMALL, "depths": [2, 2]})
    reference = perturb_(transformers.Swinv2ForImageClassification(config))
    reference.save_pretrained(tmp_path / "hf")
    model = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "hf")
    x = images(64)
    with torch.no_grad():
        diff = max_diff(model(x).logits, reference(pixel_values=x).logits)
    assert diff < ATOL, f"transformers: max |logits difference| {diff:.2e}"


def test_one_stage_headless_timm_checkpoint_is_told_from_microsofts(tmp_path):
    """With one stage and no head timm's keys are Microsoft's, but for the position buffers Microsoft's code
    persists: the format, and with it timm's order of shift and padding (13x13 patches, window 5: timm's
    numbers differ from the other order's), follows them."""
    torch.manual_seed(0)
    kwargs = dict(img_size=52, num_classes=0, embed_dim=32, depths=(2,), num_heads=(2,), window_size=5)
    reference = perturb_(SwinTransformerV2(**kwargs))
    assert ck.detect_format(reference.state_dict()) == "timm"
    save_file(reference.state_dict(), tmp_path / "one_stage.safetensors")
    model = swinv2.Swinv2Model.from_pretrained(tmp_path / "one_stage.safetensors", window_size=5, image_size=52)
    assert model.config.window_layout == "timm"
    x = images(52)
    with torch.no_grad():
        assert max_diff(model(x).pooler_output, reference(x)) < ATOL
    mine = ours(kind="Swinv2Model", embed_dim=32, depths=[2], num_heads=[2], image_size=52, window_size=5)
    assert ck.detect_format(ck.export_state_dict(mine, "microsoft")) == "microsoft"
    assert model.config.depths == [2]


def test_a_file_with_its_own_config_is_built_by_it_beside_another_models_config(tmp_path):
    """Files of several models in one folder: a weights file that records its config (as write_checkpoint
    writes them) is built by that config, not by the config.json of another model beside it."""
    torch.manual_seed(0)
    config = swinv2.Swinv2Config(image_size=[48, 64], patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                 window_size=4, pretrained_window_sizes=[3, 5], num_labels=3)
    model = perturb_(swinv2.Swinv2ForImageClassification(config)).eval()
    other = swinv2.Swinv2Config(**{**config.to_dict(), "image_size": 96, "window_size": 8,
                                   "pretrained_window_sizes": [0, 0]})
    other.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).logits
    for fmt, name in (("microsoft", "m.pth"), ("timm", "t.safetensors"), ("torchvision", "v.safetensors")):
        path = ck.write_checkpoint(model, tmp_path / name, fmt)
        loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path)
        assert (loaded.config.window_size, loaded.config.image_size) == (4, [48, 64]), fmt
        with torch.no_grad():
            assert max_diff(loaded(x).logits, expected) < ATOL, fmt


def test_torchvision_files_of_other_channel_counts_are_refused(tmp_path):
    """torchvision's Swin V2 stem takes RGB: a 4-channel model written for it would not load there."""
    config = swinv2.Swinv2Config(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                 window_size=4, num_channels=4)
    with pytest.raises(ck.CheckpointError, match="3-channel images, and this model has 4"):
        ck.write_checkpoint(swinv2.Swinv2ForImageClassification(config), tmp_path / "v.pth", "torchvision")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["swinv2_base_window12_192", "swinv2_large_window12_192"])
def test_untagged_192_px_timm_names_are_the_imagenet_22k_models(name):
    """timm's swinv2_*_window12_192 default to their ms_in22k weights: 21841 classes, as create_model builds."""
    import timm

    assert swinv2.Swinv2Config.from_pretrained(name).num_labels == timm.create_model(name).num_classes == 21841


def test_a_non_square_microsoft_file_takes_the_given_size_quietly(tmp_path, caplog):
    """Shift masks tell square sizes only: a non-square Microsoft file without a config asks for its size,
    and once it is given loads without a warning."""
    torch.manual_seed(0)
    config = swinv2.Swinv2Config(image_size=[48, 64], patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                 window_size=4, num_labels=3)
    model = perturb_(swinv2.Swinv2ForImageClassification(config)).eval()
    torch.save({"model": ck.export_state_dict(model, "microsoft")}, tmp_path / "ms.pth")
    with pytest.raises(ck.CheckpointError, match="square sizes only"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "ms.pth")
    caplog.clear()
    with caplog.at_level("WARNING", logger="swinv2"):
        loaded = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "ms.pth", image_size=[48, 64])
    assert not [r for r in caplog.records if "square" in r.getMessage()]
    assert loaded.config.window_layout == "microsoft"  # (landscape: sized by the height, as transformers)
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(loaded(x).logits, model(x).logits) < ATOL


def test_portrait_microsoft_windows_are_named_and_written_as_microsoft_builds_them(tmp_path):
    """Microsoft's code sizes a stage's window by the grid's shorter side (its SwinTransformerBlock:
    `if min(input_resolution) <= window_size: shift_size = 0; window_size = min(input_resolution)`), transformers
    by the height: on a portrait grid they part, so reading and writing such a file for a model of
    transformers' layout warns, naming the stages; a model of Microsoft's layout (`window_layout="microsoft"`,
    what Microsoft's files are read with) sizes its windows as Microsoft's code, without a word. The file
    written holds the buffers Microsoft's model has at that size (its strict load takes it); square and
    landscape grids agree, without a word."""

    def microsoft_block(height, width, window, shift):  # Microsoft's rule, as its code writes it
        if min(height, width) <= window:
            shift, window = 0, min(height, width)
        return window, shift

    cases = [([64, 32], "transformers", True), ([32, 64], "transformers", False), (64, "transformers", False),
             ([64, 32], "microsoft", False)]
    for image, layout, differ in cases:
        model = ours(image_size=image, depths=[2, 2, 2], num_heads=[2, 2, 4], window_layout=layout)
        hw = model.config.image_hw
        path = tmp_path / f"{hw[0]}x{hw[1]}.pth"
        with warnings.catch_warnings(record=True) as written:
            warnings.simplefilter("always")
            ck.write_checkpoint(model, path, "microsoft")
        state = torch.load(path, weights_only=True)["model"]
        expected_buffers = {}
        for i in range(3):
            height, width = hw[0] // 4 // 2**i, hw[1] // 4 // 2**i
            for j in range(2):
                window, shift = microsoft_block(height, width, 4, 0 if j % 2 == 0 else 2)
                prefix = f"layers.{i}.blocks.{j}."
                expected_buffers[prefix + "attn.relative_coords_table"] = (1, 2 * window - 1, 2 * window - 1, 2)
                expected_buffers[prefix + "attn.relative_position_index"] = (window**2, window**2)
                if shift:
                    windows = (height // window) * (width // window)
                    expected_buffers[prefix + "attn_mask"] = (windows, window**2, window**2)
        buffers = {k: tuple(v.shape) for k, v in state.items() if ck._is_derived(k)}
        assert buffers == expected_buffers, image
        ours_layout = [(b.window[0], b.shift[0]) for stage in model.swinv2.stages for b in stage.blocks]
        assert all(b.window[0] == b.window[1] and b.shift[0] == b.shift[1] for stage in model.swinv2.stages
                   for b in stage.blocks)
        theirs_layout = [
            microsoft_block(hw[0] // 4 // 2**i, hw[1] // 4 // 2**i, 4, 0 if j % 2 == 0 else 2)
            for i in range(3) for j in range(2)
        ]
        assert (ours_layout != theirs_layout) == differ, image
        with warnings.catch_warnings(record=True) as read:
            warnings.simplefilter("always")
            loaded = swinv2.Swinv2ForImageClassification.from_pretrained(path)
        for caught in (written, read):
            messages = [str(w.message) for w in caught if "lays its windows out otherwise" in str(w.message)]
            assert bool(messages) == differ, (image, messages)
        if differ:
            assert "stage 2 (8x4 patches): microsoft window 4 shift 0" in messages[0]
            assert "stage 3 (4x2 patches): microsoft window 2 shift 0" in messages[0]
        x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert max_diff(loaded(x).logits, model(x).logits) == 0.0  # read back into swinv2: the same model



def _at_the_clamp(model: torch.nn.Module) -> torch.nn.Module:
    """Every head's logit scale at its clamp (log 100), as many heads of trained Swin V2 models are: there the
    shift mask's value shows in the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(math.log(100.0))
    return model


# heads of 1 and 2 channels: cosines near +-1, so that masked pairs score high at the clamp
CLAMPED = dict(embed_dim=8, num_heads=(8, 8))
CLAMPED_FIELDS = dict(image_size=64, embed_dim=8, depths=[2, 2], num_heads=[8, 8], window_size=4, num_labels=5)


def test_a_state_dict_computed_with_another_layout_is_named_with_the_fix():
    """load_state_dict converts a timm state dict, but the model computes with its own config: where timm's
    mask value or window layout would give other outputs, a warning names the config fields that compute as
    timm does; a model built with them gives timm's outputs, and warns of nothing."""
    reference = _at_the_clamp(timm_small(**CLAMPED))
    x = images(64)
    plain = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**CLAMPED_FIELDS)).eval()
    with pytest.warns(UserWarning, match=r"the timm model this state dict comes from computes otherwise .* masks "
                      r"shifted windows with -100 where swinv2 has shift_mask_value -200.*build the model with "
                      r"window_layout='timm' and shift_mask_value=-100"):
        plain.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert max_diff(plain(x).logits, reference(x)) > 1e-4 * reference(x).abs().max().item()  # as warned
    as_timm = swinv2.Swinv2ForImageClassification(
        swinv2.Swinv2Config(**CLAMPED_FIELDS, window_layout="timm", shift_mask_value=-100)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_timm.load_state_dict(reference.state_dict())
        with torch.no_grad():
            assert max_diff(as_timm(x).logits, reference(x)) <= 1e-5 * reference(x).abs().max().item()
        plain.load_state_dict(timm_small(**CLAMPED).state_dict())  # scales far from the clamp: the masks agree


def test_convert_warns_where_the_target_library_masks_otherwise(tmp_path):
    """transformers adds its -100 shift mask twice, timm once: converting timm weights with heads at the clamp
    for transformers says the outputs can differ; with heads far from the clamp it says nothing, and
    transformers computes what timm did."""
    import transformers

    config = swinv2.Swinv2Config(**CLAMPED_FIELDS)
    torch.save(_at_the_clamp(timm_small(**CLAMPED)).state_dict(), tmp_path / "clamped.pth")
    with pytest.warns(UserWarning, match=r"transformers model that loads this file .* masks shifted windows with "
                      r"-200 where swinv2 has shift_mask_value -100.* \(here up to 100\.0\)"):
        ck.convert(tmp_path / "clamped.pth", tmp_path / "hf", "hf", config)
    torch.save(timm_small(**CLAMPED).state_dict(), tmp_path / "quiet.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck.convert(tmp_path / "quiet.pth", tmp_path / "hf-quiet", "hf", config)
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "hf-quiet").eval()
    with torch.no_grad():
        assert max_diff(theirs(images(64)).logits, timm_small(**CLAMPED)(images(64))) <= 1e-5


def test_a_checkpoint_cut_short_is_refused_not_loaded_with_a_new_final_norm(tmp_path):
    """A timm file without its last stage reads as a one-stage model whose final norm and classifier input
    are narrower than the file's: that is another encoder (an error naming the weight), not a new head of
    another size (a warning, still); ignore_mismatched_sizes=True loads it anyway, re-initialising them."""
    whole = timm_small().state_dict()
    torch.save({k: v for k, v in whole.items() if not k.startswith("layers.1.")}, tmp_path / "cut.pth")
    with pytest.raises(ck.CheckpointError, match=r"weight norm\.weight has shape \(64,\) in the checkpoint but "
                       r"\(32,\) in the model .*ignore_mismatched_sizes=True"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "cut.pth", image_size=64, window_size=4)
    with pytest.warns(UserWarning, match=r"newly initialised.*norm\.weight \(checkpoint \(64,\), model \(32,\)\)"):
        swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "cut.pth", image_size=64, window_size=4, ignore_mismatched_sizes=True
        )
    torch.save(whole, tmp_path / "whole.pth")
    new_head = r"newly initialised.*head\.fc\.weight \(checkpoint \(5, 64\), model \(3, 64\)\)"
    with pytest.warns(UserWarning, match=new_head):
        swinv2.Swinv2ForImageClassification.from_pretrained(
            tmp_path / "whole.pth", image_size=64, window_size=4, num_labels=3
        )
