"""The Swin Transformer V2 building blocks (Liu et al., arXiv 2111.09883), as the paper describes them.

Tensors between blocks are channels-last token grids `(B, H, W, C)`. Attention runs inside
non-overlapping windows of `(wh, ww)` tokens (square, except where timm's layout narrows a window along the
side of a grid narrower than it); every other block shifts the windows by half a window (a cyclic `roll`)
and masks attention between tokens that the roll brought together.

Swin V2's changes to Swin V1, all here:
- residual post-normalisation: `x = x + norm(attn(x))`, `x = x + norm(mlp(x))`;
- scaled cosine attention: `cos(q, k) * exp(min(logit_scale, log 100))` with a learned scale per head;
- log-spaced continuous position bias: a small MLP maps log-spaced relative coordinates to a bias per head,
  so weights trained with one window size transfer to another.

This module imports nothing of the package but its CUDA kernels: it is the model's math and nothing else.

Speed: `WindowAttention.forward` is the fast path (fused qkv, the logit scale folded into q, SDPA or the
Triton kernel on a cached folded mask); `forward_explicit` is the step-by-step reference. In eager GPU
code the layout moves around each window attention are Triton gathers by cached row indices
(`window_layout`): one builds the shifted windows (cast, pad, roll and partition), one takes them back
(reverse, roll and crop), each the other's backward in training. In eager GPU inference a block is three
Triton passes around its GEMMs and attention: the gather, and `x + norm(y)` at the end of each residual
branch (the attention branch reading its output straight from the windows, the first pass also writing
the MLP's autocast input); the qkv bias and logit scale are kept between calls. On CPU in
inference, Linear layers run as oneDNN matmuls with the bias (and the MLP's GELU) in the GEMM epilogue
where oneDNN is the faster (bf16; fp32 with AVX-512), else as F.linear (MKL) with GELU in place; under
autocast on cached low-precision copies of the weights; fp32 window attention is batched matmuls and a
softmax (eager and compiled). In eager CPU training the window attention, the MLP and (where oneDNN
takes them) the Linear layers are autograd Functions with hand-written backward passes that keep fewer
activations (probabilities and GELU recomputed), use oneDNN for the input gradients where it is the
faster, and hold their temporaries in per-thread scratch buffers reused from step to step.
Under `torch.compile` the model has no graph breaks; with `dynamic=True` it compiles one graph per padding
pattern (which stages pad their grid to the window), not one per input size.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from . import kernels

# Shifted-window masks add -100 to the scores of tokens from different regions in Microsoft's code, timm and
# torchvision (transformers adds its -100 mask twice: `Swinv2Config.shift_mask_value`).
MASK_VALUE = -100.0
# Folded masks and window layouts are cached for this many input sizes per block.
MASK_CACHE_SIZE = 4
# CPU inference runs a block's attention and its MLP on groups of about this many tokens per thread: their
# temporaries (qkv 3x, the MLP's hidden layer 4x the input) no longer grow with the batch or the image, and
# are read back from cache instead of memory. Thin Linear shapes run up to 2x faster on cached rows (qkv of
# 32768 x 96 tokens: 24 -> 12 ms, the MLP 46 -> 32 ms on a 2-core Zen 4); swinv2-tiny at batch 8: peak RSS
# 950 -> 800 MiB.
CPU_GROUP_TOKENS_PER_THREAD = 1024
# A shifted block's folded mask holds a (heads, N, N) mask per window. Where it would take more than this in
# fp32, CPU inference keeps one mask for the windows the shift left whole and folded masks for the border
# windows only (`window_regions`): swinv2-tiny at 1024 px, 109.5 -> 16.5 MiB of masks (peak RSS 1037 -> 896
# MiB at batch 1). Below, one run of every window is 3% faster at 256 px (fewer, larger groups).
REGION_MASK_BYTES = 4 << 20
# Under torch.compile, CPU inference runs a block on groups of tokens too, for another reason: inductor's code
# allocates its temporaries afresh on every call, and glibc maps those above its largest mmap threshold (32 MiB)
# straight from the kernel, which zero-fills them page by page on first touch. Groups whose largest temporary
# (the MLP's hidden layer, 4C wide) holds about this many bytes are served from the heap instead. swinv2-tiny
# at batch 8 on 2 Zen 3 cores, medians of 8 interleaved calls: 802 -> 757 ms per compiled forward (eager
# 780), a cold first call 62 -> 76 s; groups of the eager size were no faster and compiled for 123 s.
COMPILED_GROUP_BYTES = 12 << 20


def _find_onednn_linear():
    """oneDNN's matmul with a fused bias/activation epilogue, when this PyTorch build has it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


# Why: on CPU, addmm first copies the bias into the whole output and then accumulates the GEMM into it,
# an extra pass over the output that costs up to half the time of Swin's thin Linear shapes (e.g.
# 32768x96 @ 96x96); oneDNN adds the bias (and GELU) in the GEMM's epilogue instead. Measured per shape
# at batch 8: 1.1-2x faster, fc1+GELU 1.5x. Inference only (the op has no autograd formula).
_ONEDNN_LINEAR = _find_onednn_linear()

# Without AVX-512 the trade reverses for fp32: oneDNN's AVX2 GEMM kernels are slower than MKL's, which
# F.linear uses, by more than the epilogue saves. Measured on a 2-core Zen 3 (AVX2), per Linear shape of
# swinv2-tiny at batch 8: oneDNN 1.0-1.3x slower without GELU, 1.15-1.45x with it; the model's Linear
# layers 725 ms of a 1030 ms forward against 580 ms for the peers' addmm. There, fp32 takes F.linear with
# GELU in place afterwards. bf16 takes oneDNN wherever oneDNN has a bf16 GEMM (not on AVX2-only CPUs).
_ONEDNN_FP32 = _ONEDNN_LINEAR is not None and torch.backends.cpu.get_cpu_capability() == "AVX512"


def _onednn_bf16_supported() -> bool:
    try:  # oneDNN has no bf16 GEMM for AVX2-only CPUs: it fails to create the primitive there
        return _ONEDNN_LINEAR is not None and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_BF16 = _onednn_bf16_supported()


def _onednn_computes(dtype: torch.dtype) -> bool:
    """Whether CPU GEMMs in `dtype` run through oneDNN: a dtype it computes here, and faster than MKL."""
    return (dtype == torch.float32 and _ONEDNN_FP32) or (dtype == torch.bfloat16 and _ONEDNN_BF16)


def _onednn_takes(x: Tensor, weight: Tensor) -> bool:
    """Whether the GEMM of these CPU tensors runs through oneDNN."""
    return x.dtype == weight.dtype and _onednn_computes(x.dtype)


def _onednn_ok(x: Tensor) -> bool:
    # Under a dispatch mode (FlopCounterMode, fake or meta tensors, ...) plain F.linear, which every mode
    # knows: FLOP counters then count the GEMMs, and torch.utils.flop_counter is not imported (it imports
    # Triton, ~80 MiB of resident memory) just to teach it our op. The TorchScript tracer cannot record
    # the op's list arguments.
    # torch.export's graphs are read by other runtimes, and forward-mode AD has no formula for the op.
    if (
        _ONEDNN_LINEAR is None
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.compiler.is_exporting()
        or _differentiated_forward()
    ):
        return False
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() == 0


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: str | None) -> Tensor:
    if gelu is None:
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return _ONEDNN_LINEAR(x, weight, bias, "gelu", [], gelu)


# Under torch.compile the same call as an opaque op: inductor lowers mkldnn._linear_pointwise only with
# frozen (constant) weights, and its own CPU GEMMs for these thin shapes are slower (measured at batch 8:
# compiled without this 11.1 img/s, below our eager 11.7); it still fuses everything around the op.
@torch.library.custom_op("swinv2::onednn_linear", mutates_args=())
def _onednn_linear_op(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: str) -> Tensor:
    return _onednn_linear(x, weight, bias, gelu or None)


@_onednn_linear_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# Inference under autocast on CPU: the weights' low-precision copies, kept while the weights are unchanged
# (same storage, same version counter; a change through `.data` bypasses the counter: call
# `model.clear_attention_cache()` after one). Autocast itself casts them again on every call (its cache
# lives for one autocast region): measured here, 12% of a bf16 forward at batch 1, 3% at batch 8.
_CAST_CACHE = WeakIdKeyDictionary()


def _cast_cached(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if t is None or t.dtype == dtype:
        return t
    # not for tensors computed in this call (the qkv bias), nor inside a compiled graph (inductor fuses casts)
    if not isinstance(t, nn.Parameter) or torch.compiler.is_compiling() or t.is_inference():
        return t.to(dtype)
    key = (dtype, t.data_ptr(), t._version)
    entry = _CAST_CACHE.get(t)
    if entry is None or entry[0] != key:
        entry = (key, t.to(dtype))
        _CAST_CACHE[t] = entry
    return entry[1]


def forget_casts(parameters: Iterable[Tensor]) -> None:
    """Drop the cached low-precision copies of these parameters."""
    for p in parameters:
        _CAST_CACHE.pop(p, None)


def _differentiated_forward() -> bool:
    """Under torch.func transforms (jvp, vmap, grad) or forward-mode AD (`torch.autograd.forward_ad.dual_level`):
    where only ops with forward-mode and batching rules may run (no autograd Functions without a jvp, no
    out= kernels, no SDPA)."""
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


def _plain_eager() -> bool:
    """Eager code on plain tensors: not under torch.compile or torch.export (which fuse the ordinary ops
    themselves), the TorchScript tracer, torch.func transforms or forward-mode AD, or a dispatch mode such as a
    FLOP counter or fake tensors. Only then may a layer run code those cannot see into (autograd Functions, raw
    kernels)."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _differentiated_forward()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def _eager_or_compiled() -> bool:
    """`_plain_eager()`, or inside a `torch.compile` graph (not `torch.export`'s, whose graphs other runtimes
    read): where the code may choose its ops for this process's kernels."""
    return _plain_eager() or (torch.compiler.is_compiling() and not torch.compiler.is_exporting())


def _hand_written_backward_ok(x: Tensor) -> bool:
    """Whether a CPU training step takes the autograd Functions below."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and _plain_eager()


# Below this many multiply-adds a Linear layer (or the MLP) stays on autograd's own ops in CPU training: the
# Functions' fixed cost (~0.1 ms per call) outweighs oneDNN's gain; measured break-even near 2048 x 96 x 384.
_FUNCTION_MIN_MACS = 1 << 26


def _big_enough(x: Tensor, weight: Tensor) -> bool:
    return x.numel() * weight.shape[0] >= _FUNCTION_MIN_MACS


def _autocast_inputs(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The tensors in CPU autocast's dtype while autocast is on, cast as autocast would cast a Linear layer's
    inputs (differentiably): for the Functions below, which run with autocast off."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _input_grad(grad: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """`grad @ weight`, a Linear layer's input gradient `(..., in)` from `grad` `(..., out)`: through oneDNN
    on CPUs where it takes the dtype, as MKL's GEMM for Swin's thin shapes is up to 2x slower there (e.g.
    32768x384 @ 384x96: 98 against 178 GFLOP/s on a 2-core Zen 4). MKL's GEMM writes into `out` when given;
    oneDNN's returns a tensor of its own."""
    if grad.device.type == "cpu" and torch._C._len_torch_dispatch_stack() == 0 and _onednn_takes(grad, weight):
        return _onednn_linear(grad.contiguous(), weight.t(), None, None)  # oneDNN reads the transposed view
    return torch.mm(grad, weight, out=out) if out is not None else grad @ weight


def _autocast_off(backward):
    """A Function's backward in the dtypes its forward saved: `.backward()` may be called inside an autocast
    region, which would otherwise cast the inputs of the backward's GEMMs (and fail on their `out=`)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.autocast("cpu", enabled=False):
            return backward(ctx, *grads)

    return wrapper


class _Scratch(threading.local):
    """This thread's scratch buffers, by (slot, dtype, device)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


_SCRATCH = _Scratch()


def _scratch(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A buffer of `shape` (`like`'s dtype and device) for a temporary that never leaves the code that
    asked for it (the CPU training Functions below, the grouped CPU inference of a block), reused from call
    to call and step to step.

    A fresh tensor's pages are faulted in and zero-filled by the kernel on first touch, and glibc's
    allocator hands large buffers back to the kernel when they are freed, so a training step pays this for
    its temporaries again every step: ~1.6 us per 4 KiB page on a 2-core Zen 3 VM, where the GEMM writing
    stage 1's MLP input gradient (32768 x 384) ran at 22 GFLOP/s into a fresh buffer and at 148 into a
    reused one. Each slot holds one buffer per thread, grown to the largest request: temporaries alive at
    the same time take different slots (training 0-3; grouped inference 4-6 for the block, 0-3 and 7-12 for
    its groups). `release_scratch` frees them."""
    key = (slot, like.dtype, like.device)
    numel = math.prod(shape)
    buffer = _SCRATCH.buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        _SCRATCH.buffers.pop(key, None)  # the old buffer goes before the new one comes
        with torch.inference_mode(False):  # an ordinary tensor, writable in and out of inference mode
            buffer = _SCRATCH.buffers[key] = like.new_empty(numel)
    return buffer[:numel].view(shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers (`_scratch`): the next CPU call that needs them allocates them again."""
    _SCRATCH.buffers.clear()


def _second_order(forward, inputs: tuple, needs: tuple, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    """The input gradients when the backward itself is differentiated (`create_graph=True`): autograd of
    the plain ops on the saved inputs, instead of the hand-written backward's non-differentiable kernels."""
    wanted = [t for t, n in zip(inputs, needs) if n and t is not None]
    with torch.enable_grad():
        grads = iter(torch.autograd.grad(forward(*inputs), wanted, grad_out, create_graph=True))
    return tuple(next(grads) if n and t is not None else None for t, n in zip(inputs, needs))


class _TrainingLinear(torch.autograd.Function):
    """`F.linear` for autograd on CPU: oneDNN with the bias in the GEMM forward, oneDNN for the input's
    gradient backward (MKL, which autograd's addmm/mm use, is up to 2x slower on these shapes)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias, None)

    @staticmethod
    @_autocast_off
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _second_order(F.linear, (x, weight, bias), ctx.needs_input_grad, grad_out)
        grad_out = grad_out.reshape(-1, weight.shape[0])
        grad_x = _input_grad(grad_out, weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = grad_out.t() @ x.reshape(-1, weight.shape[1]) if ctx.needs_input_grad[1] else None
        grad_b = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, gelu: str | None = None) -> Tensor:
    """`F.linear`, then `F.gelu(approximate=gelu)` when `gelu` is "none" or "tanh"; fused on CPU inference."""
    if _onednn_ok(x):
        if torch.is_autocast_enabled("cpu"):  # the op is not autocast-aware: cast as autocast would
            dtype = torch.get_autocast_dtype("cpu")
            x, weight, bias = x.to(dtype), _cast_cached(weight, dtype), _cast_cached(bias, dtype)
        if _onednn_takes(x, weight) and x.is_contiguous():
            if torch.compiler.is_compiling():
                return _onednn_linear_op(x, weight, bias, gelu or "")
            return _onednn_linear(x, weight, bias, gelu)
        if gelu is not None:  # no autograd here: GELU may overwrite the fresh GEMM output
            return torch.ops.aten.gelu_(F.linear(x, weight, bias), approximate=gelu)
    elif gelu is None and _hand_written_backward_ok(x) and _big_enough(x, weight) and _onednn_computes(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    ):  # (checked before the casts, which F.linear below would otherwise get twice)
        x, weight, bias = _autocast_inputs(x, weight, bias)
        if _onednn_takes(x, weight) and x.is_contiguous():
            with torch.autocast("cpu", enabled=False):
                return _TrainingLinear.apply(x, weight, bias)
    y = F.linear(x, weight, bias)
    if gelu is None:
        return y
    if not y.requires_grad and _plain_eager():  # nothing records y: one hidden layer alive instead of two
        return torch.ops.aten.gelu_(y, approximate=gelu)
    return F.gelu(y, approximate=gelu)


def _hooked(module: nn.Module) -> bool:
    """Whether a hook would see a call of `module`: forward or backward hooks of its own, or global module hooks
    (`register_module_forward_hook` and the like), which see every module."""
    g = nn.modules.module
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or g._global_forward_hooks or g._global_forward_pre_hooks
        or g._global_backward_hooks or g._global_backward_pre_hooks
    )


def _is_plain(module: nn.Module, cls: type) -> bool:
    """Exactly `cls`, without hooks: its forward may be replaced by a fused equivalent."""
    return type(module) is cls and not _hooked(module)


def _is_plain_linear(module: nn.Module) -> bool:
    return _is_plain(module, nn.Linear)


def _recall(cache: OrderedDict, key: tuple):
    """The value kept under `key` in a least-recently-used cache (`_remember`), or None. Threads calling one
    model share its caches: each step is one atomic dict operation, and an entry another thread evicted
    between two of them is simply gone."""
    value = cache.get(key)
    if value is not None:
        with contextlib.suppress(KeyError):
            cache.move_to_end(key)
    return value


def _remember(cache: OrderedDict, key: tuple, value) -> None:
    """Keep `value` in a least-recently-used cache of at most MASK_CACHE_SIZE entries (`_recall`)."""
    cache[key] = value
    while len(cache) > MASK_CACHE_SIZE:
        with contextlib.suppress(KeyError):  # (emptied by another thread meanwhile)
            cache.popitem(last=False)


def _on_device(value, device: torch.device):
    """`value` with its tensors, in (named) tuples too, on `device`."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        parts = [_on_device(part, device) for part in value]
        return value._make(parts) if hasattr(value, "_make") else tuple(parts)
    return value


def _caches_ok() -> bool:
    """Whether values derived from the weights may be kept between calls: outside autograd (which must see
    them computed), and in plain eager code (`_plain_eager`: torch.compile fuses their computation, the
    TorchScript tracer would record a kept tensor as a constant, torch.func's batched tensors have no storage
    of their own)."""
    return not torch.is_grad_enabled() and _plain_eager()


class _Version:
    """One tensor's current value, as a cache key: equal for the same live tensor object at the same version
    counter (an in-place update, an optimiser step included, bumps it). Not its address: a tensor made anew
    (a replaced Parameter, `torch.func.functional_call`'s, DataParallel's replicas) often lands where a freed
    one was, at version 0 too."""

    __slots__ = ("_hash", "ref", "version")

    def __init__(self, tensor: Tensor) -> None:
        self.ref, self.version = weakref.ref(tensor), tensor._version
        self._hash = hash((id(tensor), self.version))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Version):
            return NotImplemented
        tensor = self.ref()
        return tensor is not None and tensor is other.ref() and self.version == other.version

    def __hash__(self) -> int:
        return self._hash


def _versions(*tensors: Tensor | None) -> tuple[_Version, ...] | None:
    """What identifies these tensors' current values (`_Version`). None when one has no counter (an
    inference tensor: a model built or loaded under torch.inference_mode), whose values then cannot be kept."""
    tensors = tuple(t for t in tensors if t is not None)
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(_Version(t) for t in tensors)


def apply_linear(module: nn.Module, x: Tensor, gelu: str | None = None) -> Tensor:
    """`module(x)` (then GELU), through `linear` when the module is a plain `nn.Linear` without hooks; a
    replaced or wrapped layer (quantised, LoRA, hooked) keeps its own forward."""
    if _is_plain_linear(module):
        return linear(x, module.weight, module.bias, gelu)
    y = module(x)
    return y if gelu is None else F.gelu(y, approximate=gelu)


def _scratch_gemm_ok(x: Tensor, weight: Tensor) -> bool:
    """Whether `x @ weight.T` may run as MKL's GEMM writing into a scratch buffer: no autocast cast to make
    and not a GEMM that oneDNN computes faster here (oneDNN returns a tensor of its own)."""
    return not torch.is_autocast_enabled("cpu") and x.dtype == weight.dtype and not _onednn_takes(x, weight)


def _scratch_linear(x: Tensor, weight: Tensor, bias: Tensor | None, slot: int) -> Tensor:
    """`F.linear` of the rows `x` `(M, K)` (the same GEMM: MKL's, the bias copied in first) into scratch slot
    `slot`."""
    out = _scratch(slot, (x.shape[0], weight.shape[0]), x)
    return torch.mm(x, weight.t(), out=out) if bias is None else torch.addmm(bias, x, weight.t(), out=out)


def _linear_rows(module: nn.Module, x: Tensor, slot: int, gelu: str | None = None) -> Tensor:
    """`apply_linear(module, x, gelu)` for the rows `(M, K)` of a CPU inference group: into scratch slot `slot`
    when `module` is a plain Linear on MKL's GEMM here, valid until the slot's next use."""
    if _is_plain_linear(module) and _scratch_gemm_ok(x, module.weight):
        y = _scratch_linear(x, module.weight, module.bias, slot)
        return y if gelu is None else torch.ops.aten.gelu_(y, approximate=gelu)
    return apply_linear(module, x, gelu)


def _layer_norm_into(norm: nn.Module, x: Tensor, out: Tensor) -> bool:
    """`out[:] = norm(x)` for rows `(M, C)` without a temporary, when `norm` is a plain LayerNorm in `x`'s and
    `out`'s dtype outside autocast; False (nothing written) otherwise."""
    if not (_is_plain(norm, nn.LayerNorm) and x.dtype == out.dtype and not torch.is_autocast_enabled("cpu")):
        return False
    if norm.weight is not None and norm.weight.dtype != x.dtype:
        return False
    stats = (_scratch(11, (x.shape[0], 1), x), _scratch(12, (x.shape[0], 1), x))
    torch.ops.aten.native_layer_norm.out(
        x, norm.normalized_shape, norm.weight, norm.bias, norm.eps, out0=out, out1=stats[0], out2=stats[1]
    )
    return True


def activation(name: str) -> nn.Module:
    """The MLP non-linearity named in the config (the names transformers uses)."""
    if callable(name) and not isinstance(name, str):
        return _Lambda(name)
    table = {
        "gelu": lambda: nn.GELU(),
        "gelu_new": lambda: nn.GELU(approximate="tanh"),
        "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
        "gelu_fast": lambda: nn.GELU(approximate="tanh"),
        "gelu_accurate": lambda: nn.GELU(approximate="tanh"),
        "gelu_python": lambda: nn.GELU(),
        "gelu_python_tanh": lambda: nn.GELU(approximate="tanh"),
        "gelu_10": lambda: _Lambda(lambda x: F.gelu(x).clamp(-10.0, 10.0)),
        "quick_gelu": lambda: _Lambda(lambda x: x * torch.sigmoid(1.702 * x)),
        # the Gaussian CDF with mean 1/sqrt(2) and standard deviation 1/sqrt(4 pi), transformers' constants
        "laplace": lambda: _Lambda(lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))),
        "relu": lambda: nn.ReLU(),
        "relu2": lambda: _Lambda(lambda x: torch.relu(x).square()),
        "relu6": lambda: nn.ReLU6(),
        "leaky_relu": lambda: nn.LeakyReLU(),
        "selu": lambda: nn.SELU(),
        "linear": lambda: nn.Identity(),
        "silu": lambda: nn.SiLU(),
        "swish": lambda: nn.SiLU(),
        "mish": lambda: nn.Mish(),
        "tanh": lambda: nn.Tanh(),
        "sigmoid": lambda: nn.Sigmoid(),
    }
    if name not in table:
        raise ValueError(f"unknown hidden_act {name!r}; use one of {sorted(table)}")
    return table[name]()


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch for a random subset of the samples."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    return x * keep.div_(keep_prob)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# ---------------------------------------------------------------------------------------------- windows
def sides(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """A window or shift as (height, width): an int is square."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def window_partition(x: Tensor, window: int | tuple[int, int]) -> Tensor:
    """`(B, H, W, C)` with H and W multiples of `window` `(wh, ww)` -> `(B * num_windows, wh * ww, C)`."""
    wh, ww = sides(window)
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)


def window_reverse(windows: Tensor, window: int | tuple[int, int], height: int, width: int) -> Tensor:
    """`(B * num_windows, wh * ww, C)` -> `(B, height, width, C)`; the inverse of `window_partition`."""
    wh, ww = sides(window)
    c = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def window_layout(
    height: int, width: int, window: int | tuple[int, int], shift: int | tuple[int, int], shift_first: bool = False
) -> tuple[Tensor, Tensor]:
    """The shifted-window layout of one `(height, width)` grid as row indices (int32), for gathers.

    `to_windows` `(Hp * Wp,)`: the grid row (`h * width + w`) that each row of the window-major layout
    (`window_partition` of the padded grid rolled by `-shift`; with `shift_first`, of the grid rolled, then
    padded) holds, -1 for padding. `from_windows` `(height * width,)`: the window-major row each grid row
    returns from (`window_reverse`, roll by `+shift` and crop, or crop and roll). Built with the same
    functions as the layout moves, so the two cannot disagree.
    """
    (wh, ww), (sh, sw) = sides(window), sides(shift)
    pad_h, pad_w = (-height) % wh, (-width) % ww
    grid = torch.arange(height * width, dtype=torch.int32).view(1, height, width, 1)
    grid = _shifted(grid, (-sh, -sw), shift_first, (0, 0, 0, pad_w, 0, pad_h), value=-1)
    to_windows = window_partition(grid, (wh, ww)).flatten().contiguous()
    padded_h, padded_w = height + pad_h, width + pad_w
    where = torch.arange(padded_h * padded_w, dtype=torch.int32).view(-1, wh * ww, 1)
    where = _unshifted(window_reverse(where, (wh, ww), padded_h, padded_w), (sh, sw), shift_first, height, width)
    from_windows = where.flatten().contiguous()  # flatten may keep the crop's strides
    return to_windows, from_windows


def _shifted(
    x: Tensor, shift: tuple[int, int], shift_first: bool, padding: tuple[int, ...], value: float = 0.0
) -> Tensor:
    """`(B, H, W, C)` rolled by `shift` `(down, right)` and padded by `padding` (`F.pad`'s order): padded
    first, as in transformers and torchvision, or rolled first (`shift_first`), as in timm."""
    if any(shift) and shift_first:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    x = F.pad(x, padding, value=value) if any(padding) else x
    if any(shift) and not shift_first:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x


def _unshifted(x: Tensor, shift: tuple[int, int], shift_first: bool, height: int, width: int) -> Tensor:
    """The inverse of `_shifted` by `-shift`: the padded `(B, Hp, Wp, C)` rolled by `shift` and cropped to
    `(height, width)`, in the reverse order."""
    crop = x.shape[1:3] != (height, width)
    if any(shift) and not shift_first:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    x = x[:, :height, :width] if crop else x
    if any(shift) and shift_first:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x


def window_regions(
    height: int, width: int, window: int | tuple[int, int], shift: int | tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The windows of a `(height, width)` grid padded to whole windows (in `window_partition`'s order) split
    by their shift mask: those whose mask is 0 everywhere, which the shift left whole (all but the last row
    and column of windows), and the border windows that mix regions of the rolled grid (none without a
    shift). Indices, int64."""
    (wh, ww), shift = sides(window), sides(shift)
    count = (height // wh) * (width // ww)
    if not any(shift):
        return torch.arange(count), torch.arange(0)
    mixed = shifted_window_mask(height, width, (wh, ww), shift).flatten(1).ne(0).any(1)
    return torch.nonzero(~mixed).flatten(), torch.nonzero(mixed).flatten()


class RegionLayout(NamedTuple):
    """`window_layout` of one grid with its windows reordered by `window_regions`, for a batch whose windows
    are laid out region by region: region k holds every image's windows of that region, image after image.

    `to_windows`: per region, the grid row (-1 for padding) of each row of one image's windows of that
    region `(n_k * N,)`. `within`, `earlier`, `stride` `(height * width,)`: for each grid row, its row in
    image 0's block of its region, the rows per image of the regions before it, and the rows per image of
    its own region; in a batch of B, image i's grid row comes back from row
    `within + B * earlier + i * stride`."""

    to_windows: tuple[Tensor, ...]
    counts: tuple[int, ...]  # windows per image in each region
    within: Tensor
    earlier: Tensor
    stride: Tensor

    def from_windows(self, batch: int) -> Tensor:
        """The row of the region-major layout that each row of `(batch * height * width)` comes back from."""
        images = torch.arange(batch, dtype=self.stride.dtype, device=self.stride.device).unsqueeze(1)
        return torch.addcmul(self.within + batch * self.earlier, images, self.stride).flatten()


def region_layout(
    height: int,
    width: int,
    window: int | tuple[int, int],
    shift: int | tuple[int, int],
    split: bool,
    shift_first: bool = False,
) -> RegionLayout:
    """The `RegionLayout` of a `(height, width)` grid (int32 indices): the regions of `window_regions` when
    `split`, else one region of every window (and an empty one). (The shift mask is a function of the padded
    grid, so the regions are the same whichever of `window_layout`'s orders the tokens take.)"""
    (wh, ww), shift = sides(window), sides(shift)
    to_windows, from_windows = window_layout(height, width, (wh, ww), shift, shift_first)
    n = wh * ww
    padded = (height + (-height) % wh, width + (-width) % ww)
    regions = window_regions(*padded, (wh, ww), shift if split else 0)
    region_of = torch.empty(to_windows.numel() // n, dtype=torch.int32)
    rank = torch.empty_like(region_of)
    for k, windows in enumerate(regions):
        region_of[windows] = k
        rank[windows] = torch.arange(windows.numel(), dtype=torch.int32)
    counts = [windows.numel() for windows in regions]
    rows = torch.tensor(counts, dtype=torch.int32) * n
    window_of, position = from_windows // n, from_windows % n
    kind = region_of[window_of]
    return RegionLayout(
        to_windows=tuple(to_windows.view(-1, n)[windows].flatten() for windows in regions),
        counts=tuple(counts),
        within=rank[window_of] * n + position,
        earlier=(torch.cumsum(rows, 0) - rows)[kind].to(torch.int32),
        stride=rows[kind],
    )


def relative_coords_table(window: int | tuple[int, int], pretrained_window: int = 0) -> Tensor:
    """Log-spaced relative coordinates `(2*wh-1, 2*ww-1, 2)` fed to the position-bias MLP.

    `t = 8 * delta / (W' - 1)` per axis, with `W'` the pretrained window when given, else the window's side,
    then `sign(t) * log2(1 + |t|) / log2(8)`. A side of 1 has only the coordinate 0 (no division).
    """
    axes = []
    for side in sides(window):
        coords = torch.arange(-(side - 1), side, dtype=torch.float32)
        reference = pretrained_window if pretrained_window > 0 else side
        if reference > 1:
            coords = coords / (reference - 1)
        axes.append(coords * 8.0)
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int | tuple[int, int]) -> Tensor:
    """For every pair of tokens in a window, the row of their offset in the coordinate table: `(N, N)`."""
    wh, ww = sides(window)
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    offset = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (offset[..., 0] + wh - 1) * (2 * ww - 1) + offset[..., 1] + ww - 1


def shifted_window_mask(
    height: int,
    width: int,
    window: int | tuple[int, int],
    shift: int | tuple[int, int],
    device=None,
    dtype: torch.dtype = torch.float32,
    value: float = MASK_VALUE,
) -> Tensor:
    """Additive mask `(num_windows, N, N)`: 0 within a region of the rolled grid, `value` across regions.

    Along an axis shifted by `s` the rolled grid has three regions, `[0, size - window)`,
    `[size - window, size - s)` and `[size - s, size)`, along an unshifted one a single region; a token's
    region is the pair. (In closed form rather than as nine slice assignments: a compiled graph then holds a
    few fused kernels instead of nine per shifted block.)"""
    (wh, ww), (sh, sw) = sides(window), sides(shift)

    def region(size, window, shift):
        position = torch.arange(size, device=device)
        if not shift:
            return torch.zeros_like(position, dtype=torch.int32)
        return (position >= size - window).int() + (position >= size - shift).int()

    regions = region(height, wh, sh)[:, None] * 3 + region(width, ww, sw)[None, :]
    regions = window_partition(regions[None, :, :, None], (wh, ww)).squeeze(-1)  # (num_windows, N)
    different = regions.unsqueeze(1) != regions.unsqueeze(2)
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill_(different, value)


# ---------------------------------------------------------------------------------------------- layers
def _symbolic(*sizes) -> bool:
    """Whether image or grid sizes are symbols (torch.compile or torch.export with dynamic shapes) rather than
    numbers. Code that dynamo traces sees its symbolic sizes as ints, to `isinstance` too: there this says
    whether the graph has symbolic sizes other than its inputs' batch sizes (a smaller last batch alone makes
    the batch's size symbolic, and the fixed grid then keeps the static layout: the gathers of the symbolic
    one ran 3-15% slower in that graph, on 2 noisy CPU cores)."""
    return any(isinstance(size, torch.SymInt) for size in sizes) or (
        torch.compiler.is_compiling() and _tracing_symbolic_sizes(beyond_batch=True)
    )


def _tracing_symbolic_sizes(beyond_batch: bool = False) -> bool:
    """Whether the graph dynamo traces has symbolic sizes (with `beyond_batch`, others than the first size of an
    input): evaluated once per trace, at trace time (a loop or a branch on such a size would otherwise pin it
    with a guard: one recompile per new size)."""
    try:
        env = torch._guards.TracingContext.try_get().fake_mode.shape_env
        symbols = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
        if not beyond_batch:
            return bool(symbols)
        from torch._dynamo.source import TensorProperty, TensorPropertySource  # (loaded while compiling)

        def batch(source) -> bool:
            return isinstance(source, TensorPropertySource) and source.prop is TensorProperty.SIZE and source.idx == 0

        # (a symbol with no source, or one that is also another size, counts as an image or grid size)
        return any(not env.var_to_sources.get(symbol) or not all(map(batch, env.var_to_sources[symbol]))
                   for symbol in symbols)
    except (AttributeError, ImportError):  # no tracing context, or other internals: take sizes as symbols
        return True


# What torch.compiler.assume_constant_result sets (dynamo calls the function instead of tracing it), without
# importing dynamo when swinv2 is imported (1.5 s and ~150 MiB of resident memory, measured).
_tracing_symbolic_sizes._dynamo_marked_constant = True


def _submodules_hooked(module: nn.Module) -> bool:
    """Whether forward hooks would see `module`'s submodules called (they must see each call once, whole);
    hooks on `module` itself see its call whole anyway."""
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules() if m is not module)


def _window_groups(count: int, n: int, mask: Tensor, tokens: int) -> Iterator[tuple[slice, Tensor]]:
    """Groups of about `tokens` tokens among `count` windows of `n` tokens, with their rows of the folded
    `mask` `(nW or 1, heads, N, N)`: whole images when one image has fewer tokens, else runs of windows
    inside one image (the mask's window index is the window's index in its image)."""
    per_image = mask.shape[0]
    if per_image == 1 or per_image * n <= tokens:
        step = per_image * max(1, tokens // (per_image * n))
        for start in range(0, count, step):
            yield slice(start, start + step), mask
        return
    runs = math.ceil(per_image / max(1, tokens // n))
    step = math.ceil(per_image / runs)  # runs of equal length: no short run at each image's end
    for image_start in range(0, count, per_image):
        for start in range(0, per_image, step):
            end = min(start + step, per_image)
            yield slice(image_start + start, image_start + end), mask[start:end]


def _ceil_div(size, unit):
    """`ceil(size / unit)` for ints and for symbolic sizes. Written `(size + unit - 1) // unit`, which dynamo's
    and inductor's symbolic algebra divide back exactly; `size + (-size) % unit` nests into guards they take
    minutes over under torch.compile's dynamic shapes."""
    return (size + unit - 1) // unit


def to_whole_patches(pixel_values: Tensor, patch_size: tuple[int, int], drop_partial: bool = False) -> Tensor:
    """`(B, C, H, W)` zero-padded on the right and bottom to whole patches (as transformers pads), or with
    `drop_partial` cropped to them (as a strided patch convolution reads them: timm, torchvision)."""
    ph, pw = patch_size
    height, width = pixel_values.shape[-2:]
    # Symbolic sizes are cropped or padded whether or not that is a no-op: one graph for every size, instead of
    # one per remainder.
    if drop_partial:
        whole_h, whole_w = height // ph * ph, width // pw * pw
        cut = _symbolic(height, width) or (whole_h, whole_w) != (height, width)
        return pixel_values[..., :whole_h, :whole_w] if cut else pixel_values
    pad_h, pad_w = _ceil_div(height, ph) * ph - height, _ceil_div(width, pw) * pw - width
    return F.pad(pixel_values, (0, pad_w, 0, pad_h)) if _symbolic(height, width) or pad_h or pad_w else pixel_values


class PatchEmbeddings(nn.Module):
    """Image -> normalised patch tokens `(B, H/p, W/p, C)`, with SimMIM mask tokens and absolute positions.

    Inputs whose size is not a multiple of the patch are zero-padded on the right and bottom, or with
    `drop_partial_patches` cropped to whole patches.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        patch_size: tuple[int, int],
        num_channels: int,
        embed_dim: int,
        use_mask_token: bool = False,
        use_absolute_embeddings: bool = False,
        dropout: float = 0.0,
        drop_partial_patches: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.drop_partial_patches = drop_partial_patches
        self.num_channels = num_channels
        self.grid_size = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.proj = nn.Conv2d(num_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
            if use_absolute_embeddings
            else None
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixel_values: Tensor, bool_masked_pos: Tensor | None = None) -> Tensor:
        """`(B, C_in, H, W)` -> `(B, ceil(H/p), ceil(W/p), C)` (`floor` where partial patches are dropped);
        `bool_masked_pos` is `(B, num_patches)`."""
        x = self.norm(self._project(to_whole_patches(pixel_values, self.patch_size, self.drop_partial_patches)))
        b, gh, gw, c = x.shape
        # The mask token and the positions keep their own dtype, and the sum takes the wider one, as in
        # transformers: under autocast the embeddings are then fp32, the token and positions unrounded.
        if bool_masked_pos is not None:
            mask = bool_masked_pos.reshape(b, gh, gw, 1).to(self.mask_token.dtype)
            x = x * (1.0 - mask) + self.mask_token.view(1, 1, 1, c) * mask
        if self.position_embeddings is not None:
            x = x + self._positions(gh, gw)
        return self.dropout(x)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid `(rows, columns)` of a `height x width` image."""
        (ph, pw), whole = self.patch_size, self.drop_partial_patches
        return (height // ph, width // pw) if whole else (_ceil_div(height, ph), _ceil_div(width, pw))

    def _project(self, pixel_values: Tensor) -> Tensor:
        """`(B, C_in, H, W)` with H, W multiples of the patch -> `(B, H/p, W/p, C)`.

        The patch convolution as what it is, a Linear layer on flattened non-overlapping patches: 3x faster
        than the convolution on CPU, and the output is channels-last without a permute copy. A replaced or
        hooked `proj` keeps its own forward.
        """
        proj = self.proj
        plain = (
            _is_plain(proj, nn.Conv2d)
            and proj.kernel_size == proj.stride == tuple(self.patch_size)
            and proj.padding == (0, 0)
            and proj.dilation == (1, 1)
            and proj.groups == 1
        )
        if not plain:
            return proj(pixel_values).permute(0, 2, 3, 1)
        b, c, h, w = pixel_values.shape
        ph, pw = self.patch_size
        patches = pixel_values.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, h // ph, w // pw, c * ph * pw)
        return linear(patches, proj.weight.reshape(proj.out_channels, -1), proj.bias)  # (any memory format)

    def _positions(self, gh: int, gw: int) -> Tensor:
        """Absolute position embeddings `(1, gh, gw, C)`, bicubically resized when the grid differs."""
        th, tw = self.grid_size
        pos = self.position_embeddings.view(1, th, tw, -1)
        if (gh, gw) == (th, tw):
            return pos
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1)


def _window_probs(qk_n: Tensor, mask: Tensor) -> Tensor:
    """`softmax(q k^T + mask)` `(B*nW*heads, N, N)` from the normalised, scaled `(2, B*nW, heads, N, D)`, in
    fp32 at least (scratch slots 0 and 1 of that dtype). Half-precision scores are widened, and the mask with
    them, before it is added, as transformers adds its bias to fp32 scores: the bias and the probabilities keep fp32's
    precision, and so do their gradients (summed over every window, half-precision ones were up to 3.4x further
    from fp32 than transformers' bf16 gradients)."""
    _, b_, heads, n, d = qk_n.shape
    windows = mask.shape[0]
    mask = mask.to(torch.promote_types(qk_n.dtype, torch.float32))
    q, k = qk_n.view(2, b_ * heads, n, d).unbind(0)
    scores = torch.bmm(q, k.transpose(1, 2), out=_scratch(0, (b_ * heads, n, n), q))
    if scores.dtype != mask.dtype:
        scores = _scratch(0, scores.shape, mask).copy_(scores)
    scores.view(b_ // windows, windows, heads, n, n).add_(mask)
    return torch.ops.aten._softmax.out(scores, -1, False, out=_scratch(1, scores.shape, scores))


def _in_dtype(t: Tensor, dtype: torch.dtype, slot: int) -> Tensor:
    """`t` itself, or a copy in `dtype` in scratch slot `slot`."""
    return t if t.dtype == dtype else _scratch(slot, t.shape, t.new_empty((), dtype=dtype)).copy_(t)


def _normalized_qk(qkv: Tensor, norm: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """q and k of `qkv` `(B*nW, N, 3, heads, D)` divided by their `norm` `(2, B*nW, heads, N, 1)` (q times its
    head's logit `scale`), into scratch slot 8 as `(2, B*nW, heads, N, D)`: q and k are bmm-ready views of it;
    and the scales `(2, 1, heads, 1, 1)`."""
    b_, n, _, heads, d = qkv.shape
    scales = torch.stack((scale.to(norm.dtype), torch.ones_like(scale, dtype=norm.dtype))).view(2, 1, heads, 1, 1)
    qk_n = _scratch(8, (2, b_, heads, n, d), qkv)
    torch.mul(qkv[:, :, :2].permute(2, 0, 3, 1, 4), scales / norm, out=qk_n)
    return qk_n, scales


def _heads_major_v(qkv: Tensor, slot: int) -> Tensor:
    """v of `qkv` `(B*nW, N, 3, heads, D)` as `(B*nW*heads, N, D)`, bmm-ready, in scratch slot `slot`."""
    b_, n, _, heads, d = qkv.shape
    v = _scratch(slot, (b_, heads, n, d), qkv)
    v.copy_(qkv[:, :, 2].transpose(1, 2))
    return v.view(b_ * heads, n, d)


def _cosine_attention(qkv: Tensor, mask: Tensor, scale: Tensor, heads: int, inference: bool) -> tuple[Tensor, Tensor]:
    """`softmax(cos(q, k) * scale + mask) v`: `qkv` `(B*nW, N, 3C)`, `mask` `(nW or 1, heads, N, N)` (added in
    fp32 at least: `_window_probs`), `scale` `(heads,)` -> `(B*nW, N, C)`, and the norms of q and k
    `(2, B*nW, heads, N, 1)` (for the backward). Every temporary lives in scratch slots (0-3, 8); in
    `inference` the output too (slot 9: valid until the next call), else it is a fresh tensor."""
    b_, n, three_c = qkv.shape
    c = three_c // 3
    d = c // heads
    acc = torch.promote_types(qkv.dtype, torch.float32)
    qkv = qkv.view(b_, n, 3, heads, d)
    qk = qkv[:, :, :2]
    # Normalised in fp32 (padded tokens have k = 0: 0 / eps stays 0), q times its head's logit scale. The
    # norms reduced in qkv's own layout (4x faster than through the permuted view), then permuted.
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=None if qk.dtype == acc else acc)
    norm = norm.clamp_min_(kernels.NORM_EPS).permute(2, 0, 3, 1, 4)  # (2, B*nW, heads, N, 1)
    qk_n, _ = _normalized_qk(qkv, norm, scale)
    probs = _window_probs(qk_n, mask)  # (scratch slots 0 and 1)
    v = _heads_major_v(qkv, 3)
    heads_out = torch.bmm(_in_dtype(probs, v.dtype, 1), v, out=_scratch(2, v.shape, v)).view(b_, heads, n, d)
    out = _scratch(9, (b_, n, c), qkv) if inference else qkv.new_empty(b_, n, c)  # never a view of slot 2
    out.view(b_, n, heads, d).copy_(heads_out.transpose(1, 2))
    return out, norm


class _CosineWindowAttention(torch.autograd.Function):
    """`kernels.window_attention`'s math for autograd on CPU, with a hand-written backward.

    Autograd's version of the step-by-step code keeps 8 `(B*nW, N, C)`-sized tensors per block (qkv, copies
    of q, k and v, the probabilities, which are 2C wide) and spends ~10% of a CPU training step on the
    normalisation's broadcasts and on concatenating q, k and v's gradients. This one keeps qkv (3C) and the
    norms, computes the normalised q and k, v's head-major copy and the probabilities again in the backward
    (a few percent of a step, for 10% of its activation memory), and writes the three gradients straight
    into one qkv-shaped buffer. Its temporaries live in `_scratch` buffers. Second-order gradients
    (`create_graph=True`) differentiate `kernels.window_attention_math` on the saved qkv.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, mask: Tensor, scale: Tensor, heads: int) -> Tensor:
        out, norm = _cosine_attention(qkv, mask, scale, heads, inference=False)
        ctx.save_for_backward(qkv, norm, scale, mask)
        ctx.heads = heads
        return out

    @staticmethod
    @_autocast_off
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        qkv, norm, scale, mask = ctx.saved_tensors
        heads = ctx.heads
        if torch.is_grad_enabled():

            def attention(qkv: Tensor, mask: Tensor, scale: Tensor) -> Tensor:
                return kernels.window_attention_math(qkv, mask, scale, heads)

            return (*_second_order(attention, (qkv, mask, scale), ctx.needs_input_grad[:3], grad_out), None)
        b_, n, three_c = qkv.shape
        d = three_c // (3 * heads)
        qkv5 = qkv.view(b_, n, 3, heads, d)
        qk_n, scales = _normalized_qk(qkv5, norm, scale)  # (scratch slot 8)
        v = _heads_major_v(qkv5, 9)
        acc = norm.dtype
        # recomputed: one more small bmm instead of keeping (heads, N, N) per window
        probs = _window_probs(qk_n, mask)
        windows = mask.shape[0]
        needs_qkv, needs_mask, needs_scale = ctx.needs_input_grad[:3]
        # Temporaries in scratch slots: 0 scores, grad_probs, grad_qk; 1 probs, grad_qk * qk_n; 2 grad_v,
        # grad_scores; 3 grad_out; 8 qk_n; 9 v. For half-precision qkv the probabilities and the scores'
        # gradient are fp32 (slots 0-2 in both dtypes), as transformers' are.
        grad_out = _scratch(3, v.shape, v).view(b_, heads, n, d).copy_(grad_out.view(b_, n, heads, d).transpose(1, 2))
        grad_out = grad_out.view(b_ * heads, n, d)
        grad_qkv = grad_mask = grad_scale = None
        if needs_qkv:  # out = P v
            grad_qkv = qk_n.new_empty(b_, n, 3, heads, d)
            grad_v = torch.bmm(_in_dtype(probs, v.dtype, 1).transpose(1, 2), grad_out, out=_scratch(2, v.shape, v))
            grad_qkv[:, :, 2] = grad_v.view(b_, heads, n, d).transpose(1, 2)
        grad_probs = torch.bmm(grad_out, v.transpose(1, 2), out=_scratch(0, probs.shape, v))
        del grad_out
        grad_scores = torch.ops.aten._softmax_backward_data.out(
            _in_dtype(grad_probs, probs.dtype, 0), probs, -1, probs.dtype, grad_input=_scratch(2, probs.shape, probs)
        )
        del grad_probs
        if needs_mask:  # the folded mask is shared by the same window of every image
            grad_mask = grad_scores.view(b_ // windows, windows, heads, n, n).sum(0)
        if not (needs_qkv or needs_scale):
            return None, grad_mask, None, None
        # scores = q k^T
        q, k = qk_n.view(2, b_ * heads, n, d).unbind(0)
        grad_scores = _in_dtype(grad_scores, qk_n.dtype, 2)
        grad_qk = _scratch(0, qk_n.shape, qk_n)
        torch.bmm(grad_scores, k, out=grad_qk[0].view(b_ * heads, n, d))
        torch.bmm(grad_scores.transpose(1, 2), q, out=grad_qk[1].view(b_ * heads, n, d))
        del grad_scores
        # y = s x / |x|: dL/dx = (s / |x|) (g - y (y.g) / s^2), dL/ds = sum(y.g) / s. A vector shorter than eps
        # (only padded tokens' keys, which are 0) gets no gradient: autograd's 1 / eps = 1e12 overflows fp16
        # to inf, and inf times the padded token's zero input is NaN in the weight gradient it otherwise
        # does not reach.
        dot = torch.mul(grad_qk, qk_n, out=_scratch(1, qk_n.shape, qk_n)).sum(-1, keepdim=True, dtype=acc)
        if needs_scale:
            grad_scale = (dot[0].sum((0, 2, 3)) / scales.view(2, heads)[0]).to(scale.dtype)
        if not needs_qkv:
            return None, grad_mask, grad_scale, None
        factor = torch.where(norm > kernels.NORM_EPS, scales / norm, 0.0)
        correction = factor * dot / scales.square()
        grad_qk.mul_(factor)
        torch.addcmul(grad_qk, qk_n, correction.to(qk_n.dtype), value=-1, out=grad_qkv[:, :, :2].permute(2, 0, 3, 1, 4))
        return grad_qkv.view(b_, n, 3 * heads * d), grad_mask, grad_scale, None


class WindowAttention(nn.Module):
    """Scaled cosine self-attention inside windows, with the continuous position bias.

    `softmax(cos(q, k) * exp(min(logit_scale, log 100)) + 16 * sigmoid(cpb_mlp(T))[index] + M) v`
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | tuple[int, int],
        pretrained_window: int = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window = sides(window)  # (height, width)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        # The key has no bias: a bias on k adds the same score to every key of a query, a no-op under softmax.
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pretrained_window = pretrained_window
        self.register_buffer("relative_coords_table", relative_coords_table(window, pretrained_window), False)
        self.register_buffer("relative_position_index", relative_position_index(window), False)
        self._constants: tuple[tuple, tuple[Tensor | None, Tensor]] | None = None

    # The two buffers are functions of the window sizes, in no checkpoint. A model built on the meta device
    # gets real ones where its weights land: `to_empty` (whose buffers hold garbage) or
    # `load_state_dict(assign=True)` (which leaves non-persistent buffers on the meta device).
    def _derive_buffers(self, like: Tensor) -> None:
        """The coordinate table and index computed again on `like`'s device (the table in `like`'s dtype if
        it is a float: what `.to(dtype)` of the fp32 table gives)."""
        # (ordinary tensors even when `.to()` is called in inference mode: training may follow)
        with torch.no_grad(), torch.inference_mode(False), torch.device(like.device):
            table = relative_coords_table(self.window, self.pretrained_window)
            index = relative_position_index(self.window)
        dtype = self.relative_coords_table.dtype if self.relative_coords_table.is_floating_point() else table.dtype
        self._buffers["relative_coords_table"] = table.to(dtype)
        self._buffers["relative_position_index"] = index.to(self.relative_position_index.dtype)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if not self.relative_coords_table.is_meta:
            self._derive_buffers(self.relative_coords_table)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.relative_coords_table.is_meta and not self.logit_scale.is_meta:
            self._derive_buffers(self.logit_scale)

    def qkv_bias(self) -> Tensor | None:
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def position_bias(self) -> Tensor:
        """`16 * sigmoid(cpb_mlp(T))` gathered for every pair of tokens: `(heads, N, N)`."""
        weight = self.cpb_mlp[0].weight  # (a dynamically quantised Linear's is a method, and takes fp32)
        dtype = weight.dtype if isinstance(weight, Tensor) else torch.float32
        table = self.cpb_mlp(self.relative_coords_table.to(dtype))
        n = self.window[0] * self.window[1]
        bias = table.view(-1, self.num_heads)[self.relative_position_index.view(-1)].view(n, n, self.num_heads)
        return 16.0 * torch.sigmoid(bias.permute(2, 0, 1))

    def logit_scale_exp(self) -> Tensor:
        return torch.clamp(self.logit_scale, max=math.log(100.0)).exp()

    def _replicate_for_data_parallel(self) -> WindowAttention:
        replica = super()._replicate_for_data_parallel()  # see Swinv2Block's
        replica._constants = None
        return replica

    def bias_and_scale(self) -> tuple[Tensor | None, Tensor]:
        """The fused qkv bias `(3C,)` and the logit scale `(heads,)`. Outside autograd they are computed once
        and kept while their parameters are unchanged (version counters): four fewer kernel launches per
        block, which is what batch-1 latency on a GPU is made of."""
        key = _versions(self.q_bias, self.v_bias, self.logit_scale) if _caches_ok() else None
        if key is None:
            return self.qkv_bias(), self.logit_scale_exp().view(-1)
        constants = self._constants  # (read once: another thread may replace it meanwhile)
        if constants is None or constants[0] != key:
            constants = self._constants = (key, (self.qkv_bias(), self.logit_scale_exp().view(-1)))
        return constants[1]

    def project_qkv(self, x: Tensor, qkv_bias: Tensor | None) -> Tensor:
        """The fused projection `(..., 3C)` with the q and v biases (no k bias). A replaced or wrapped `qkv`
        layer (LoRA, quantised, hooked) runs its own forward, then the biases are added."""
        if _is_plain_linear(self.qkv) and self.qkv.bias is None:
            return linear(x, self.qkv.weight, qkv_bias)
        qkv = self.qkv(x)
        return qkv if qkv_bias is None else qkv + qkv_bias

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        qkv = self.project_qkv(x, self.qkv_bias())
        q, k, v = qkv.view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # Normalise in fp32: padded tokens have k = 0, and 0 / max(0, eps) must not become 0/0 in fp16.
        acc = torch.promote_types(v.dtype, torch.float32)
        q = kernels.normalize(q.to(acc)) * self.logit_scale_exp().to(acc)
        k = kernels.normalize(k.to(acc))
        return q.to(v.dtype), k.to(v.dtype), v

    def forward(
        self, x: Tensor, mask: Tensor, head_mask: Tensor | None = None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """`x`: `(B * nW, N, C)`; `mask`: `(nW or 1, heads, N, N)`, bias and shift mask folded -> the output
        `(B * nW, N, C)`, and the attention probabilities `(B * nW, heads, N, N)` when asked for (the exact
        path, `forward_explicit`, which also applies `head_mask`), else None (the fast path). Both paths run
        as this module's call, so its hooks see every call."""
        if output_attentions or head_mask is not None:
            return self.forward_explicit(x, mask, head_mask)
        return self._forward_fast(x, mask), None

    def _forward_fast(self, x: Tensor, mask: Tensor) -> Tensor:
        b_, n, c = x.shape
        heads = self.num_heads
        dropout = self.attn_drop if self.training else 0.0
        qkv_bias, logit_scale = self.bias_and_scale()
        qkv = self.project_qkv(x, qkv_bias)
        if self._use_kernel(x, dropout):
            out = kernels.window_attention(qkv, mask.to(qkv.dtype), logit_scale, heads)
            return self.proj_drop(apply_linear(self.proj, out))
        if dropout == 0.0 and _hand_written_backward_ok(x):
            out = _CosineWindowAttention.apply(qkv, mask, logit_scale, heads)
            return self.proj_drop(apply_linear(self.proj, out))
        qkv = qkv.view(b_, n, 3, heads, -1)
        # q and k normalised in one pass, in fp32 (padded tokens have k = 0: 0 / eps stays 0, never 0/0 in
        # fp16), and the logit scale multiplied into q's reciprocal norm instead of into the scores.
        acc = torch.promote_types(qkv.dtype, torch.float32)
        # split, not slices: the backward of a slice zero-fills a tensor of qkv's size for each slice
        qk, v = qkv.split((2, 1), dim=2)
        scale = torch.cat((logit_scale.view(1, heads), logit_scale.new_ones(1, heads)))
        qk = kernels.normalize(qk.to(acc), scale.to(acc).view(2, heads, 1)).to(qkv.dtype)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
        v = v.squeeze(2).transpose(1, 2)
        windows = mask.shape[0]
        mask = mask.to(q.dtype)
        # (not when traced: TorchScript's trace check runs the model again without grad, and wants one graph)
        training = torch.is_grad_enabled() and (qkv.requires_grad or mask.requires_grad) and not torch.jit.is_tracing()
        fp32_inference = not training and dropout == 0.0 and q.dtype == torch.float32 and _eager_or_compiled()
        # torch.func transforms and forward-mode AD: SDPA's kernels lack forward-mode AD and batching rules
        transformed = _differentiated_forward()
        if transformed or (x.device.type == "cpu" and (training or fp32_inference)):
            # Batched matmuls and a softmax, the (windows, heads, N, N) mask broadcast over the images.
            # Training: SDPA has no fused kernel with a mask that needs a gradient and falls back to its math
            # path, which needs the mask expanded to every window and adds a NaN-safe softmax (this is ~25%
            # faster forward and backward). fp32 inference: 2x faster than SDPA's flash kernel on 64-token
            # windows (stage 1, 32 windows: 0.7 against 1.9 ms on a 2-core Zen 3), which also needs the mask
            # copied to every window; compiled, inductor fuses the mask add into the softmax (SDPA's kernel
            # was 15% of a compiled b8 forward, the matmuls and softmax 10%). SDPA stays for half-precision
            # inference, where it keeps the scores in fp32 until the mask is added, and for export.
            scores = q @ k.transpose(-2, -1)
            scores.view(b_ // windows, windows, heads, n, n).add_(mask)  # (the matmul's backward needs q, k)
            probs = scores.softmax(dim=-1)
            if dropout > 0:
                probs = F.dropout(probs, dropout, True)
            out = probs @ v
        else:
            if windows > 1:
                mask = mask.unsqueeze(0).expand(b_ // windows, -1, -1, -1, -1).reshape(b_, heads, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        out = out.transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(apply_linear(self.proj, out))

    def _use_kernel(self, x: Tensor, dropout: float) -> bool:
        """The Triton kernel (forward and backward) on CUDA, or on CPU under the Triton interpreter in tests;
        not with attention dropout."""
        return kernels.TRITON_FOUND and (x.is_cuda or kernels.INTERPRET_ON_CPU) and dropout == 0.0

    def forward_rows(self, x: Tensor, mask: Tensor) -> Tensor:
        """`forward` for a group of CPU inference windows `x` `(B*nW, N, C)` -> `(B*nW*N, C)`. In fp32 the
        projections' outputs and the attention's temporaries are scratch buffers (slots 0-3 and 7-10): a fresh
        tensor is page-faulted in and zero-filled by the kernel, and glibc hands such buffers back to it when
        the top of its heap is free, so a batch-1 forward faulted ~10k pages (~13% of its time on a 2-core Zen
        3). The output is valid until the next call."""
        b_, n, c = x.shape
        if x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or (
            self.training and (self.attn_drop > 0 or self.proj_drop.p > 0)
        ):
            return self(x, mask)[0].view(-1, c)
        qkv_bias, scale = self.bias_and_scale()
        rows = x.view(-1, c)
        if _is_plain_linear(self.qkv) and self.qkv.bias is None and _scratch_gemm_ok(rows, self.qkv.weight):
            qkv = _scratch_linear(rows, self.qkv.weight, qkv_bias, 7)
        else:
            qkv = self.project_qkv(rows, qkv_bias)
        out, _ = _cosine_attention(qkv.view(b_, n, 3 * c), mask, scale, self.num_heads, inference=True)
        return _linear_rows(self.proj, out.view(-1, c), 10)

    def forward_explicit(
        self, x: Tensor, mask: Tensor, head_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact path, step by step as the reference code; returns the output and the attention probabilities."""
        b_, n, c = x.shape
        q, k, v = self._project(x)
        acc = torch.promote_types(v.dtype, torch.float32)
        scores = (q @ k.transpose(-2, -1)).to(acc)
        windows = mask.shape[0]
        scores = (scores.view(b_ // windows, windows, self.num_heads, n, n) + mask.to(acc)).view(
            b_, self.num_heads, n, n
        )
        probs = scores.softmax(dim=-1)
        probs = F.dropout(probs, self.attn_drop, self.training)
        if head_mask is not None:
            if head_mask.dim() == 1:  # (heads,)
                head_mask = head_mask.view(-1, 1, 1)
            elif any(size not in (1, full) for size, full in zip(head_mask.shape, (self.num_heads, n, n))):
                raise ValueError(
                    f"a block's head_mask of shape {tuple(head_mask.shape)} does not broadcast over its attention "
                    f"probabilities ({self.num_heads} heads, {n}x{n} window tokens); give ({self.num_heads},) or "
                    f"({self.num_heads} or 1, {n} or 1, {n} or 1)"
                )
            probs = probs * head_mask.to(probs.dtype)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b_, n, c)
        # returned in the dtype transformers' scores have: the GEMM's, widened by the fp32 logit scale and
        # bias under autocast (a half-precision model's probabilities are half precision)
        return self.proj_drop(self.proj(out)), probs.to(torch.promote_types(v.dtype, self.logit_scale.dtype))


class _GeluMlp(torch.autograd.Function):
    """`fc2(gelu(fc1(x)))` for autograd on CPU, keeping the hidden layer before GELU only and computing
    GELU again in the backward: the MLP's saved activations are half its share of a training step's memory,
    GELU a few percent of its time. The forward's Linear layers take `linear`'s CPU route (oneDNN or MKL)."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, approximate: str):
        hidden = linear(x, w1, b1)
        act = torch.ops.aten.gelu.out(hidden, approximate=approximate, out=_scratch(0, hidden.shape, hidden))
        out = linear(act, w2, b2)
        ctx.save_for_backward(x, w1, b1, w2, b2, hidden)
        ctx.approximate = approximate
        return out

    @staticmethod
    @_autocast_off
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, w1, b1, w2, b2, hidden = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():

            def mlp(x, w1, b1, w2, b2):
                return F.linear(F.gelu(F.linear(x, w1, b1), approximate=ctx.approximate), w2, b2)

            return (*_second_order(mlp, (x, w1, b1, w2, b2), needs[:5], grad_out), None)
        grad_out = grad_out.reshape(-1, w2.shape[0])
        hidden = hidden.view(-1, w1.shape[0])
        grad_w2 = grad_b2 = grad_w1 = grad_b1 = grad_x = None
        if needs[3]:
            act = torch.ops.aten.gelu.out(hidden, approximate=ctx.approximate, out=_scratch(0, hidden.shape, hidden))
            grad_w2 = grad_out.t() @ act
        if needs[4]:
            grad_b2 = grad_out.sum(0)
        if any(needs[:3]):
            grad_hidden = _input_grad(grad_out, w2, out=_scratch(1, hidden.shape, hidden))
            torch.ops.aten.gelu_backward.grad_input(
                grad_hidden, hidden, approximate=ctx.approximate, grad_input=grad_hidden
            )
            if needs[1]:
                grad_w1 = grad_hidden.t() @ x.reshape(-1, w1.shape[1])
            if needs[2]:
                grad_b1 = grad_hidden.sum(0)
            if needs[0]:
                grad_x = _input_grad(grad_hidden, w1).view(x.shape)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        gelu = _is_plain(self.act, nn.GELU)  # (a hooked activation is called as itself)
        plain = gelu and _is_plain_linear(self.fc1) and _is_plain_linear(self.fc2)
        if plain and _hand_written_backward_ok(x) and _big_enough(x, self.fc1.weight):
            fc1, fc2 = self.fc1, self.fc2
            tensors = _autocast_inputs(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
            with torch.autocast("cpu", enabled=False):
                return self.drop(_GeluMlp.apply(*tensors, self.act.approximate))
        x = apply_linear(self.fc1, x, gelu=self.act.approximate) if gelu else self.act(apply_linear(self.fc1, x))
        return self.drop(apply_linear(self.fc2, x))

    def forward_rows(self, x: Tensor) -> Tensor:
        """`forward` for the rows `(M, C)` of a CPU inference group, the hidden layer and the output in scratch
        slots 7 and 8 where the layers allow (`WindowAttention.forward_rows`): valid until the next call."""
        if not _is_plain(self.act, nn.GELU) or (self.training and self.drop.p > 0):
            return self(x)
        return _linear_rows(self.fc2, _linear_rows(self.fc1, x, 7, gelu=self.act.approximate), 8)


class Swinv2Block(nn.Module):
    """(Shifted-)window attention and an MLP, each in a residual branch with post-normalisation."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | tuple[int, int],
        shift: int | tuple[int, int],
        pretrained_window: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-5,
        shift_mask_value: float = MASK_VALUE,
        shift_first: bool = False,
        shift_per_input: bool = False,
    ) -> None:
        super().__init__()
        self.window = sides(window)  # (height, width), as the shift
        self.shift = sides(shift)
        self.shift_mask_value = shift_mask_value
        self.shift_first = shift_first  # rolled before padded to whole windows, as in timm (`window_layout`)
        # torchvision's: the shift applies along the sides where the grid of each input spans more than one
        # window, instead of being fixed at the config's image size (`shift_for`)
        self.shift_per_input = shift_per_input
        self.attn = WindowAttention(dim, num_heads, window, pretrained_window, qkv_bias, attn_drop, attn_drop)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), hidden_act, drop)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self._mask_cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self._layout_cache: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()

    def shift_for(self, height: int, width: int) -> tuple[int, int]:
        """The shift `(down, right)` on a `(height, width)` grid (whole windows or not): `shift`, or with
        `shift_per_input` its sides along which one window covers the grid set to 0."""
        if not self.shift_per_input:
            return self.shift
        return tuple(s if side > win else 0 for side, win, s in zip((height, width), self.window, self.shift))

    def attention_mask(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Position bias plus shifted-window mask for a padded grid: `(nW or 1, heads, N, N)`.

        It depends on the weights and the geometry only, so outside autograd it is computed once per
        (size, dtype, device) and kept until the position-bias weights change (their version counters).
        """
        return self._folded_masks(height, width, dtype, device, regions=False)[0]

    def region_masks(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
        """`attention_mask` for the two regions of `regions`, kept the same way. Where the block splits its
        windows (`splits_regions`): the position bias alone `(1, heads, N, N)` for the windows the shift left
        whole, bias plus shift mask `(n_border, heads, N, N)` for the border windows. Else the folded mask of
        every window, and an empty one."""
        return self._folded_masks(height, width, dtype, device, regions=True)

    def splits_regions(self, height: int, width: int) -> bool:
        """Whether CPU inference splits a padded grid's windows into `window_regions`: a shifted block whose
        folded mask would take more than REGION_MASK_BYTES in fp32."""
        (wh, ww), heads = self.window, self.attn.num_heads
        windows = (height // wh) * (width // ww)
        return any(self.shift_for(height, width)) and windows * heads * (wh * ww) ** 2 * 4 > REGION_MASK_BYTES

    def _folded_masks(
        self, height: int, width: int, dtype: torch.dtype, device: torch.device, regions: bool
    ) -> tuple[Tensor, ...]:
        attn = self.attn
        tables = (attn.relative_coords_table, attn.relative_position_index)
        cacheable = _caches_ok() and not any(_hooked(m) for m in attn.cpb_mlp.modules())
        versions = _versions(*attn.cpb_mlp.parameters(), *tables) if cacheable else None
        cacheable = versions is not None
        split = regions and self.splits_regions(height, width)
        if cacheable:  # (split: REGION_MASK_BYTES may change between calls)
            key = (regions, split, height, width, dtype, device, *versions)
            cached = _recall(self._mask_cache, key)
            if cached is not None:
                return cached
        bias = self.attn.position_bias().unsqueeze(0)  # (1, heads, N, N), in the weights' dtype
        shift = self.shift_for(height, width)
        if not any(shift):
            folded = bias.to(dtype)
        else:  # (0, -100 and -200 are exact in every float dtype: the shift mask is made in `dtype` itself)
            shift_mask = shifted_window_mask(
                height, width, self.window, shift, device, dtype, self.shift_mask_value
            ).unsqueeze(1)
            if split:
                shift_mask = shift_mask[window_regions(height, width, self.window, shift)[1].to(device)]
            if cacheable:  # summed at the bias's precision, written once in `dtype`: no fp32 (nW, heads, N, N)
                folded = bias.new_empty((shift_mask.shape[0], *bias.shape[1:]), dtype=dtype)
                torch.add(bias, shift_mask, out=folded)
            else:  # (autograd and torch.compile take no out= tensor)
                folded = (bias + shift_mask).to(dtype)
        masks = (folded,)
        if regions:  # the whole windows' and the border windows' masks, or every window's and none
            masks = (bias.to(dtype), folded) if split else (folded, folded[:0])
        if cacheable:
            _remember(self._mask_cache, key, masks)
        return masks

    def layout_rows(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """`window_layout` of this block's window and shift for a `(height, width)` grid, on `device`: built
        once per grid size."""
        return self._layout(False, height, width, device)

    def regions(self, height: int, width: int, device: torch.device) -> RegionLayout:
        """`region_layout` of this block's window and shift for a `(height, width)` grid, on `device`, split
        as `splits_regions` says: built once per grid size."""
        return self._layout(True, height, width, device)

    def _layout(self, regions: bool, height: int, width: int, device: torch.device):
        split = regions and self.splits_regions(*self._padded(height, width))
        key = (regions, split, height, width, device)
        layout = _recall(self._layout_cache, key)
        if layout is None:
            shift = self.shift_for(height, width)
            if regions:
                layout = region_layout(height, width, self.window, shift, split, self.shift_first)
            else:
                layout = window_layout(height, width, self.window, shift, self.shift_first)
            layout = _on_device(layout, device)
            _remember(self._layout_cache, key, layout)
        return layout

    def clear_cache(self) -> None:
        self._mask_cache.clear()
        self._layout_cache.clear()
        self.attn._constants = None

    def _replicate_for_data_parallel(self) -> Swinv2Block:
        # nn.DataParallel's replicas copy this module's attributes, caches included, but get new parameter
        # tensors every forward (often at the same addresses, version 0): a shared cache could hand them the
        # masks of older weights. Each replica starts with caches of its own.
        replica = super()._replicate_for_data_parallel()
        replica._mask_cache, replica._layout_cache = OrderedDict(), OrderedDict()
        return replica

    def train(self, mode: bool = True) -> Swinv2Block:
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self.clear_cache()
        return super()._apply(fn, recurse)

    def forward(
        self, x: Tensor, head_mask: Tensor | None = None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """`x`: `(B, H, W, C)` -> `(B, H, W, C)`, and the attention probabilities when asked for."""
        h, w = x.shape[1:3]
        dtype = low = None
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            low = dtype if x.dtype == torch.float32 and dtype != x.dtype else None
        exact = output_attentions or head_mask is not None
        # the row indices of the Triton gathers, or None for the ATen moves
        layout = self.layout_rows(h, w, x.device) if not exact and self._gathers_layout(x) else None
        if layout is not None and self._fuses_norms():
            return self._forward_fused(x, layout, dtype, low), None
        if layout is None and not exact and self._runs_in_groups(x):
            return self._forward_grouped(x, dtype, low), None
        if layout is None and not exact and self._compiles_in_groups(x):
            return self._forward_compiled_groups(x, dtype, low), None
        windows, mask = self._windows_and_mask(x, dtype, low, layout)
        probs = None
        windows, probs = self.attn(windows, mask, head_mask, output_attentions)
        y = self._from_windows(windows, h, w, layout)
        x = x + self.drop_path(self.norm1(y))
        x = x + self.drop_path(self.norm2(self.mlp(x)))
        return x, probs

    def _forward_grouped(self, x: Tensor, dtype: torch.dtype | None, low: torch.dtype | None) -> Tensor:
        """`forward` for CPU inference: attention on groups of windows and the MLP on groups of tokens,
        `CPU_GROUP_TOKENS_PER_THREAD` per thread at a time, so that qkv, the attention's temporaries and
        the MLP's hidden layer exist for one group at a time and stay in the caches. The shifted windows
        are gathered into a scratch buffer (pad, roll and partition in one copy) region by region
        (`window_regions`: the windows the shift left whole share one mask, the border windows have their
        own), each group's attention output is normalised in place (LayerNorm is per token, so it commutes
        with the layout), and one gather takes the windows back; only the block's output is a fresh tensor."""
        b, h, w, c = x.shape
        hp, wp = self._padded(h, w)
        n = self.window[0] * self.window[1]
        tokens = CPU_GROUP_TOKENS_PER_THREAD * torch.get_num_threads()
        layout = self.regions(h, w, x.device)
        masks = self.region_masks(hp, wp, dtype or (x.dtype if low is None else low), x.device)
        source = (x if low is None else x.to(low)).reshape(b, h * w, c)
        windows = _scratch(4, (b * hp * wp // n, n, c), source)  # region after region, each image-major
        attended = None  # the normalised outputs: in `windows` itself unless the norm changes the dtype
        start = 0
        for count, to_windows, mask in zip(layout.counts, layout.to_windows, masks):
            if count == 0:
                continue
            region = windows[start : start + b * count]
            # the region's rows of each image; padding reads row 0, zeroed below
            torch.index_select(source, 1, to_windows.clamp(min=0), out=region.view(b, count * n, c))
            if (hp, wp) != (h, w):
                region.view(b, count * n, c)[:, to_windows < 0] = 0
            for group, group_mask in _window_groups(region.shape[0], n, mask, tokens):
                y = self.attn.forward_rows(region[group], group_mask)
                into = attended is None or attended is windows  # (the norm keeps the dtype: same for every group)
                if into and _layer_norm_into(self.norm1, y, region[group].view(-1, c)):
                    attended = windows
                    continue
                y = self.norm1(y)
                if attended is None:
                    attended = windows if y.dtype == windows.dtype else _scratch(5, windows.shape, y)
                attended[start : start + b * count][group] = y.view(-1, n, c)
            start += b * count
        y = _scratch(6, (b * h * w, c), attended)
        torch.index_select(attended.view(-1, c), 0, layout.from_windows(b), out=y)
        y = y.view(b, h, w, c)
        y = y.add_(x) if y.dtype == x.dtype else x + y  # x + norm1(attention)
        out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        rows_in, rows_out = y.view(-1, c), out.view(-1, c)
        for start in range(0, rows_in.shape[0], tokens):
            group = slice(start, start + tokens)
            y = self.mlp.forward_rows(rows_in[group])
            if _layer_norm_into(self.norm2, y, rows_out[group]):
                rows_out[group].add_(rows_in[group])
            else:
                torch.add(rows_in[group], self.norm2(y), out=rows_out[group])
        return out

    def _forward_compiled_groups(self, x: Tensor, dtype: torch.dtype | None, low: torch.dtype | None) -> Tensor:
        """`forward` for CPU inference under torch.compile: the attention on groups of windows and the MLP on
        groups of tokens, about `COMPILED_GROUP_BYTES` of MLP hidden layer each, concatenated."""
        b, h, w, c = x.shape
        tokens = self._compiled_group_tokens(x)
        windows, mask = self._windows_and_mask(x, dtype, low, None)
        groups = _window_groups(windows.shape[0], windows.shape[1], mask, tokens)
        y = torch.cat([self.attn(windows[group], group_mask)[0] for group, group_mask in groups])
        x = x + self.norm1(self._from_windows(y, h, w, None))
        rows = x.reshape(-1, c)
        return torch.cat([r + self.norm2(self.mlp(r)) for r in rows.split(tokens)]).view(b, h, w, c)

    def _compiles_in_groups(self, x: Tensor) -> bool:
        """Whether `forward` takes `_forward_compiled_groups`: CPU inference without stochastic depth under
        torch.compile (not export, whose graphs other runtimes read), in a graph without symbolic sizes (once
        dynamic shapes set in, one graph serves every size)."""
        return (
            x.device.type == "cpu"
            and self._inference_without_drop_path()
            and torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
            and not _tracing_symbolic_sizes()
            and not _submodules_hooked(self)
            and x.shape[0] * x.shape[1] * x.shape[2] > self._compiled_group_tokens(x)
        )

    @staticmethod
    def _compiled_group_tokens(x: Tensor) -> int:
        """Tokens per group of `_forward_compiled_groups`: `COMPILED_GROUP_BYTES` of a 4C-wide hidden layer."""
        return max(1, COMPILED_GROUP_BYTES // (4 * x.shape[-1] * x.element_size()))

    def _windows_and_mask(
        self, x: Tensor, dtype: torch.dtype | None, low: torch.dtype | None, layout: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """The shifted windows `(B * nW, N, C)` and their folded mask `(nW or 1, heads, N, N)`."""
        windows = self._to_windows(x, low, layout)
        return windows, self.attention_mask(*self._padded(*x.shape[1:3]), dtype or windows.dtype, x.device)

    def _padded(self, h: int, w: int) -> tuple[int, int]:
        """The grid padded up to whole windows."""
        return _ceil_div(h, self.window[0]) * self.window[0], _ceil_div(w, self.window[1]) * self.window[1]

    def _to_windows(self, x: Tensor, low: torch.dtype | None, layout: tuple[Tensor, Tensor] | None) -> Tensor:
        """`(B, H, W, C)` -> the shifted windows `(B * nW, N, C)`: pad, roll by -shift (or roll, then pad:
        `shift_first`), partition (with `layout`, `layout_rows`' indices, one gather)."""
        b, h, w, c = x.shape
        n = self.window[0] * self.window[1]
        if layout is not None:
            to_windows, from_windows = layout
            return kernels.gather_rows(x.reshape(b, h * w, c), to_windows, low, from_windows).view(-1, n, c)
        # The qkv projection casts its input to autocast's dtype anyway: cast before the shift and the
        # partition, which then move half the bytes.
        y = x.to(low) if low is not None else x
        if _symbolic(h, w):
            rows = self._symbolic_rows(h, w, x.device, to_windows=True)
            padded = torch.cat((y.reshape(b, h * w, c), y.new_zeros(b, 1, c)), dim=1)  # row h * w: padding
            return padded[:, rows].view(-1, n, c)
        hp, wp = self._padded(h, w)
        back = tuple(-s for s in self.shift_for(h, w))
        return window_partition(_shifted(y, back, self.shift_first, (0, 0, 0, wp - w, 0, hp - h)), self.window)

    def _from_windows(self, windows: Tensor, h: int, w: int, layout: tuple[Tensor, Tensor] | None) -> Tensor:
        """The inverse of `_to_windows`: reverse the partition, roll by +shift and crop to `(B, h, w, C)` (or
        crop and roll)."""
        hp, wp = self._padded(h, w)
        c = windows.shape[-1]
        if layout is not None:
            to_windows, from_windows = layout
            b = windows.shape[0] * windows.shape[1] // (hp * wp)
            return kernels.gather_rows(windows.view(b, hp * wp, c), from_windows, None, to_windows).view(b, h, w, c)
        if _symbolic(h, w):
            b = windows.shape[0] * windows.shape[1] // (hp * wp)
            rows = self._symbolic_rows(h, w, windows.device, to_windows=False)
            return windows.reshape(b, hp * wp, c)[:, rows].view(b, h, w, c)
        shift = self.shift_for(h, w)
        return _unshifted(window_reverse(windows, self.window, hp, wp), shift, self.shift_first, h, w)

    def _symbolic_rows(self, h, w, device: torch.device, to_windows: bool) -> Tensor:
        """`window_layout`'s row indices in closed form, for sizes that are symbols under `torch.compile`'s
        dynamic shapes: a gather with index arithmetic on tensors, where pad, roll and partition of a
        symbolic grid leave inductor's CPU code generator simplifying index expressions for minutes (one
        block on a 7x9 grid: 161 s -> 12 s to compile). `to_windows` rows point at `h * w` (a zero row) for
        padding."""
        (wh, ww), (sh, sw) = self.window, self.shift_for(h, w)
        hp, wp = self._padded(h, w)
        # the grid a roll runs on: the padded one, or the grid itself when it is rolled before the padding
        rh, rw = (h, w) if self.shift_first else (hp, wp)
        if to_windows:  # window-major row -> (y, x) of the padded grid, then before the roll by -shift
            r = torch.arange(hp * wp, device=device)
            window, pos = r // (wh * ww), r % (wh * ww)
            y = (window // (wp // ww)) * wh + pos // ww
            x = (window % (wp // ww)) * ww + pos % ww
            inside = (y < rh) & (x < rw)  # (rolled first: the padding is never rolled)
            y, x = torch.where(inside, (y + sh) % rh, y), torch.where(inside, (x + sw) % rw, x)
            return torch.where((y < h) & (x < w), y * w + x, h * w)
        g = torch.arange(h * w, device=device)  # grid row -> its place in the rolled, padded window-major grid
        # (rolled back by adding what is left of a turn: an operand that may be negative gives the indices
        # bounds that inductor's CPU code generator fails on, with the batch's size alone symbolic)
        y, x = (g // w + (rh - sh % rh)) % rh, (g % w + (rw - sw % rw)) % rw
        return ((y // wh) * (wp // ww) + x // ww) * (wh * ww) + (y % wh) * ww + x % ww

    def _forward_fused(
        self, x: Tensor, layout: tuple[Tensor, Tensor], dtype: torch.dtype | None, low: torch.dtype | None
    ) -> Tensor:
        """`forward` in three Triton passes around the attention and the MLP: one gather builds the shifted
        windows (cast, pad, roll and partition in one), and each branch ends in `x + norm(y)`, the attention
        branch reading its output straight from the window-major layout (reverse, unshift and crop)."""
        windows, mask = self._windows_and_mask(x, dtype, low, layout)
        y, _ = self.attn(windows, mask)
        x, mlp_input = kernels.residual_layer_norm(x, y, self.norm1, low, layout[1])
        x, _ = kernels.residual_layer_norm(x, self.mlp(x if mlp_input is None else mlp_input), self.norm2)
        return x

    def _inference_without_drop_path(self) -> bool:
        """No autograd and no stochastic depth: the block's output is the same row by row, however computed."""
        return not torch.is_grad_enabled() and (not self.training or self.drop_path.drop_prob == 0.0)

    def _runs_in_groups(self, x: Tensor) -> bool:
        """Whether `forward` takes `_forward_grouped`: eager CPU inference, no stochastic depth."""
        return (
            x.device.type == "cpu"
            and self._inference_without_drop_path()
            and _plain_eager()
            and not _submodules_hooked(self)
        )

    def _gathers_layout(self, x: Tensor) -> bool:
        """Whether the layout moves run as Triton gathers (`_to_windows`, `_from_windows`): eager code on CUDA
        (or on CPU under the Triton interpreter in tests), in inference and training."""
        return (
            kernels.TRITON_FOUND
            and (x.is_cuda or kernels.INTERPRET_ON_CPU)
            and _plain_eager()
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        )

    def _fuses_norms(self) -> bool:
        """Whether, on top of the gathers, both branches may end in the fused `x + norm(y)` (`_forward_fused`):
        inference, plain LayerNorms, no stochastic depth."""
        return (
            self._inference_without_drop_path()
            and all(_is_plain(n, nn.LayerNorm) and n.weight is not None and n.bias is not None
                    for n in (self.norm1, self.norm2))
        )


class PatchMerging(nn.Module):
    """Halve the grid, double the channels: concatenate each 2x2 neighbourhood, project 4C -> 2C, normalise."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, H, W, C)` -> `(B, ceil(H/2), ceil(W/2), 2C)`; odd sizes are zero-padded first."""
        h, w = x.shape[1:3]
        if _symbolic(h, w) or h % 2 or w % 2:  # (padded when symbolic: see `to_whole_patches`)
            x = F.pad(x, (0, 0, 0, _ceil_div(w, 2) * 2 - w, 0, _ceil_div(h, 2) * 2 - h))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(apply_linear(self.reduction, x))


class Swinv2Stage(nn.Module):
    """A run of blocks at one resolution, alternating regular and shifted windows, then patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int | tuple[int, int],
        shift: int | tuple[int, int],
        pretrained_window: int,
        drop_paths: list[float],
        downsample: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        layer_norm_eps: float = 1e-5,
        shift_mask_value: float = MASK_VALUE,
        shift_first: bool = False,
        shift_per_input: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Swinv2Block(
                dim, num_heads, window, 0 if i % 2 == 0 else shift, pretrained_window, mlp_ratio, qkv_bias,
                hidden_act, drop, attn_drop, drop_paths[i], layer_norm_eps, shift_mask_value, shift_first,
                shift_per_input,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: dict = {"use_reentrant": False}  # for torch.utils.checkpoint.checkpoint

    def forward(
        self,
        x: Tensor,
        head_mask: Tensor | None = None,
        output_attentions: bool = False,
        tap: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """`(B, H, W, C)` -> (downsampled output, last block's attention).

        `tap` takes the blocks' output and returns the tensor the downsampling reads: a view through which a
        caller's copy of the output before downsampling joins the graph.
        """
        probs = None
        for i, block in enumerate(self.blocks):
            block_head_mask = None if head_mask is None else head_mask[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, probs = torch.utils.checkpoint.checkpoint(
                    block, x, block_head_mask, output_attentions, **self.checkpoint_kwargs
                )
            else:
                x, probs = block(x, block_head_mask, output_attentions)
        if tap is not None:
            x = tap(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x, probs
