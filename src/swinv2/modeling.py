"""Swin V2 models: the bare encoder, the classification head, the SimMIM head and the backbone.

The forward arguments and the outputs are those of the documentation (and of transformers):
`pixel_values`, `bool_masked_pos`, `head_mask`, `labels`, `output_attentions`, `output_hidden_states`,
`return_dict`. Attentions are returned per stage (its last block), shaped like the reference:
`(batch * windows, heads, window_tokens, window_tokens)`.
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Swinv2Config, transformers_config_fields
from .layers import (
    PatchEmbeddings,
    Swinv2Block,
    Swinv2Stage,
    WindowAttention,
    forget_casts,
    release_scratch,
    to_whole_patches,
)


# ---------------------------------------------------------------------------------------------- outputs
class ModelOutput(OrderedDict):
    """Outputs by attribute (`out.logits`), key (`out["logits"]`), index (`out[0]`) or `to_tuple()`.

    A dict of its fields that are not `None` (left out of the keys, the indices and the tuple), as
    transformers' `ModelOutput` is: code written for transformers tells the outputs apart by `isinstance(out,
    dict)` (its `Trainer` drops the loss from the predictions that way), and rebuilds them as
    `type(out)(mapping)` (accelerate). Each subclass is a `torch.utils._pytree` node of those fields.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        torch.utils._pytree.register_pytree_node(
            cls,
            lambda out: (list(out.values()), list(out.keys())),
            lambda values, keys: cls(**dict(zip(keys, values))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self)]
        first = getattr(self, names[0])
        if isinstance(first, Mapping) and all(getattr(self, n) is None for n in names[1:]):  # type(out)(mapping)
            setattr(self, names[0], None)
            for key, value in first.items():
                setattr(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        names = list(self.__dataclass_fields__)
        if name in names:  # the dict follows the fields, in their order
            if value is None:
                super().pop(name, None)
                return
            new = name not in self
            super().__setitem__(name, value)
            for later in names[names.index(name) + 1 :] if new else ():
                if later in self:
                    self.move_to_end(later)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self:
                raise KeyError(f"{key!r} is not among this output's fields {list(self.keys())}")
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


@dataclass
class Swinv2ModelOutput(ModelOutput):
    """`last_hidden_state` `(B, L, C)`; `pooler_output` `(B, C)`; `hidden_states` `(B, L_i, C_i)` for the
    embeddings and each stage; `reshaped_hidden_states` the same as `(B, C_i, H_i, W_i)`; `attentions` per stage.
    """

    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class Swinv2ImageClassifierOutput(ModelOutput):
    """`loss` (when `labels` are given) and `logits` `(B, num_labels)`, plus the encoder's optional outputs."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class Swinv2MaskedImageModelingOutput(ModelOutput):
    """`loss` (when `bool_masked_pos` is given) and `reconstruction` `(B, C, H, W)`."""

    loss: Tensor | None = None
    reconstruction: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    reshaped_hidden_states: tuple[Tensor, ...] | None = None

    @property
    def logits(self) -> Tensor | None:
        """`reconstruction` under its older name, which transformers keeps (deprecated) for older code."""
        warnings.warn(
            "Swinv2MaskedImageModelingOutput.logits is the older name of reconstruction; use reconstruction",
            FutureWarning,
            stacklevel=2,
        )
        return self.reconstruction


@dataclass
class BackboneOutput(ModelOutput):
    """`feature_maps`: one `(B, C_i, H_i, W_i)` map per selected stage (before its downsampling)."""

    feature_maps: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


Swinv2BackboneOutput = BackboneOutput


# ---------------------------------------------------------------------------------------------- helpers
def _read_cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (x86 AVX512-BF16 or AMX, Arm BF16); True when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return True


# Read once at import: forward only looks at a bool, which torch.compile can guard on.
CPU_NATIVE_BF16 = _read_cpu_has_native_bf16()
_warned_bf16 = False


def cpu_bf16_is_emulated() -> bool:
    """True when CPU autocast asks for bf16 on a CPU without bf16 units, where bf16 is several times slower
    than fp32 (it is emulated with conversions around fp32 arithmetic)."""
    return (
        not CPU_NATIVE_BF16
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def native_precision(forward: Callable) -> Callable:
    """Run a model's forward in fp32 instead of emulated bf16: CPU autocast to bf16 on a CPU without native
    bf16 (no AVX512-BF16/AMX) falls back to fp32 with a warning, so that bf16 is never slower than fp32.
    A model converted to bf16 itself stays in bf16."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        # a model whose weights are already low precision is run as asked: in fp32 its input would not match
        # torch.export's graph is for other runtimes: it keeps the bf16 it was asked for
        if not cpu_bf16_is_emulated() or self.dtype != torch.float32 or torch.compiler.is_exporting():
            return forward(self, *args, **kwargs)
        global _warned_bf16
        if not _warned_bf16 and not torch.compiler.is_compiling():  # (dynamo cannot trace warnings.warn)
            _warned_bf16 = True
            warnings.warn(
                "this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): bf16 autocast would be several "
                "times slower than fp32, so the model runs in fp32 (outputs are fp32)",
                stacklevel=2,
            )
        with torch.autocast("cpu", enabled=False):
            return forward(self, *args, **kwargs)

    return wrapper


def build_stages(config: Swinv2Config) -> nn.ModuleList:
    # (on the CPU whatever the default device: a model built under torch.device("meta") needs numbers here)
    drop_paths = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
    stages = []
    for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        window, shift = config.stage_window(i)
        per_input = config.window_layout == "torchvision"
        if per_input:  # the shift where a grid spans more than one window; each input's grid says where it does
            shift = (window[0] // 2, window[1] // 2)
        first = sum(config.depths[:i])
        stages.append(
            Swinv2Stage(
                dim=config.embed_dim * 2**i,
                depth=depth,
                num_heads=heads,
                window=window,
                shift=shift,
                pretrained_window=config.pretrained_window_sizes[i],
                drop_paths=drop_paths[first : first + depth],
                downsample=i < config.num_layers - 1,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                hidden_act=config.hidden_act,
                drop=config.hidden_dropout_prob,
                attn_drop=config.attention_probs_dropout_prob,
                layer_norm_eps=config.layer_norm_eps,
                shift_mask_value=config.shift_mask_value,
                shift_first=config.window_layout == "timm",
                shift_per_input=per_input,
            )
        )
    return nn.ModuleList(stages)


def _check_pixel_values(pixel_values: Any, config: Swinv2Config) -> None:
    if pixel_values is None:
        raise ValueError("pixel_values is required: a float tensor (batch, channels, height, width)")
    if not isinstance(pixel_values, Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor (batch, channels, height, width), got "
            f"{type(pixel_values).__name__}; use Swinv2ImageProcessor to turn images into tensors"
        )
    if pixel_values.dim() != 4:
        hints = {
            2: "; for one single-channel image use pixel_values[None, None]",
            3: " (add the batch dimension with pixel_values.unsqueeze(0))",
        }
        hint = hints.get(pixel_values.dim(), "; reshape it to (batch, channels, height, width)")
        raise ValueError(
            f"pixel_values must have 4 dimensions (batch, channels, height, width), got shape "
            f"{tuple(pixel_values.shape)}{hint}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be a floating-point tensor, got {pixel_values.dtype}; rescale and normalise "
            "the images first (Swinv2ImageProcessor does), e.g. pixel_values.float() / 255"
        )
    channels = pixel_values.shape[1]
    if channels != config.num_channels:
        channels_last = pixel_values.shape[-1] == config.num_channels
        hint = " (it looks channels-last: permute to (B, C, H, W))" if channels_last else ""
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects num_channels={config.num_channels}"
            f"{hint}; shape was {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[0] == 0 or pixel_values.shape[2] == 0 or pixel_values.shape[3] == 0:
        raise ValueError(
            f"pixel_values is empty: shape {tuple(pixel_values.shape)}; every image needs at least one pixel "
            "and the batch at least one image"
        )
    (ph, pw), (height, width) = config.patch_hw, pixel_values.shape[2:]
    if config.drops_partial_patches and (height < ph or width < pw):
        raise ValueError(
            f"pixel_values of {height}x{width} pixels hold no whole {ph}x{pw} patch, and with window_layout="
            f"{config.window_layout!r} (as in {config.window_layout}'s model) partial patches are dropped; resize "
            f"the images to at least {ph}x{pw} (the model was built for {config.image_hw[0]}x{config.image_hw[1]})"
        )
    _check_finite(pixel_values, config.check_finite_inputs)


def _in_onnx_export() -> bool:
    # An export has imported torch.onnx; importing it here would cost every first call 2.5 MiB and ~25 ms.
    return "torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export()


def _check_finite(pixel_values: Tensor, policy: bool | None) -> None:
    """Reject NaN/Inf pixel values, which would otherwise spread through attention into every output.

    `policy` is `config.check_finite_inputs`: None checks CPU tensors only (one cheap pass over the
    input), True checks on every device, False never. The default skips accelerators because reading the
    answer back is a host synchronisation that stalls the GPU's queue of work. Traced, compiled or
    transformed forwards (torch.compile, torch.export, ONNX export, torch.func's vmap and grad) never check:
    the answer would be a data-dependent branch.
    """
    if policy is False or (policy is None and pixel_values.device.type != "cpu"):
        return
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _in_onnx_export():
        return
    if torch._C._are_functorch_transforms_active() or torch._C._len_torch_dispatch_stack() > 0:
        return  # (fake tensors and other dispatch modes have no values to look at)
    # One sum first (NaN and Inf carry through it): ~40x faster than isfinite().all() on CPU. Only a sum that
    # is not finite (a bad value, or finite values overflowing) pays for the exact check.
    if bool(torch.isfinite(pixel_values.sum(dtype=torch.promote_types(pixel_values.dtype, torch.float32)))):
        return
    finite = torch.isfinite(pixel_values)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(pixel_values).sum())
    inf = int((~finite).sum()) - nan
    images = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
    raise ValueError(
        f"pixel_values holds {nan} NaN and {inf} infinite values (batch indices {images[:10]}"
        f"{'...' if len(images) > 10 else ''}); the model would return NaN for these images. Check how they "
        "were loaded and normalised (a zero standard deviation or a division by zero gives Inf/NaN), or "
        "replace them, e.g. torch.nan_to_num(pixel_values). To skip this check pass "
        "check_finite_inputs=False to the config (or from_pretrained)"
    )


def _check_matches_weights(pixel_values: Tensor, weight: Tensor) -> None:
    """The input must be where the weights are, in their dtype (autocast converts it itself)."""
    if pixel_values.device != weight.device:
        raise ValueError(
            f"pixel_values is on {pixel_values.device} but the model's weights are on {weight.device}; move the "
            f"input with pixel_values.to(model.device) (or the model with model.to('{pixel_values.device}'))"
        )
    if pixel_values.dtype != weight.dtype and not torch.is_autocast_enabled(pixel_values.device.type):
        raise TypeError(
            f"pixel_values is {pixel_values.dtype} but the model's weights are {weight.dtype}; convert the input "
            f"with pixel_values.to(model.dtype), or run the model under torch.autocast"
        )


def _check_bool_masked_pos(bool_masked_pos: Tensor, batch: int, grid: tuple[int, int]) -> Tensor:
    """`(B, num_patches)` or `(B, grid_h, grid_w)` bool (or 0/1 numbers) -> `(B, num_patches)`; one mask for
    every image, `(num_patches,)` or `(1, num_patches)`, is broadcast as transformers does."""
    num_patches = grid[0] * grid[1]
    if not isinstance(bool_masked_pos, Tensor):
        raise TypeError(
            f"bool_masked_pos must be a bool tensor (batch, num_patches), got {type(bool_masked_pos).__name__}; "
            "convert it with torch.as_tensor(bool_masked_pos, dtype=torch.bool)"
        )
    if bool_masked_pos.is_complex():
        raise TypeError(
            f"bool_masked_pos must be a bool tensor (True = masked patch), or 0/1 integers or floats, got "
            f"{bool_masked_pos.dtype}; convert it with bool_masked_pos.real.bool()"
        )
    # 0/1 numbers are taken as transformers takes them (the same outputs). Another value, say 0.5, would blend
    # the patch with the mask token, neither masked nor visible: refused where looking costs no host
    # synchronisation (on the CPU, outside a compiled graph).
    if (
        bool_masked_pos.dtype != torch.bool
        and bool_masked_pos.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and ((bool_masked_pos != 0) & (bool_masked_pos != 1)).any()
    ):
        bad = bool_masked_pos[(bool_masked_pos != 0) & (bool_masked_pos != 1)]
        nan = bad.isnan()  # (each NaN is its own unique value)
        values = bad[~nan].unique()[:6].tolist() + ([math.nan] if nan.any() else [])
        fix = "bool_masked_pos > 0.5" if bool_masked_pos.is_floating_point() else "bool_masked_pos != 0"
        raise ValueError(
            f"bool_masked_pos must hold True/False (or 1/0), got the values {values}; "
            f"convert it to a bool tensor, e.g. {fix}"
        )
    if bool_masked_pos.dim() == 3 and tuple(bool_masked_pos.shape[1:]) == grid:
        bool_masked_pos = bool_masked_pos.flatten(1)
    elif bool_masked_pos.dim() == 1:
        bool_masked_pos = bool_masked_pos.unsqueeze(0)
    if tuple(bool_masked_pos.shape) != (batch, num_patches) and tuple(bool_masked_pos.shape) != (1, num_patches):
        raise ValueError(
            f"bool_masked_pos must have shape (batch, num_patches) = ({batch}, {num_patches}) for this input "
            f"({grid[0]}x{grid[1]} patches), got {tuple(bool_masked_pos.shape)}"
        )
    return bool_masked_pos.expand(batch, num_patches)


def _head_mask_forms(config: Swinv2Config) -> dict[tuple[int, ...], str]:
    """The tensor shapes `head_mask` may have for this config, each with what it masks."""
    heads, depths, stages = config.num_heads, config.depths, len(config.depths)
    forms: dict[tuple[int, ...], str] = {}
    if len(set(heads)) == 1:  # one row fits every stage only when they have the same heads
        forms[(heads[0],)] = "every block"
        forms[(stages, heads[0])] = "one row per stage, for each of its blocks"
        if len(set(depths)) == 1:
            forms[(stages, depths[0], heads[0])] = "one row per block"
    return forms


_FIVE_D = "(num_stages, max(depths), num_heads or 1, 1 or N, 1 or N) with N a window's tokens (transformers' form)"


def _stage_head_masks(head_mask: Any, config: Swinv2Config) -> list[Tensor | None] | None:
    """Normalise `head_mask` to one tensor (or None) per stage, `(depth_i, heads_i)` or `(depth_i, heads, n, n)`.

    Accepted: `(num_heads,)` for every block, `(num_stages, num_heads)` one row per stage (both need the
    same head count in every stage), `(num_stages, depth, num_heads)` one row per block (the same depth and
    head count in every stage), transformers' `(num_stages, max(depths), heads, n, n)` that multiplies each
    block's probabilities `(heads_i, N, N)` as it broadcasts (heads 1 or heads_i, n 1 or N), or a sequence
    with one entry per stage of shape `(heads_i,)`, `(depth_i, heads_i)` or `(depth_i, heads, n, n)` (or None).
    """
    if head_mask is None:
        return None
    heads, depths = config.num_heads, config.depths
    if isinstance(head_mask, (str, bytes)) or not isinstance(head_mask, (Tensor, Sequence)):
        raise TypeError(
            f"head_mask must be a tensor (num_heads,) or (num_stages, num_heads), or a list with one entry per "
            f"stage, got {type(head_mask).__name__}"
        )
    if isinstance(head_mask, Tensor):
        forms, shape = _head_mask_forms(config), tuple(head_mask.shape)
        broadcast = (  # transformers' form, multiplied onto each block's probabilities as it broadcasts
            len(shape) == 5 and shape[:2] == (len(depths), max(depths)) and (shape[2] == 1 or set(heads) == {shape[2]})
        )
        if shape not in forms and not broadcast:
            per_stage = "a list with one (num_heads_i,) or (depth_i, num_heads_i) tensor (or None) per stage"
            listed = "; ".join(f"{form} for {what}" for form, what in forms.items())
            accepted = (
                f"a tensor of shape {listed}; or {_FIVE_D}; or {per_stage}" if forms
                else f"{_FIVE_D} with heads 1; or {per_stage} (num_heads {heads} differ between stages)"
            )
            raise ValueError(
                f"head_mask has shape {shape}; for num_heads={heads} and depths={depths} it "
                f"must be {accepted}"
            )
        if broadcast:
            head_mask = [head_mask[i, :depth] for i, depth in enumerate(depths)]  # (depth_i, heads, n, n) each
        else:
            if head_mask.dim() == 1:
                head_mask = head_mask.unsqueeze(0).expand(len(depths), -1)
            head_mask = list(head_mask)  # one (heads,) or (depth, heads) per stage
    if len(head_mask) != len(depths):
        raise ValueError(
            f"head_mask needs one entry per stage ({len(depths)}: shapes (num_heads_i,) or (depth_i, num_heads_i), "
            f"or None for a stage without a mask), got {len(head_mask)} entries"
        )
    out: list[Tensor | None] = []
    for i, mask in enumerate(head_mask):
        if mask is None:
            out.append(None)
            continue
        mask = torch.as_tensor(mask)
        given = tuple(mask.shape)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0).expand(depths[i], -1)
        if mask.dim() == 4 and mask.shape[0] == depths[i] and mask.shape[1] in (1, heads[i]):
            out.append(mask)  # the window tokens are checked by each block, which knows them
            continue
        if tuple(mask.shape) != (depths[i], heads[i]):
            raise ValueError(
                f"head_mask for stage {i + 1} must have shape ({heads[i]},), ({depths[i]}, {heads[i]}) or "
                f"({depths[i]}, {heads[i]} or 1, N or 1, N or 1) (stage {i + 1} has {depths[i]} blocks of "
                f"{heads[i]} heads), got {given}"
            )
        out.append(mask)
    return out


def run_stages(
    stages: nn.ModuleList,
    x: Tensor,
    head_masks: list[Tensor | None] | None,
    output_attentions: bool,
    output_hidden_states: bool,
    before_downsampling: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
    """Run the stages on `(B, H, W, C)` tokens; returns the last tokens and the optional per-stage outputs.

    The hidden states `(B, L, C)` and their `(B, C, H, W)` forms are in the autograd graph, as transformers'
    hidden states are: the computation goes on from a view of them (views: no copy, no cost), so that
    gradients with respect to them exist (saliency maps, Grad-CAM) and equal transformers'.
    """
    hidden: list[Tensor] = []
    reshaped: list[Tensor] = []
    attentions = []

    def keep(t: Tensor) -> Tensor:
        """Record `t` `(B, H, W, C)` as a hidden state; the rest of the model reads the view returned."""
        flat = t.flatten(1, 2)
        as_map = flat.view(t.shape).permute(0, 3, 1, 2)  # (view, not unflatten: ONNX opsets before 13 lack it)
        hidden.append(flat)
        reshaped.append(as_map)
        return as_map.permute(0, 2, 3, 1)

    if output_hidden_states:
        x = keep(x)
    for i, stage in enumerate(stages):
        head_mask = None if head_masks is None else head_masks[i]
        if output_hidden_states and before_downsampling:
            x, probs = stage(x, head_mask, output_attentions, tap=keep)
        else:
            x, probs = stage(x, head_mask, output_attentions)
            if output_hidden_states:
                x = keep(x)
        if output_attentions:
            attentions.append(probs)
    return (
        x,
        tuple(hidden) if output_hidden_states else None,
        tuple(reshaped) if output_hidden_states else None,
        tuple(attentions) if output_attentions else None,
    )


# ---------------------------------------------------------------------------------------------- base class
def _single_device(device_map: Any) -> torch.device:
    """The one device a transformers `device_map` names: a device, an index, `"auto"` (the GPU when there is
    one) or a map that sends every module to one device; the model is small enough for one."""
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(
                f"device_map {device_map!r} splits the model over several devices; swinv2 places the whole model "
                "on one: pass device='cuda:0' (or one device in device_map)"
            )
        device_map = devices.pop()
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return torch.device("cuda", device_map)
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device_map {device_map!r} names no device; pass e.g. 'cpu', 'cuda:0' or 'auto'") from err


class Swinv2PatchEmbeddings(nn.Module):
    """What `get_input_embeddings()` returns, as transformers' module of this name: the patch projection
    `.projection` (the model's `embeddings.proj` Conv2d itself, not a copy), without the LayerNorm after it.

    Not a submodule of the model (the state dict keeps its keys). The model runs the projection, not this
    wrapper, so forward hooks registered here go on `.projection`, where they see every call.
    """

    def __init__(
        self,
        projection: nn.Module,
        patch_size: tuple[int, int],
        drop_partial_patches: bool = False,
        image_size: tuple[int, int] | None = None,
        num_channels: int | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.projection = projection
        self.patch_size = patch_size
        self.drop_partial_patches = drop_partial_patches
        # transformers' attributes: the configured image size and its grid of patches
        self.image_size = image_size
        self.num_channels = num_channels
        self.grid_size = grid_size
        self.num_patches = None if grid_size is None else math.prod(grid_size)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """`(B, C_in, H, W)` -> patch vectors `(B, L, C)` and the grid `(H/p, W/p)` (padded as transformers, or
        cropped to whole patches as the model's embedding is)."""
        patches = self.projection(to_whole_patches(pixel_values, self.patch_size, self.drop_partial_patches))
        return patches.flatten(2).transpose(1, 2), (patches.shape[2], patches.shape[3])

    def register_forward_hook(self, *args: Any, **kwargs: Any) -> torch.utils.hooks.RemovableHandle:
        return self.projection.register_forward_hook(*args, **kwargs)

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> torch.utils.hooks.RemovableHandle:
        return self.projection.register_forward_pre_hook(*args, **kwargs)


def _as_swinv2_config(config: Any) -> Swinv2Config:
    """Our `Swinv2Config`, or transformers' one converted (a new object: later changes to transformers' config
    do not reach the model), equal to the config of the folder transformers would save."""
    if isinstance(config, Swinv2Config):
        return config
    if callable(getattr(config, "to_dict", None)) and getattr(config, "model_type", None) == "swinv2":
        return Swinv2Config.from_dict(transformers_config_fields(config))
    raise TypeError(
        f"config must be a swinv2.Swinv2Config (or transformers' Swinv2Config, which is converted), got "
        f"{type(config).__module__}.{type(config).__qualname__}; build one with swinv2.Swinv2Config(...) or "
        "Swinv2Config.from_dict(other_config.to_dict())"
    )


class Swinv2PreTrainedModel(nn.Module):
    """Weights initialisation and loading/saving shared by every Swin V2 model."""

    config_class = Swinv2Config
    base_model_prefix = "swinv2"
    main_input_name = "pixel_values"

    def __init__(self, config: Swinv2Config) -> None:
        super().__init__()
        config = _as_swinv2_config(config)
        config.validate()  # again: fields may have been set since the config was made (config.window_size = 0)
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)
        if self.config.use_gradient_checkpointing:
            self.gradient_checkpointing_enable()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, PatchEmbeddings):
            if module.mask_token is not None:
                module.mask_token.zero_()
            if module.position_embeddings is not None:
                module.position_embeddings.zero_()
        elif isinstance(module, WindowAttention):
            module.logit_scale.fill_(math.log(10.0))
            if module.q_bias is not None:
                module.q_bias.zero_()
                module.v_bias.zero_()

    # -- conveniences
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def base_model(self) -> nn.Module:
        """The encoder (`Swinv2Model`) of a model with a head, else the model itself, as in transformers."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> Swinv2PatchEmbeddings:
        """The patch embedding as transformers' `get_input_embeddings` returns it: a `Swinv2PatchEmbeddings`
        whose `.projection` is the patch convolution (image -> patch vectors, before the embedding's
        LayerNorm): freezing it leaves the norm trainable."""
        embeddings = self.base_model.embeddings
        kept = self.__dict__.get("_input_embeddings")  # the same object on every call, as transformers returns
        if kept is None or kept.projection is not embeddings.proj:
            kept = Swinv2PatchEmbeddings(
                embeddings.proj, embeddings.patch_size, embeddings.drop_partial_patches,
                self.config.image_hw, embeddings.num_channels, embeddings.grid_size,
            )
            self.__dict__["_input_embeddings"] = kept  # not a submodule: the state dict keeps its keys
        return kept

    def get_output_embeddings(self) -> None:
        """None: an image model has no output embeddings to tie (as transformers answers for Swin V2)."""
        return None

    def enable_input_require_grads(self) -> None:
        """Make the patch projection's output require grad, so that reentrant gradient checkpointing still
        reaches the blocks when the embeddings are frozen (transformers' method of the same name)."""
        self.disable_input_require_grads()  # one hook, however often this is called
        self._require_grads_hook = self.get_input_embeddings().projection.register_forward_hook(
            lambda module, args, output: output.requires_grad_(True)
        )

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the parameters (and the buffers), as transformers' method of the same name counts them."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        return sum(t.nelement() * t.element_size() for t in tensors)

    def tie_weights(self) -> None:
        """Nothing to tie (an image model shares no input and output embeddings); transformers' hook, which
        accelerate and other tools call on any model they load."""

    supports_gradient_checkpointing = True

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each block in the backward pass instead of keeping its activations.

        `gradient_checkpointing_kwargs` go to `torch.utils.checkpoint.checkpoint` (transformers' argument of
        the same name), e.g. `{"use_reentrant": True}`; the default is the non-reentrant variant."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for module in self.modules():
            if isinstance(module, Swinv2Stage):
                module.gradient_checkpointing = True
                module.checkpoint_kwargs = kwargs

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, Swinv2Stage):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(isinstance(m, Swinv2Stage) and m.gradient_checkpointing for m in self.modules())

    def train(self, mode: bool = True) -> Swinv2PreTrainedModel:
        if mode:  # the optimiser will change the weights: their cached autocast copies would only take memory
            forget_casts(self.parameters())
        release_scratch()  # one mode's CPU scratch buffers (training's or inference's) are of no use to the other
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`; a state dict in another library's layout (transformers, timm,
        torchvision, Microsoft's code: `hf_model.state_dict()`, a timm checkpoint) is converted to this model's
        keys first, with the same `strict` check afterwards."""
        from .checkpoints import in_model_keys

        return super().load_state_dict(in_model_keys(self, state_dict), strict=strict, assign=assign)

    def clear_attention_cache(self) -> None:
        """Forget the cached attention masks and the weights' autocast copies (rebuilt on the next
        inference call), and this thread's CPU scratch buffers (rebuilt on the next call)."""
        for module in self.modules():
            if isinstance(module, Swinv2Block):
                module.clear_cache()
        forget_casts(self.parameters())
        release_scratch()

    # -- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: Any = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        map_location: str | torch.device | None = None,
        device_map: Any = None,
        ignore_mismatched_sizes: bool = False,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        subfolder: str = "",
        variant: str | None = None,
        use_safetensors: bool | None = None,
        output_loading_info: bool = False,
        **kwargs: Any,
    ):
        """Load a model from a folder, a weights file, a preset name or a hub id.

        Folders written by transformers or by `save_pretrained` (config.json + model.safetensors or
        pytorch_model.bin, sharded or not) and Microsoft, timm and torchvision checkpoints are recognised by
        their keys. `config` is a `Swinv2Config` (or transformers' own), a config.json or a preset name.
        `dtype` (or its older name `torch_dtype`) casts the weights (`"auto"`: the dtype config.json names,
        else the file's); `device`/`map_location`/`device_map` (one device: a name, an index, `"auto"`) place
        them. `subfolder`, `variant` ("fp16": `model.fp16.safetensors`) and `use_safetensors` choose the files
        as in transformers; `output_loading_info=True` returns `(model, info)` with the `missing_keys`,
        `unexpected_keys` and `mismatched_keys`. Other keyword arguments that name config fields override the
        stored config (e.g. `num_labels=10`; the new head is then initialised afresh, with a warning); the
        constructor's own arguments (`add_pooling_layer`, `use_mask_token`) go to the model; transformers'
        Hub options (`token`, `force_download`, ...) are accepted and never stored; any other is an error.
        Missing or unexpected weights raise an error listing them unless `strict=False`.
        """
        from .checkpoints import load_pretrained

        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree: pass only dtype")
        places = {k: v for k, v in (("device", device), ("map_location", map_location)) if v is not None}
        if device_map is not None:
            places["device_map"] = _single_device(device_map)
        if len({str(torch.device(v)) for v in places.values()}) > 1:
            raise ValueError(f"{' and '.join(f'{k}={v!r}' for k, v in places.items())} disagree: pass one of them")
        model, info = load_pretrained(
            cls,
            name_or_path,
            config=config,
            torch_dtype=dtype if dtype is not None else torch_dtype,
            device=next(iter(places.values()), None),
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            strict=strict,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            subfolder=subfolder,
            variant=variant,
            use_safetensors=use_safetensors,
            **kwargs,
        )
        return (model, info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        max_shard_size: int | str = "5GB",
        variant: str | None = None,
        push_to_hub: bool = False,
    ) -> None:
        """Write `config.json` and `model.safetensors` (`pytorch_model.bin` without `safe_serialization`) with
        transformers' key names, each file atomically; above `max_shard_size` ("5GB", "500MiB" or bytes) in
        shards with transformers' index, `variant` ("fp16") in the file names. Weight files of another format
        or older shards in the folder are removed (they would be read instead of the new ones)."""
        from .checkpoints import save_pretrained

        if push_to_hub:
            raise ValueError(
                "push_to_hub=True: swinv2 writes the folder only; save without it, then upload the folder with "
                "huggingface_hub (`huggingface_hub.upload_folder(repo_id=..., folder_path=...)`)"
            )
        save_pretrained(
            self, save_directory, safe_serialization=safe_serialization, max_shard_size=max_shard_size,
            variant=variant,
        )


# ---------------------------------------------------------------------------------------------- models
class Swinv2Model(Swinv2PreTrainedModel):
    """The bare Swin V2 encoder: patch embedding, the stages, a final LayerNorm and average pooling."""

    def __init__(self, config: Swinv2Config, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        super().__init__(config)
        config = self.config  # (transformers' config, converted)
        self.num_layers = config.num_layers
        self.num_features = config.hidden_size
        self.embeddings = PatchEmbeddings(
            config.image_hw, config.patch_hw, config.num_channels, config.embed_dim,
            use_mask_token, config.use_absolute_embeddings, config.hidden_dropout_prob, config.drops_partial_patches,
        )
        self.stages = build_stages(config)
        self.norm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.add_pooling_layer = add_pooling_layer
        self.post_init()

    @native_precision
    def forward(
        self,
        pixel_values: Tensor | None = None,
        bool_masked_pos: Tensor | None = None,
        head_mask: Tensor | Sequence[Tensor | None] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = True,
    ) -> Swinv2ModelOutput | tuple[Tensor, ...]:
        """`pixel_values` `(B, C, H, W)` -> `last_hidden_state` `(B, L, C_last)` and `pooler_output` `(B, C_last)`.

        `bool_masked_pos` `(B, num_patches)` replaces the masked patches by the mask token (needs
        `use_mask_token=True`). Absolute position embeddings, when used, are resized to the input's grid
        whatever `interpolate_pos_encoding` says (accepted for transformers' callers, whose own models fail on
        another size without it). Positionally the sixth argument is `return_dict`, as documented, and
        `interpolate_pos_encoding` the seventh (not keyword-only: torch.onnx's TorchScript exporter passes every
        parameter positionally).
        """
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.use_return_dict if return_dict is None else return_dict
        _check_pixel_values(pixel_values, config)
        _check_matches_weights(pixel_values, self.embeddings.proj.weight)
        batch, _, height, width = pixel_values.shape
        if bool_masked_pos is not None:
            if self.embeddings.mask_token is None:
                raise ValueError(
                    "bool_masked_pos needs a mask token: build the model with Swinv2Model(config, "
                    "use_mask_token=True) or use Swinv2ForMaskedImageModeling"
                )
            bool_masked_pos = _check_bool_masked_pos(bool_masked_pos, batch, self.embeddings.grid(height, width))
        x = self.embeddings(pixel_values, bool_masked_pos)
        x, hidden, reshaped, attentions = run_stages(
            self.stages, x, _stage_head_masks(head_mask, config), output_attentions, output_hidden_states
        )
        sequence = self.norm(x.flatten(1, 2))
        pooled = sequence.mean(dim=1) if self.add_pooling_layer else None
        out = Swinv2ModelOutput(sequence, pooled, hidden, attentions, reshaped)
        if return_dict:
            return out
        # As transformers: the pooler's slot stays (None without a pooling layer), so that the indices of
        # the optional outputs after it do not depend on add_pooling_layer.
        return (sequence, pooled, *(v for v in (hidden, attentions, reshaped) if v is not None))

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid after the last stage for an input of `height x width` pixels."""
        gh, gw = self.embeddings.grid(height, width)
        for _ in range(self.num_layers - 1):
            gh, gw = (gh + 1) // 2, (gw + 1) // 2
        return gh, gw


def classification_loss(logits: Tensor, labels: Tensor, config: Swinv2Config) -> Tensor:
    """Loss by `config.problem_type`, inferred (and stored) on first use as transformers does:
    regression (MSE) for one label, single-label cross-entropy for integer labels, multi-label BCE otherwise.
    """
    num_labels = config.num_labels
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"labels must be a tensor, got {type(labels).__name__}; convert it with torch.as_tensor(labels) "
            "(class indices (batch,) for single-label classification)"
        )
    if num_labels == 0:
        raise ValueError("this model has num_labels=0 (no classifier): it computes no loss; drop the labels")
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        # MSE broadcasts mismatched shapes into a meaningless loss: insist on one target per output.
        if labels.numel() != logits.numel() or (num_labels > 1 and labels.shape != logits.shape):
            raise ValueError(
                f"regression needs one target per output: labels shaped like the logits {tuple(logits.shape)}"
                f"{' (or (batch,))' if num_labels == 1 else ''}, got {tuple(labels.shape)}"
            )
        logits, labels = _in_common_dtype(logits, labels)
        if num_labels == 1:
            return F.mse_loss(logits.view(-1), labels.reshape(-1))
        return F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        labels = labels.view(-1)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"single-label classification needs integer class labels, got {labels.dtype}; convert them with "
                "labels.long(), or set config.problem_type='multi_label_classification' for 0/1 targets per class"
            )
        if labels.numel() != logits.shape[0]:
            raise ValueError(
                f"labels has {labels.numel()} entries for a batch of {logits.shape[0]} images; give one class "
                f"index per image, shape ({logits.shape[0]},)"
            )
        # -100 marks samples to ignore, as in transformers. Checked outside torch.compile only: the boolean
        # index and the host reads would break the graph.
        counted = None if torch.compiler.is_compiling() else labels[labels != -100]
        if counted is not None and counted.numel():
            low, high = int(counted.min()), int(counted.max())
            if low < 0 or high >= num_labels:
                raise ValueError(
                    f"labels must be class indices in [0, {num_labels - 1}] (num_labels={num_labels}) or -100 "
                    f"(ignored), got values in [{low}, {high}]; check the dataset's labels or the model's num_labels"
                )
        return F.cross_entropy(logits.view(-1, num_labels), labels.long(), ignore_index=-100)
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label classification needs labels shaped like the logits {tuple(logits.shape)} (one 0/1 "
            f"target per class), got {tuple(labels.shape)}"
        )
    return F.binary_cross_entropy_with_logits(*_in_common_dtype(logits, labels))


def _in_common_dtype(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and float targets in the wider of their dtypes (float64 targets give a float64 loss, as in
    transformers); integer or boolean targets in the logits' dtype."""
    dtype = torch.promote_types(logits.dtype, labels.dtype) if labels.is_floating_point() else logits.dtype
    return logits.to(dtype), labels.to(dtype)


class Swinv2ForImageClassification(Swinv2PreTrainedModel):
    """Swin V2 with a linear classifier on the average-pooled last hidden state."""

    def __init__(self, config: Swinv2Config) -> None:
        super().__init__(config)
        config = self.config  # (transformers' config, converted)
        self.num_labels = config.num_labels
        self.swinv2 = Swinv2Model(config)
        self.classifier = (
            nn.Linear(self.swinv2.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @native_precision
    def forward(
        self,
        pixel_values: Tensor | None = None,
        head_mask: Tensor | Sequence[Tensor | None] | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = True,
    ) -> Swinv2ImageClassifierOutput | tuple[Tensor, ...]:
        """`pixel_values` `(B, C, H, W)` -> `logits` `(B, num_labels)`; `labels` `(B,)` (or `(B, num_labels)`
        for multi-label) add the loss."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        outputs = self.swinv2(
            pixel_values, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = Swinv2ImageClassifierOutput(
            loss, logits, outputs.hidden_states, outputs.attentions, outputs.reshaped_hidden_states
        )
        return out if return_dict else out.to_tuple()


class Swinv2ForMaskedImageModeling(Swinv2PreTrainedModel):
    """SimMIM: Swin V2 with mask tokens and a one-layer decoder (1x1 conv + pixel shuffle) to pixels.

    The loss is the L1 distance on the masked patches only, averaged over their pixels and channels.
    """

    def __init__(self, config: Swinv2Config) -> None:
        super().__init__(config)
        config = self.config  # (transformers' config, converted)
        self.swinv2 = Swinv2Model(config, add_pooling_layer=False, use_mask_token=True)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, config.encoder_stride**2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(config.encoder_stride),
        )
        self.post_init()

    @native_precision
    def forward(
        self,
        pixel_values: Tensor | None = None,
        bool_masked_pos: Tensor | None = None,
        head_mask: Tensor | Sequence[Tensor | None] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = True,
    ) -> Swinv2MaskedImageModelingOutput | tuple[Tensor, ...]:
        """`pixel_values` `(B, C, H, W)` -> `reconstruction` `(B, C, H, W)` (the whole patches' pixels where the
        config drops partial patches: `drops_partial_patches`); with `bool_masked_pos`
        `(B, num_patches)` the masked patches are hidden from the encoder and the loss is computed on them."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        outputs = self.swinv2(
            pixel_values, bool_masked_pos=bool_masked_pos, head_mask=head_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        batch, channels, height, width = pixel_values.shape
        gh, gw = self.swinv2.output_grid(height, width)
        features = outputs.last_hidden_state.transpose(1, 2).reshape(batch, -1, gh, gw)
        reconstruction = decoded = self.decoder(features)
        ph, pw = self.config.patch_hw
        grid = self.swinv2.embeddings.grid(height, width)
        stride, depth = self.config.encoder_stride, 2 ** (self.config.num_layers - 1)
        if stride == ph * depth == pw * depth:
            # Each token decodes to the pixels it was made from: only the padding of an input that is not a
            # multiple of the patch (or of the last stages' grids) is cut off, and where partial patches are
            # dropped, so are their pixels. Another stride gives pixels that line up with nothing in the input;
            # they are returned whole, as transformers returns them.
            reconstruction = reconstruction[..., : min(height, grid[0] * ph), : min(width, grid[1] * pw)]
        loss = None
        if bool_masked_pos is not None:
            if ph != pw:
                raise ValueError(
                    f"the decoder upsamples both sides by one encoder_stride ({stride}), so masked image "
                    f"modeling needs a square patch, not {ph}x{pw}: use patch_size={ph} (or {pw})"
                )
            if stride != ph * depth:
                raise ValueError(
                    f"the decoder reconstructs {tuple(decoded.shape[-2:])} pixels for a {height}x{width} "
                    f"input: encoder_stride ({stride}) must equal patch_size * 2**(num_stages - 1) = "
                    f"{ph * depth}; set encoder_stride={ph * depth} in the config"
                )
            mask = _check_bool_masked_pos(bool_masked_pos, batch, grid).reshape(batch, 1, *grid)
            # in fp32 at least (transformers' loss is fp32 for a half-precision model too)
            acc = torch.promote_types(pixel_values.dtype, torch.float32)
            # (the pixels the model saw: all of them, or the whole patches where partial ones are dropped)
            seen = pixel_values[..., : reconstruction.shape[-2], : reconstruction.shape[-1]]
            mask = mask.repeat_interleave(ph, 2).repeat_interleave(pw, 3)[..., :height, :width].to(acc)
            error = F.l1_loss(seen.to(acc), reconstruction.to(acc), reduction="none")
            # a mask given once for the whole batch is counted once, as transformers does (the same numbers)
            shared = bool_masked_pos.dim() == 1 or bool_masked_pos.shape[0] == 1
            loss = (error * mask).sum() / ((mask[:1] if shared else mask).sum() + 1e-5) / channels
        out = Swinv2MaskedImageModelingOutput(
            loss, reconstruction, outputs.hidden_states, outputs.attentions, outputs.reshaped_hidden_states
        )
        return out if return_dict else out.to_tuple()


class BackboneType(enum.Enum):
    """Where a backbone's code comes from: transformers' enum of this name (`transformers.utils.backbone_utils`),
    mirrored with the same names and values so that `backbone_type.value` reads the same without transformers."""

    TIMM = "timm"
    TRANSFORMERS = "transformers"


class Swinv2Backbone(Swinv2PreTrainedModel):
    """Swin V2 as a feature extractor: `(B, C_i, H_i, W_i)` maps of the stages named in `out_features`.

    Stage maps are taken before each stage's patch merging; "stem" is the patch embedding.
    """

    backbone_type = BackboneType.TRANSFORMERS  # transformers' value for its own backbones, this one's model

    def __init__(self, config: Swinv2Config) -> None:
        super().__init__(config)
        config = self.config  # (transformers' config, converted)
        self.embeddings = PatchEmbeddings(
            config.image_hw, config.patch_hw, config.num_channels, config.embed_dim,
            False, config.use_absolute_embeddings, config.hidden_dropout_prob, config.drops_partial_patches,
        )
        self.stages = build_stages(config)
        self.num_features = [config.embed_dim] + [config.embed_dim * 2**i for i in range(config.num_layers)]
        self.post_init()

    @property
    def stage_names(self) -> list[str]:
        return self.config.stage_names

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @out_features.setter
    def out_features(self, value: list[str]) -> None:
        """Choose other stages on a built backbone (as transformers' `BackboneMixin`); `out_indices` follows.
        The choice is this model's config's, so `save_pretrained` keeps it; the config is copied first, so
        that other models built from the same config keep theirs."""
        self._own_config().out_features = value

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @out_indices.setter
    def out_indices(self, value: list[int]) -> None:
        self._own_config().out_indices = value

    def _own_config(self) -> Swinv2Config:
        self.config = copy.deepcopy(self.config)
        return self.config

    @property
    def out_feature_channels(self) -> dict[str, int]:
        """Channels of every stage's map, selected or not (as transformers' `BackboneMixin`)."""
        return dict(zip(self.stage_names, self.num_features))

    @property
    def channels(self) -> list[int]:
        """Channels of the selected maps, in `out_features` order."""
        return [self.out_feature_channels[name] for name in self.out_features]

    @native_precision
    def forward(
        self,
        pixel_values: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: Tensor | Sequence[Tensor | None] | None = None,
    ) -> BackboneOutput | tuple[Tensor, ...]:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.use_return_dict if return_dict is None else return_dict
        _check_pixel_values(pixel_values, config)
        _check_matches_weights(pixel_values, self.embeddings.proj.weight)
        x = self.embeddings(pixel_values)
        _, hidden, reshaped, attentions = run_stages(
            self.stages, x, _stage_head_masks(head_mask, config), output_attentions, True, before_downsampling=True
        )
        wanted = set(self.out_features)
        feature_maps = tuple(m for name, m in zip(self.stage_names, reshaped) if name in wanted)
        out = BackboneOutput(feature_maps, hidden if output_hidden_states else None, attentions)
        return out if return_dict else out.to_tuple()
