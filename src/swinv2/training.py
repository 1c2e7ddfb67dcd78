"""Fine-tuning and SimMIM pre-training: the loops, their checkpoints, their metrics and plots.

    from swinv2.training import TrainConfig, train, evaluate
    result = train(TrainConfig(task="classification", data="fashion-mnist", model="config.json",
                               output="runs/fmnist", epochs=5, batch_size=128, lr=1e-3))
    print(result.metrics["top1"], result.best)           # best/ and last/ load with from_pretrained
    print(evaluate(result.best, "fashion-mnist").top1)

A run folder holds `train_config.json` (the resolved configuration), `metrics.jsonl` (one JSON record per
line: `kind` "train" every `log_every` steps, "val" or "epoch" at each epoch end), `checkpoints/` (full
training state, written atomically), `best/` and `last/` (exported with `save_pretrained` plus the image
processor's `preprocessor_config.json`), PNG plots and, when the `tensorboard` package is installed,
`tensorboard/`.

Reproducibility: items are augmented with seeds derived from `(seed, epoch, index)` (see `data.py`) and the
global RNG is re-seeded from `(seed, step, rank)` before every optimiser step (dropout, stochastic depth,
Mixup), so a run killed and resumed from a checkpoint ends with the same weights as an uninterrupted one,
and `torchrun --nproc-per-node N` with batch B/N per process follows one process with batch B, up to the
random regularisers (stochastic depth, dropout, Mixup/CutMix), whose draws are each process's own, and for
`--amp fp16` the loss scaler: per-process gradients of a smaller batch overflow fp16 at other steps, so the
skipped steps and the scale differ (bf16 and fp32 need no scaler).

Needs torchvision, tqdm and matplotlib (the `train` extra); pyyaml for YAML config files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import types
import typing
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import TRAINING_CONFIG_KEY, CheckpointError, atomic_write
from .config import CONFIG_NAME, Swinv2Config
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentedDataset,
    DataError,
    DataSpec,
    MaskGenerator,
    batch_mixer,
    build_classification_data,
    build_eval_data,
    build_pretraining_data,
    classification_train_transform,
    eval_processor,
    item_seed,
    processor_transform,
    simmim_transform,
)
from .errors import Swinv2Error, nonfinite_outputs
from .modeling import Swinv2ForImageClassification, Swinv2ForMaskedImageModeling, Swinv2PreTrainedModel

logger = logging.getLogger("swinv2")

TASKS = ("classification", "simmim")
AMP_MODES = ("none", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "train_config.json"
EVAL_FILE = "eval.json"
RANDAUGMENT_MAX = 30  # torchvision's RandAugment has 31 magnitude bins, 0 to 30


class TrainingError(Swinv2Error):
    """A training or evaluation request that cannot run; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything a run needs. `swinv2 train/pretrain` fill it from flags over an optional YAML/TOML file.

    Steps are optimiser steps; one consumes `batch_size * grad_accum_steps * world_size` images.
    """

    task: str = "classification"  # "classification" (swinv2 train) or "simmim" (swinv2 pretrain)
    data: str = ""  # "fashion-mnist", a folder of class folders (train/ + val/ or split), or of images
    model: str = ""  # a config.json, a checkpoint folder or file, or a preset name
    output: str = ""  # the run folder
    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (overrides epochs)
    batch_size: int = 64  # per process
    grad_accum_steps: int = 1
    lr: float = 5e-4  # peak learning rate, reached after the warm-up
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # overrides warmup_epochs
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # layer-wise lr decay for fine-tuning (the SimMIM recipe uses 0.9 for Swin V2)
    clip_grad: float | None = 5.0
    amp: str = "none"  # "none", "bf16", or "fp16" (with a gradient scaler)
    ema_decay: float | None = None  # keep an exponential moving average of the weights (evaluated, exported)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward and backward (evaluation stays eager)
    drop_path_rate: float | None = None  # overrides the model config's
    # classification data
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    randaugment: int = 0  # RandAugment magnitude with 2 ops (0: off; the reference recipe uses 9)
    crop_scale: tuple[float, float] | None = None  # RandomResizedCrop scale; default (0.08, 1) / (0.67, 1)
    crop_padding: int | None = None  # random crops of the image padded by this much instead (0: flips only)
    hflip: float = 0.5
    val_fraction: float = 0.1  # used when the data folder has no val/ split
    limit_train: int | None = None  # use a seeded random subset of this many training images
    limit_val: int | None = None
    # None: the --model checkpoint's own (its preprocessor_config.json, see `resolve_normalisation`), else
    # ImageNet's; a fine-tuned model must see the pixels it was pre-trained on. Resolved values are recorded.
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    new_head: bool = False  # replace a checkpoint's classifier whose classes differ from the data's
    # SimMIM
    mask_patch_size: int = 32
    mask_ratio: float = 0.6
    norm_targets: bool = False  # Microsoft's local normalisation of the reconstruction targets
    norm_target_window: int = 47
    # running
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    fsdp: bool = False  # shard with FSDP2 fully_shard under torchrun
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end and at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = None  # None: fresh; "latest": the run folder's newest good checkpoint (required);
    #                            "auto": resume if there is one; or a checkpoint file / run folder
    progress: bool = True
    tensorboard: bool = True
    config_file: str | None = None  # where the values came from (recorded only)

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise TrainingError(message)

        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        # inf passes every range check below (`lr > 0`) and trains a model of NaN: no setting may be NaN or inf
        for name, value in self.to_dict().items():
            numbers = value if isinstance(value, list) else [value]
            need(all(not isinstance(v, float) or math.isfinite(v) for v in numbers),
                 f"{name} must be a finite number, got {value}")
        need(bool(self.data) or self.resume in (None, "auto"),
             f"--resume: {self.output} holds no run to continue (its {RUN_CONFIG_FILE} would give the data); "
             "check --output, or start a run there with --data DIR" if self.resume == "latest" else
             f"--resume {self.resume}: pass --data too (a run folder's {RUN_CONFIG_FILE} gives it when --output "
             "is that run)")
        need(bool(self.data), "no data given: pass --data DIR (or --data fashion-mnist)")
        need(bool(self.output), "no output folder given: pass --output DIR")
        need(bool(self.model) or self.resume not in (None, "auto"),
             "no model given: pass --model with a config.json, a checkpoint folder or a preset name")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.grad_accum_steps >= 1, f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        need(self.lr > 0 and self.min_lr >= 0, f"lr must be > 0 and min_lr >= 0, got {self.lr}, {self.min_lr}")
        need(self.min_lr <= self.lr, f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        need(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")
        need(self.clip_grad is None or self.clip_grad >= 0,
             f"clip_grad is a gradient norm and must be >= 0 (0: off), got {self.clip_grad}")
        need(self.drop_path_rate is None or 0 <= self.drop_path_rate < 1,
             f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        need(0 <= self.randaugment <= RANDAUGMENT_MAX,
             f"randaugment is a magnitude in [0, {RANDAUGMENT_MAX}] (0: off), got {self.randaugment}")
        need(self.num_workers >= 0, f"num_workers must be >= 0 (0: load in this process), got {self.num_workers}")
        need(self.image_std is None or min(self.image_std, default=1) > 0,
             f"image_std must be > 0 for every channel, got {self.image_std}")
        # (pixels are normalised in fp32: a std of 1e-50 or a mean of 1e300 make every value infinite there)
        need(self.image_std is None or min(self.image_std, default=1) >= 1e-6,
             f"image_std must be at least 1e-6 (pixels lie in [0, 1]), got {self.image_std}")
        need(self.image_mean is None or max(map(abs, self.image_mean), default=0) <= 1e6,
             f"image_mean must lie within +-1e6 (pixels lie in [0, 1]), got {self.image_mean}")
        need(self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        need(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.mixup >= 0 and self.cutmix >= 0, "mixup and cutmix alphas must be >= 0")
        need(self.crop_padding is None or self.crop_padding >= 0, f"crop_padding must be >= 0, got {self.crop_padding}")
        scale = self.crop_scale
        need(scale is None or (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1),
             f"crop_scale must be two fractions of the image area, 0 < min <= max <= 1, got {scale}")
        need(0 <= self.hflip <= 1, f"hflip is a probability in [0, 1], got {self.hflip}")
        need(self.warmup_epochs >= 0 and (self.warmup_steps is None or self.warmup_steps >= 0),
             f"warmup must be >= 0, got warmup_epochs {self.warmup_epochs}, warmup_steps {self.warmup_steps}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.checkpoint_every >= 1 and self.keep_checkpoints >= 1 and self.log_every >= 1,
             "checkpoint_every, keep_checkpoints and log_every must be >= 1")
        need(self.norm_target_window % 2 == 1, f"norm_target_window must be odd, got {self.norm_target_window}")
        need(self.image_mean is None or self.image_std is None or len(self.image_mean) == len(self.image_std),
             "image_mean and image_std must have the same length")
        need(not (self.fsdp and self.ema_decay), "--fsdp and --ema-decay cannot be combined: drop one of them")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a config file's content); unknown keys are an error naming the valid ones."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TrainingError(f"unknown training setting(s) {unknown}; valid ones: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _setting(key, hints[key], value) for key, value in values.items()})


def _setting(name: str, hint: Any, value: Any) -> Any:
    """`value` as the type of the setting `name` (its type hint, e.g. `float | None`), from a config file: YAML
    reads `1e-3` as a string, JSON lists are lists. A value of another kind is an error naming the setting."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    kind = kinds[0]
    if value is None:
        if len(kinds) < len(typing.get_args(hint)):  # the hint allows None
            return None
        raise TrainingError(f"setting {name} needs a value ({getattr(kind, '__name__', kind)}), got null")
    if typing.get_origin(kind) is tuple:
        elements = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise TrainingError(f"setting {name} needs a list of {elements[0].__name__}s, got {value!r}")
        if elements[-1] is not Ellipsis and len(value) != len(elements):
            raise TrainingError(f"setting {name} needs {len(elements)} values, got {len(value)}: {list(value)}")
        return tuple(_setting(name, elements[0], v) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind in (int, float) and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)):
            if kind is float:
                return float(number)
            if float(number).is_integer():
                return int(number)
    elif kind is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise TrainingError(f"setting {name} needs {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")


def _yaml_problem(err: BaseException) -> str | None:
    """PyYAML's error in one line: `line 2, column 1: expected ',' or ']', but got '<stream end>' (while parsing
    a flow sequence from line 1, column 7)`, without its excerpt of the file and caret lines; None for any
    other error."""
    yaml = sys.modules.get("yaml")
    if yaml is None or not isinstance(err, yaml.YAMLError):
        return None
    if not isinstance(err, yaml.MarkedYAMLError):  # a ReaderError: 'unacceptable character ... position 3'
        return " ".join(str(err).split()).replace(' in "<unicode string>", ', " at ")

    def where(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark = err.problem_mark or err.context_mark
    text = " ".join(str(err.problem or err.context or type(err).__name__).split())
    if err.context and err.problem:
        context = " ".join(str(err.context).split())
        if err.context_mark is not None and err.context_mark is not mark:
            context += f" from {where(err.context_mark)}"
        text += f" ({context})"
    return f"{where(mark)}: {text}" if mark is not None else text


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file of `TrainConfig` fields, as a dict."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"the config file {path} does not exist; check the --config path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                raise TrainingError("YAML config files need pyyaml: pip install 'swinv2[train]'") from err
            values = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError as err:
                    raise TrainingError("TOML config files need Python 3.11+ or tomli (pip install tomli)") from err
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise TrainingError(f"{path}: config files must end in .yaml, .yml, .toml or .json")
    except ValueError as err:  # json and toml decode errors are ValueErrors
        if isinstance(err, TrainingError):
            raise
        raise TrainingError(f"{path} could not be parsed ({err}); fix the file") from err
    except Exception as err:  # yaml.YAMLError and friends
        problem = _yaml_problem(err)
        if problem is not None:
            raise TrainingError(f"{path} could not be parsed: {problem}; fix the file") from err
        raise TrainingError(f"{path} could not be parsed ({err}); fix the file") from err
    if not isinstance(values, dict):
        raise TrainingError(f"{path} must hold a mapping of setting names to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def saved_settings(output: str | os.PathLike) -> dict[str, Any]:
    """The settings a run folder was started with (its train_config.json), or {} when it has none: resuming
    needs no flags but `--output` and `--resume`."""
    path = Path(output).expanduser() / RUN_CONFIG_FILE
    if not path.is_file():
        return {}
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "config_file"}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} is not valid JSON ({err}); give the settings as flags instead") from err
    return {k: v for k, v in saved.items() if k in names}


def resolve_config(config_file: str | None, overrides: Mapping[str, Any], **defaults: Any) -> TrainConfig:
    """`defaults`, then the config file's values, then `overrides` (the flags given): the last one wins."""
    values = dict(defaults)
    if config_file:
        values.update(load_config_file(config_file))
        values["config_file"] = str(config_file)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------- optimisation
NO_DECAY_NAMES = ("logit_scale", "cpb_mlp", "mask_token", "position_embeddings", "q_bias", "v_bias")


def skip_weight_decay(name: str, param: Tensor) -> bool:
    """Norms, biases, the attention temperature, the continuous position bias MLP, the mask token and the
    absolute positions are not decayed (as in the Microsoft recipe)."""
    return param.dim() <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES)


def layer_id(name: str, depths: Sequence[int]) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the patch embedding (and mask token), `k` for the
    k-th block overall (1-based; patch merging goes with its stage's last block), `sum(depths) + 1` for the
    final norm and the heads."""
    name = name.removeprefix("module.").removeprefix("swinv2.")
    if name.startswith("embeddings."):
        return 0
    if name.startswith("stages."):
        parts = name.split(".")
        stage = int(parts[1])
        if parts[2] == "blocks":
            return sum(depths[:stage]) + int(parts[3]) + 1
        return sum(depths[: stage + 1])
    return sum(depths) + 1


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float = 1.0, depths: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: with/without weight decay, times one lr scale per layer when
    `layer_decay < 1` (`lr_scale = layer_decay ** (num_layers + 1 - layer_id)`). Each group has
    `weight_decay`, `lr_scale` and `names`."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    top = sum(depths) + 1 if depths is not None else 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not skip_weight_decay(name, param)
        depth = layer_id(name, depths) if layer_decay < 1.0 and depths is not None else top
        group = groups.setdefault((depth, decay), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (top - depth),
        })
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based): linear warm-up from `1/warmup` to 1 over
    `warmup_steps`, then a cosine from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig, depths: Sequence[int]) -> torch.optim.AdamW:
    groups = param_groups(model, config.weight_decay, config.layer_decay, depths)
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
        del group["names"]
    # fused: one kernel over all the parameters instead of ~10 small ops per tensor (on CPU the default is a
    # Python loop over the tensors); FSDP's sharded DTensors keep the default implementation
    params = [p for group in groups for p in group["params"]]
    fused = not config.fsdp and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine with linear warm-up, stepped once per optimiser step; each group keeps its layer-decay scale."""
    schedule = functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def norm_targets(pixels: Tensor, window: int) -> Tensor:
    """SimMIM's target normalisation: each pixel minus the mean, over the std, of its `window x window`
    neighbourhood (per channel; the unbiased variance over the pixels inside the image). `(B, C, H, W)`."""
    if window % 2 != 1:
        raise ValueError(f"the normalisation window must be odd, got {window}")
    pad = window // 2
    mean = F.avg_pool2d(pixels, window, stride=1, padding=pad, count_include_pad=False)
    mean_sq = F.avg_pool2d(pixels * pixels, window, stride=1, padding=pad, count_include_pad=False)
    ones = torch.ones_like(pixels[:1, :1])
    count = F.avg_pool2d(ones, window, stride=1, padding=pad, count_include_pad=True) * window**2
    var = ((mean_sq - mean * mean) * (count / (count - 1).clamp(min=1))).clamp(min=0)
    return (pixels - mean) / (var + 1e-6).sqrt()


def masked_pixels(bool_masked_pos: Tensor, patch_size: tuple[int, int], height: int, width: int) -> Tensor:
    """`(B, num_patches)` patch mask -> `(B, 1, H, W)` float pixel mask."""
    ph, pw = patch_size
    grid = (math.ceil(height / ph), math.ceil(width / pw))
    mask = bool_masked_pos.reshape(-1, 1, *grid).float()
    return mask.repeat_interleave(ph, 2).repeat_interleave(pw, 3)[..., :height, :width]


def simmim_loss(pixel_values: Tensor, reconstruction: Tensor, bool_masked_pos: Tensor,
                patch_size: tuple[int, int], norm_window: int | None = None) -> Tensor:
    """L1 between reconstruction and target over the masked pixels, per channel, as the model's own loss;
    with `norm_window` the targets are locally normalised first (`norm_targets`)."""
    target = pixel_values.float()
    if norm_window:
        target = norm_targets(target, norm_window)
    mask = masked_pixels(bool_masked_pos, patch_size, *pixel_values.shape[-2:])
    error = F.l1_loss(reconstruction.float(), target, reduction="none")
    return (error * mask).sum() / (mask.sum() + 1e-5) / pixel_values.shape[1]


# ---------------------------------------------------------------------------------------------- processes
@dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 otherwise) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum over processes (in place) and return it."""
        if self.enabled:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the torchrun process group (nccl on GPU, gloo on CPU) when WORLD_SIZE > 1, and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise TrainingError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return Distributed(rank, world, local_rank, dev)


# ---------------------------------------------------------------------------------------------- the model
def _architectures(config: Swinv2Config) -> list[str]:
    return list(config.architectures or [])


ARCH_FIELDS = ("image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size",
               "pretrained_window_sizes", "mlp_ratio", "qkv_bias", "use_absolute_embeddings", "window_layout",
               "always_partition")


def _set_labels(config: Swinv2Config, class_names: Sequence[str]) -> None:
    config.id2label = {i: str(name) for i, name in enumerate(class_names)}
    config.label2id = {str(name): i for i, name in enumerate(class_names)}


def _load_source(source: str) -> tuple[Swinv2Config, str | None]:
    """`(config, weights source or None)` for `--model`: a config.json (fresh weights), a folder with a
    config.json (and weights, if any), a weights file, or a preset / hub name."""
    from .checkpoints import find_weights

    path = Path(source).expanduser()
    if not path.exists() and (path.suffix == ".json" or source.startswith(("/", ".", "~"))):
        raise TrainingError(
            f"--model {source}: no such file or folder. Give a config.json, a checkpoint folder (config.json + "
            "weights) or a preset name (e.g. swinv2-tiny-patch4-window8-256)"
        )
    try:
        if path.is_file() and path.suffix == ".json":
            return Swinv2Config.from_json_file(path), None
        if path.is_dir():
            if not (path / CONFIG_NAME).is_file():
                raise TrainingError(
                    f"--model {source}: the folder has no {CONFIG_NAME}; give a folder written by save_pretrained "
                    "(config.json + model.safetensors) or a config.json file"
                )
            return Swinv2Config.from_json_file(path / CONFIG_NAME), (str(path) if find_weights(path) else None)
        if path.is_file():
            return Swinv2Config.from_pretrained(path), str(path)
        config = Swinv2Config.from_pretrained(source)
    except (CheckpointError, ValueError, OSError) as err:
        if isinstance(err, TrainingError):
            raise
        raise TrainingError(
            f"--model {source}: {err}. Give a config.json, a checkpoint folder (config.json + weights) or a preset name"
        ) from err
    from .checkpoints import resolve_source

    try:
        _, weights = resolve_source(source)
    except CheckpointError:
        weights = None
    return config, (source if weights is not None else None)


def _checkpoint_normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """`(mean, std, where from)` of the image processor of the checkpoint `--model` names, as the training
    transforms apply them (pixels rescaled to [0, 1]); None when `source` has no weights (a config.json or a
    preset name: a new model, which was trained on nothing)."""
    from .processing import Swinv2ImageProcessor

    _, weights = _load_source(source)
    if weights is None:
        return None
    try:
        processor = Swinv2ImageProcessor.from_pretrained(weights)
    except (CheckpointError, ValueError, TypeError, OSError) as err:
        raise TrainingError(
            f"cannot read the image settings of --model {source} ({err}); fix its preprocessor_config.json or "
            "pass --image-mean and --image-std"
        ) from err
    channels = processor.channels

    def per_channel(values: float | Sequence[float]) -> list[float]:
        return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)] * channels

    mean, std = per_channel(processor.image_mean), per_channel(processor.image_std)
    if not processor.do_normalize:
        mean, std = [0.0] * channels, [1.0] * channels
    # The training transforms rescale 8-bit pixels to [0, 1] before normalising; a processor that rescales by
    # another factor f (or not at all, f = 1) computes (x*f - m) / s = (x/255 - m/(255 f)) / (s/(255 f)).
    factor = 255.0 * (processor.rescale_factor if processor.do_rescale else 1.0)
    if not math.isclose(factor, 1.0, rel_tol=1e-9):
        mean, std = [m / factor for m in mean], [sd / factor for sd in std]
    return tuple(mean), tuple(std), f"the image processor of --model {source}"


def resolve_normalisation(
    config: TrainConfig, saved: Mapping[str, Any] | None = None, channels: int = 3
) -> tuple[TrainConfig, str]:
    """`config` with `image_mean` and `image_std` filled in where they are None, and where they came from.

    Each one given (flag or config file) is kept. A missing one comes from `saved` (the train_config of the
    checkpoint a run resumes: the run's own), else from the `--model` checkpoint's image processor (fine-tuning
    keeps the normalisation it was pre-trained with, e.g. a SimMIM run's `--image-mean`), else ImageNet's
    (for a model of other than 3 `channels`, their average on each channel, as the image processor takes it).
    The checkpoint's size and resampling are not taken: the training transforms resize to the model's
    `image_size`, bicubic, and the export's processor says so.
    """
    if config.image_mean is not None and config.image_std is not None:
        return config, "the settings"
    found: tuple[Sequence[float], Sequence[float], str] | None = None
    if saved is not None and saved.get("image_mean") is not None and saved.get("image_std") is not None:
        found = saved["image_mean"], saved["image_std"], "the resumed run's settings"
    elif config.model:
        found = _checkpoint_normalisation(config.model)
    if found is None:
        from .processing import rgb_stats_for

        mean, std = rgb_stats_for(IMAGENET_MEAN, channels), rgb_stats_for(IMAGENET_STD, channels)
        found = mean, std, "ImageNet's defaults (--model has no weights)"
    mean, std, origin = found
    resolved = dataclasses.replace(
        config,
        image_mean=config.image_mean if config.image_mean is not None else tuple(float(v) for v in mean),
        image_std=config.image_std if config.image_std is not None else tuple(float(v) for v in std),
    )
    return resolved, origin


def build_model(config: TrainConfig, class_names: Sequence[str] | None) -> tuple[Swinv2PreTrainedModel, str]:
    """The model `config.model` names, ready for `config.task`; returns it and a line saying what was loaded.

    Classification: a checkpoint's classifier is kept when the data's classes are its classes or some of them,
    each class's row matched by name (`match_labels`; by position for placeholder labels LABEL_i, which must
    be as many); otherwise it is an error unless `new_head` (a checkpoint without a classifier, e.g. a SimMIM
    one, always gets a new head).
    """
    from .processing import has_placeholder_labels

    model_config, weights = _load_source(config.model)
    if config.drop_path_rate is not None:
        model_config.drop_path_rate = config.drop_path_rate
    model_config.use_gradient_checkpointing = bool(config.gradient_checkpointing)
    if config.task == "classification":
        assert class_names is not None
        has_head = weights is not None and "Swinv2ForImageClassification" in _architectures(model_config)
        replace = not has_head or config.new_head
        placeholders = has_placeholder_labels(model_config.id2label)
        if not replace and placeholders and model_config.num_labels != len(class_names):
            raise TrainingError(
                f"the data has {len(class_names)} classes but the classifier of {config.model} has "
                f"{model_config.num_labels} without names (LABEL_0, ...), so its rows cannot be matched to the data's "
                "classes. Pass --new-head to replace the classifier, or train on data with the checkpoint's classes"
            )
        rows = None  # the checkpoint's classifier row of each data class
        if not replace and not placeholders:
            labels = [model_config.id2label[i] for i in range(model_config.num_labels)]
            rows = match_labels(labels, class_names)
            if rows is None:
                raise TrainingError(
                    f"the classifier of {config.model} knows {', '.join(labels)}, the data's classes are "
                    f"{', '.join(class_names)}. Pass --new-head to replace the classifier, or name the class "
                    "folders after its labels (a '/' in a label may be written '_')"
                )
        load_config = copy.deepcopy(model_config)  # the checkpoint's own head, before it shrinks to a subset
        _set_labels(model_config, class_names)
        model_config.problem_type = "single_label_classification"
        cls: type[Swinv2PreTrainedModel] = Swinv2ForImageClassification
    else:
        replace = False
        cls = Swinv2ForMaskedImageModeling
        stride = model_config.patch_hw[0] * 2 ** (model_config.num_layers - 1)
        if model_config.encoder_stride != stride:
            # transformers' default (32) fits four stages of patch 4 only; the decoder must undo the whole stride
            logger.info("encoder_stride set to %d (patch %d x 2**(%d stages - 1)) for the SimMIM decoder, from %d",
                        stride, model_config.patch_hw[0], model_config.num_layers, model_config.encoder_stride)
            model_config.encoder_stride = stride
    if weights is None:
        torch.manual_seed(config.seed)  # the same initial weights in every process and every run
        return cls(model_config), f"new {cls.__name__} from {config.model}"
    with warnings.catch_warnings():
        if replace:  # a new head is what was asked for: no warning about its fresh weights
            warnings.simplefilter("ignore")
        torch.manual_seed(config.seed)
        try:
            model = cls.from_pretrained(
                weights, config=model_config if rows is None else load_config, ignore_mismatched_sizes=replace
            )
        except CheckpointError as err:
            raise TrainingError(f"--model {config.model} cannot be loaded as a Swin V2 model: {err}") from err
    described = f"{cls.__name__} from the weights of {weights}" + (" with a new classifier" if replace else "")
    if rows is not None and rows != list(range(load_config.num_labels)):
        # the data's classes in another order, or some of them: the head keeps their rows, in the data's order
        old = model.classifier
        head = nn.Linear(old.in_features, len(rows), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(old.weight[rows])
            head.bias.copy_(old.bias[rows])
        model.classifier, model.num_labels = head, len(rows)
        described += (
            " (its rows reordered to the data's classes)" if len(rows) == load_config.num_labels
            else f" (the rows of the data's {len(rows)} of its {load_config.num_labels} classes)"
        )
    if rows is not None:  # loaded with the checkpoint's labels: the data's from here on, as for a new head
        _set_labels(model.config, class_names)
        model.config.problem_type = "single_label_classification"
    return model, described


# ---------------------------------------------------------------------------------------------- checkpoints
def _check_writable(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise TrainingError(f"the output {folder} is a file, not a folder; choose another --output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise TrainingError(
            f"cannot write to the output folder {folder} ({err.strerror or err}); choose another --output"
        ) from err


LOCK_FILE = ".lock"


@contextlib.contextmanager
def _run_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock` while a run writes there: a second run with the same --output (by mistake, or a
    re-run while an interrupted demo's processes still train) is refused instead of interleaving its
    checkpoints, metrics and exports with the first's. An advisory lock (flock) that the kernel releases when the
    process ends, however it ends; none where the platform has no flock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            raise TrainingError(
                f"{folder} is in use by another training run{f' (process {holder})' if holder else ''}; wait for it "
                "to finish (or stop it), or choose another --output"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


# The temporary names of checkpoints.atomic_write: tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp") adds
# eight characters of tempfile's alphabet; checkpoints.staged_folder's folders end in ".staging" instead. A
# SIGKILL (or power loss) between the write and the rename leaves one behind, up to a whole checkpoint's size;
# nothing else writes names of this shape.
_STALE_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_STALE_STAGING = re.compile(r"\..+\.[a-z0-9_]{8}\.staging")
# Where a run writes through atomic_write: the run folder (metrics, settings, eval.json, plots), its
# checkpoints and its two exports.
_ATOMIC_FOLDERS = (".", CHECKPOINT_DIR, "best", "last")


def remove_stale_temporaries(run: Path) -> list[Path]:
    """Delete the temporary files that an interrupted atomic write left in the run folder `run` (only names
    of atomic_write's pattern, in the folders a run writes, never anything else); returns them. Called when a
    run starts or resumes there, before it writes: no write of its own is in flight."""
    removed = []
    for sub in _ATOMIC_FOLDERS:
        folder = run / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_symlink():
                continue
            if _STALE_TEMPORARY.fullmatch(path.name) and path.is_file():
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
            elif _STALE_STAGING.fullmatch(path.name) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return sorted(removed)


def checkpoint_path(run: Path, step: int) -> Path:
    return run / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, newest first."""
    folder = run / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(folder.glob("step_*.pt"), reverse=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain values only: `weights_only=True`)."""
    from .checkpoints import torch_load

    state = torch_load(path)  # a damaged file is named as such, not with torch's unpickling advice
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a swinv2 training checkpoint (no model/step entries)")
    return state


def latest_checkpoint(target: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run folder (or the given file) that loads; unreadable ones are reported
    and skipped (a crash while writing cannot leave one, but a full disk or a copy can)."""
    candidates = [target] if target.is_file() else list_checkpoints(target)
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except Exception as err:  # a damaged file: take the one before it
            logger.warning("skipping an unreadable checkpoint: %s", err)  # CheckpointError's message names it
    return None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimiser states on the CPU, whether the model is plain, DDP or FSDP
    (a collective under torchrun: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    distributed = torch.distributed.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
    return get_state_dict(model, optimizer, options=options)


def _load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------------------------------------- metrics files
def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (an unfinished last line, from a kill, is ignored)."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def json_text(value: Any, **kwargs: Any) -> str:
    """`json.dumps` with NaN and infinities written as null: Python writes them as bare NaN/Infinity, which is
    not JSON and which other readers (jq, browsers, pandas' strict mode) refuse."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, **kwargs)


def _append_metrics(run: Path, record: Mapping[str, Any]) -> None:
    with open(run / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json_text(record) + "\n")


def _resumed_metrics(run: Path, step: int, history: Path) -> None:
    """`run`'s metrics.jsonl for a run resumed at `step`: `history`'s records up to that step (the run's own, or
    those of the run a checkpoint came from, so that plots of a copy start at step 0); the records after it
    go, since the resumed run writes them again."""
    kept = [r for r in read_metrics(history) if r.get("step", 0) <= step]
    text = "".join(json_text(r) + "\n" for r in kept)
    atomic_write(run / METRICS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class _TensorBoard:
    """Scalars to `run/tensorboard` when the tensorboard package is installed (silently off otherwise)."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
                return
            self.writer = SummaryWriter(str(run / "tensorboard"))

    def log(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------- export
_EXPORT_WARNINGS_SAID: set[str] = set()


def export_model(model: Swinv2PreTrainedModel, folder: Path, mean: Sequence[float], std: Sequence[float]) -> None:
    """`save_pretrained` plus `preprocessor_config.json`: what `swinv2 predict` and transformers load. A warning
    about what is written (no transformers processor for 1-channel images, say) is said once per process, not
    at every epoch's export (Python's own once-per-place is reset by every `catch_warnings` in between)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        eval_processor(model.config.image_hw, mean, std).save_pretrained(folder)
    for warning in caught:
        if str(warning.message) not in _EXPORT_WARNINGS_SAID:
            _EXPORT_WARNINGS_SAID.add(str(warning.message))
            warnings.warn(warning.message, stacklevel=2)


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Classification metrics; `confusion[i][j]` counts images of true class i predicted as j.

    `per_class` is the accuracy of each class over its images, None for a class with no image in the data
    (a folder holding a subset of the model's classes): it has no accuracy, and 0.0 would claim every one of
    its images was missed. `images_per_class` says how many each had."""

    loss: float
    top1: float
    top5: float
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    class_names: list[str]
    num_images: int
    images_per_second: float
    images_per_class: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Shard(torch.utils.data.Dataset):
    """Items `rank, rank + world, ...` of a dataset, padded to the same length on every rank with items
    labelled -1 (ignored by the metrics), so that collectives inside the forward (FSDP) stay in step."""

    def __init__(self, dataset: torch.utils.data.Dataset, rank: int, world: int) -> None:
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))
        self.length = math.ceil(len(dataset) / world)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if i < len(self.indices):
            return self.dataset[self.indices[i]]
        pixels, _ = self.dataset[self.indices[0] if self.indices else 0]
        return pixels, -1


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def _evaluate_loader(model: nn.Module, dataset: torch.utils.data.Dataset, num_classes: int, dist: Distributed,
                     batch_size: int, num_workers: int, amp: str, progress: bool = False) -> dict[str, Any]:
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(_Shard(dataset, dist.rank, dist.world_size), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=dist.device.type == "cuda")
    device = dist.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    start = time.perf_counter()
    # an iterator, not the loader: tqdm.auto's asyncio base calls iter() on what it gets and its __iter__ then
    # iterates it again, which started the workers twice (each reporting every unreadable image)
    batches = iter(loader)
    for pixels, labels in tqdm(batches, total=len(loader), desc="evaluate", leave=False,
                               disable=not (progress and dist.main)):
        pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(pixel_values=pixels).logits.float()
        valid = labels >= 0
        logits, labels = logits[valid], labels[valid]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum()
        confusion += torch.bincount(labels * num_classes + logits.argmax(-1),
                                    minlength=num_classes**2).view(num_classes, num_classes)
    elapsed = time.perf_counter() - start
    dist.all_reduce(loss_sum)
    dist.all_reduce(top5_hits)
    dist.all_reduce(confusion)
    model.train(was_training)
    count = int(confusion.sum())
    return {"loss": float(loss_sum) / max(count, 1), "top1": float(confusion.diag().sum()) / max(count, 1),
            "top5": float(top5_hits) / max(count, 1), "confusion": confusion.cpu(), "count": count,
            "img_per_s": count / max(elapsed, 1e-9)}


def _eval_result(raw: Mapping[str, Any], class_names: Sequence[str]) -> EvalResult:
    confusion = raw["confusion"]
    totals = confusion.sum(1).tolist()
    per_class = {name: (float(confusion[i, i]) / totals[i] if totals[i] else None)
                 for i, name in enumerate(class_names)}
    return EvalResult(raw["loss"], raw["top1"], raw["top5"], per_class, confusion.tolist(), list(class_names),
                      raw["count"], raw["img_per_s"], dict(zip(class_names, map(int, totals))))


def _folder_name(label: str) -> str:
    """A label as a class folder can spell it: case and punctuation aside ("T-shirt/top" ~ "t-shirt_top").
    Letters, marks and digits of every script are kept ("犬" and "猫", "काल" and "किल" stay apart), in one
    Unicode form (macOS writes "é" in folder names as "e" and a combining accent); "" for punctuation only."""
    text = unicodedata.normalize("NFKC", label).casefold()
    kept = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text)
    return "_".join(kept.split())


def match_labels(labels: Sequence[str], class_names: Sequence[str]) -> list[int] | None:
    """For each of the data's classes, the index of the model label it names: the same name, else the only
    label that a folder could spell so (a '/' cannot be in a folder name). None when one has no label."""
    spelled: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        spelled.setdefault(_folder_name(label), []).append(i)
    index = []
    for name in class_names:
        if name in labels:
            index.append(list(labels).index(name))
        elif _folder_name(name) and len(spelled.get(_folder_name(name), [])) == 1:  # "" would pair "?" and "!"
            index.append(spelled[_folder_name(name)][0])
        else:
            return None
    return index if len(set(index)) == len(index) else None


def _label_order(model_config: Swinv2Config, class_names: Sequence[str], source: str) -> tuple[list[str], list[int]]:
    """Check that the data's classes fit the model's head. Returns the class names in the model's order and,
    for each of the data's classes, the model's index of it: matched by name when the model has names
    (`match_labels`), in order when its labels are placeholders (LABEL_0, ...)."""
    from .processing import has_placeholder_labels

    names = [model_config.id2label[i] for i in range(model_config.num_labels)]
    if len(class_names) > model_config.num_labels:
        unknown = [] if has_placeholder_labels(model_config.id2label) else [
            name for name in class_names if match_labels(names, [name]) is None
        ]
        raise TrainingError(
            f"the data has {len(class_names)} classes but the classifier of {source} has {model_config.num_labels}"
            + (f" (the data's {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} none of its labels)"
               if unknown else "")
            + ": labels would be out of range. Evaluate on data with the model's classes "
            f"({', '.join(names)}), or fine-tune the model on this data first"
        )
    if has_placeholder_labels(model_config.id2label):
        return list(class_names) + names[len(class_names):], list(range(len(class_names)))
    index = match_labels(names, class_names)
    if index is None:
        unknown = [name for name in class_names if match_labels(names, [name]) is None]
        raise TrainingError(
            f"the data's classes {', '.join(unknown) or ', '.join(class_names)} are not labels of {source} "
            f"({', '.join(names)}), so its predictions cannot be scored against them. Name the class folders "
            "after the model's labels (a '/' in a label may be written '_'), or fine-tune the model on this data"
        )
    return names, index


def evaluate(
    model: str | os.PathLike | Swinv2ForImageClassification,
    data: str,
    *,
    batch_size: int = 256,
    num_workers: int = 2,
    limit: int | None = None,
    device: str = "auto",
    amp: str = "none",
    output: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvalResult:
    """Top-1/top-5 accuracy, loss, per-class accuracy and confusion matrix of a classifier on `data`
    (Fashion-MNIST's test split, `DATA/val`, or a folder of class folders), with the model's own image
    processor, the one `swinv2 predict` uses (its preprocessor_config.json, else one built from its config).
    Unreadable images are reported and left out. With `output`, writes `eval.json` and
    `confusion_matrix.png` there."""
    from .processing import Swinv2ImageProcessor

    if batch_size < 1 or num_workers < 0:
        raise TrainingError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    dist = setup_distributed(device)
    if output is not None and dist.main:
        _check_writable(Path(output))  # before the work, not after it
    source = str(model) if not isinstance(model, nn.Module) else "the model"
    if isinstance(model, nn.Module):
        processor = Swinv2ImageProcessor.from_model_config(model.config)
    else:
        path = Path(model)
        try:
            probe = Swinv2Config.from_pretrained(path)
        except (CheckpointError, ValueError, OSError) as err:
            raise TrainingError(
                f"{model}: {err}. Pass a folder written by `swinv2 train` (its best/ or last/)"
            ) from err
        if "Swinv2ForMaskedImageModeling" in _architectures(probe) or probe.num_labels == 0:
            raise TrainingError(
                f"{model} has no classifier (it is a {', '.join(_architectures(probe)) or 'headless'} model); "
                "fine-tune it first with `swinv2 train --model " + str(model) + " ...`"
            )
        try:
            model = Swinv2ForImageClassification.from_pretrained(path)
        except CheckpointError as err:
            raise TrainingError(f"{source} cannot be loaded as a classifier: {err}") from err
        try:
            processor = Swinv2ImageProcessor.from_pretrained(path)
        except (ValueError, TypeError) as err:
            raise TrainingError(f"cannot read the image settings of {source}: {err}") from err
    model = model.to(dist.device)
    config = model.config
    if processor.channels != config.num_channels:
        raise TrainingError(
            f"the image settings of {source} make {processor.channels}-channel images (image_mean/image_std or "
            f"num_channels of its preprocessor_config.json) but the model takes {config.num_channels}; give "
            f"one image_mean and image_std value per channel ({config.num_channels})"
        )
    if processor.keeps_aspect_ratio:
        batch_size = 1  # the images' sizes differ and do not stack
    spec = DataSpec(data, config.image_hw, config.num_channels, limit_val=limit)
    try:
        dataset, class_names = build_eval_data(spec, processor_transform(processor))
    except DataError as err:
        raise TrainingError(str(err)) from err
    names, model_index = _label_order(config, class_names, source)
    if model_index != list(range(len(class_names))):
        dataset.labels = torch.tensor(model_index)[torch.as_tensor(dataset.labels)].tolist()
    raw = _evaluate_loader(model, dataset, config.num_labels, dist, batch_size, num_workers, amp, progress)
    if raw["count"] == 0:
        raise TrainingError(f"none of the images in {data} could be read; see the warnings above")
    if not math.isfinite(raw["loss"]):  # NaN logits: their argmax, class 0, would be scored as predictions
        raise TrainingError(nonfinite_outputs(model, source))
    result = _eval_result(raw, names)
    if output is not None and dist.main:
        out = Path(output)
        text = json_text(result.to_dict(), indent=2) + "\n"
        atomic_write(out / EVAL_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        plot_confusion(result.confusion, result.class_names, out / "confusion_matrix.png")
    return result


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What a finished run left behind: its folder, the exported models and the final metrics."""

    output: Path
    last: Path
    best: Path | None
    steps: int
    metrics: dict[str, Any]
    images_per_second: float


class _SkipSampler(torch.utils.data.Sampler):
    """The first `skip` indices of another sampler left out: a resumed epoch goes on where it stopped."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _wrap(model: nn.Module, config: TrainConfig, dist: Distributed) -> nn.Module:
    if config.fsdp:
        if not dist.enabled:
            raise TrainingError("--fsdp shards the model over processes: run it under torchrun --nproc-per-node N")
        from torch.distributed.fsdp import fully_shard

        from .layers import Swinv2Block

        for module in model.modules():
            if isinstance(module, Swinv2Block):
                fully_shard(module)
        fully_shard(model)
        return model
    if dist.enabled:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    return model


def compile_problem(device_type: str) -> str | None:
    """Why `torch.compile` cannot train on this device type here, or None when it can."""
    import shutil

    if device_type == "cpu" and not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
                                     or shutil.which("clang++")):
        return ("torch.compile on the CPU needs a C++ compiler (it generates C++), and none was found: install "
                "one (e.g. `apt-get install g++`)")
    return None


def _compiled(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """`model` itself, or with `--compile` a compiled view of it that shares its parameters (so checkpoints,
    evaluation and export keep using the eager module and its key names)."""
    if not config.compile:
        return model
    problem = compile_problem(device.type)
    if problem:
        raise TrainingError(f"--compile: {problem}, or train without --compile")
    return compile_model(model, device.type)


def compile_model(model: nn.Module, device_type: str) -> nn.Module:
    """`torch.compile(model)`. For a CPU, without the "No CUDA runtime is found" warning that a CUDA build of
    PyTorch logs on a machine without a GPU when its C++ builder is first imported: it is about CUDA, not
    about this compilation."""
    if device_type == "cpu" and "torch.utils.cpp_extension" not in sys.modules:
        log = logging.getLogger("torch.utils.cpp_extension")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            importlib.import_module("torch.utils.cpp_extension")  # the warning is logged on import
        finally:
            log.setLevel(level)
    return torch.compile(model)


# What a resumed run may change: the length of the run, where things are, and how it runs. Everything else
# shapes the optimisation (and the step count), so a checkpoint continues only with the values it was made with.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "max_steps", "data", "model", "output", "num_workers", "device", "checkpoint_every",
    "keep_checkpoints", "log_every", "progress", "tensorboard", "compile", "gradient_checkpointing", "resume",
    "config_file", "limit_val", "new_head",
})


def _changed_on_resume(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """`setting: old there, new now` for each setting that differs from the checkpoint's and may not."""
    now = config.to_dict()
    return [f"{key}: {saved[key]!r} there, {value!r} now" for key, value in now.items()
            if key not in RESUME_MAY_CHANGE and key in saved and saved[key] != value]


def _micro_batches(loader: torch.utils.data.DataLoader, accum: int) -> Iterator[list]:
    """Groups of `accum` batches, one group per optimiser step (an incomplete last group is dropped)."""
    iterator = iter(loader)
    while True:
        group = list(itertools.islice(iterator, accum))
        if len(group) < accum:
            return
        yield group


def _sync_context(model: nn.Module, sync: bool):
    """Gradient all-reduce only on the last micro-batch of an accumulation."""
    import contextlib

    if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def _read_run_config(run: Path) -> dict[str, Any] | None:
    path = run / RUN_CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) one training run as `config` says; see the module docstring for what it writes.

    Works the same in one process and under `torchrun --nproc-per-node N` (every process calls it; only
    rank 0 writes files). Raises `TrainingError` / `DataError` with the fix for a bad request.
    """
    config.validate()
    dist = setup_distributed(config.device)
    try:
        run = Path(config.output).expanduser()
        _check_writable(run)
        with _run_lock(run) if dist.main else contextlib.nullcontext():
            return _train(config, dist)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def pretrain(config: TrainConfig) -> TrainResult:
    """SimMIM pre-training: `train` with `task="simmim"`."""
    return train(dataclasses.replace(config, task="simmim"))


def _train(config: TrainConfig, dist: Distributed) -> TrainResult:
    from tqdm.auto import tqdm

    run = Path(config.output).expanduser()
    if dist.main:
        removed = remove_stale_temporaries(run)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                        ", ".join(str(p.relative_to(run)) for p in removed))
    dist.barrier()

    # -- where we start from
    resume_state: dict[str, Any] | None = None
    history: Path | None = None  # the run folder whose metrics.jsonl this run continues
    if config.resume is not None:
        target = run if config.resume in ("latest", "auto") else Path(config.resume).expanduser()
        found = latest_checkpoint(target)
        elsewhere = found is not None and run.resolve() not in found[0].resolve().parents
        if elsewhere and list_checkpoints(run):  # --output OTHER_RUN --resume RUN would write over OTHER_RUN
            raise TrainingError(
                f"{run} already holds a run (checkpoints in {run / CHECKPOINT_DIR}); resuming {target} there would "
                "overwrite it: choose another --output"
            )
        if found is None and config.resume != "auto":
            raise TrainingError(
                f"--resume: no readable checkpoint in {target / CHECKPOINT_DIR if target.is_dir() else target}; "
                "run without --resume to start a new run there"
            )
        if found is not None:
            ckpt_path, resume_state = found
            # RUN/checkpoints/step_N.pt: RUN's metrics are this run's history; a checkpoint file elsewhere has none
            history = ckpt_path.parent.parent if ckpt_path.parent.name == CHECKPOINT_DIR else None
            if resume_state.get("task") != config.task:
                raise TrainingError(
                    f"{ckpt_path} is a {resume_state.get('task')} checkpoint, not {config.task}: resume it with "
                    f"`swinv2 {'pretrain' if resume_state.get('task') == 'simmim' else 'train'}`"
                )
            if not config.model:
                config = dataclasses.replace(config, model=resume_state["train_config"]["model"])
            config, normalisation = resolve_normalisation(config, resume_state["train_config"])
            changed = _changed_on_resume(resume_state["train_config"], config)
            if changed:
                raise TrainingError(
                    f"--resume continues {ckpt_path} with the settings it was started with, and these differ: "
                    f"{'; '.join(changed)}. Resume without them (only {', '.join(sorted(RESUME_MAY_CHANGE))} may "
                    "change), or start a new run in another --output from this run's weights (--model RUN/last)"
                )
    elif list_checkpoints(run):
        raise TrainingError(
            f"{run} already holds a run (checkpoints in {run / CHECKPOINT_DIR}); pass --resume to continue it, "
            "or choose another --output"
        )

    # -- data
    try:
        model_config_probe = (Swinv2Config.from_dict(resume_state[TRAINING_CONFIG_KEY]) if resume_state
                              else _load_source(config.model)[0])
    except ValueError as err:
        raise TrainingError(str(err)) from err
    if resume_state is None:
        config, normalisation = resolve_normalisation(config, channels=model_config_probe.num_channels)
    assert config.image_mean is not None and config.image_std is not None  # resolved above
    channels = model_config_probe.num_channels
    if len(config.image_mean) != channels or len(config.image_std) != channels:
        raise TrainingError(
            f"image_mean/image_std ({normalisation}) have {len(config.image_mean)}/{len(config.image_std)} values "
            f"but the model reads {channels} channel(s); pass --image-mean and --image-std with one value per "
            "channel"
        )
    if dist.main:
        logger.info("normalising with mean %s and std %s, from %s", list(config.image_mean),
                    list(config.image_std), normalisation)
    image_size = model_config_probe.image_hw
    spec = DataSpec(config.data, image_size, channels, config.image_mean, config.image_std,
                    config.val_fraction, config.limit_train, config.limit_val, config.seed)
    val_set: AugmentedDataset | None = None
    class_names: list[str] | None = None
    try:
        if config.task == "classification":
            transform = classification_train_transform(image_size, config.image_mean, config.image_std,
                                                       config.crop_scale or (0.08, 1.0), config.hflip,
                                                       config.randaugment, config.crop_padding)
            train_set, val_set, class_names = build_classification_data(spec, transform)
            if len(class_names) < 2:
                raise TrainingError(
                    f"{config.data} has one class ({class_names[0]}): a classifier needs at least two class "
                    "folders; add the other classes (or use the images without labels with `swinv2 pretrain`)"
                )
        else:
            patch = model_config_probe.patch_hw
            if patch[0] != patch[1]:
                raise TrainingError(f"SimMIM masking needs square patches, the model has {patch}")
            generator = MaskGenerator(image_size, config.mask_patch_size, patch[0], config.mask_ratio)
            transform = simmim_transform(image_size, config.image_mean, config.image_std,
                                         config.crop_scale or (0.67, 1.0), config.hflip, config.crop_padding)
            train_set = build_pretraining_data(spec, transform, generator)
    except (DataError, ValueError) as err:
        if isinstance(err, TrainingError):
            raise
        raise TrainingError(str(err)) from err

    # -- model
    if resume_state is not None:
        model_config = Swinv2Config.from_dict(resume_state[TRAINING_CONFIG_KEY])
        if config.model and resume_state["train_config"]["model"] != config.model:
            current = _load_source(config.model)[0]
            different = [f for f in ARCH_FIELDS if getattr(current, f) != getattr(model_config, f)]
            if different:
                changes = ", ".join(
                    f"{f}: {getattr(model_config, f)} there, {getattr(current, f)} in --model" for f in different
                )
                raise TrainingError(
                    f"the checkpoint was written by another architecture ({changes}); "
                    "resume with the --model of that run, or start a new run in another --output"
                )
        model_config.use_gradient_checkpointing = bool(config.gradient_checkpointing)
        cls = Swinv2ForImageClassification if config.task == "classification" else Swinv2ForMaskedImageModeling
        model: nn.Module = cls(model_config)
        described = f"{cls.__name__} resumed from {ckpt_path}"
        if class_names is not None and model_config.num_labels != len(class_names):
            raise TrainingError(
                f"the data has {len(class_names)} classes, the checkpoint's classifier {model_config.num_labels}; "
                "resume with the data the run was started with"
            )
        trained_on = [model_config.id2label[i] for i in range(model_config.num_labels)]
        if class_names is not None and trained_on != [str(name) for name in class_names]:
            # each row of the classifier belongs to a class by name: other folders would train the wrong rows
            raise TrainingError(
                f"the data's classes are {', '.join(map(str, class_names))}, the run was started on "
                f"{', '.join(trained_on)}; resume with the data the run was started with"
            )
    else:
        model, described = build_model(config, class_names)
    model = model.to(dist.device)
    base: Swinv2PreTrainedModel = model
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable()

    # -- steps
    world, accum, batch = dist.world_size, config.grad_accum_steps, config.batch_size
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=dist.rank, shuffle=True,
                                                  seed=config.seed, drop_last=True)
    steps_per_epoch = len(sampler) // batch // accum
    if steps_per_epoch < 1:
        raise TrainingError(
            f"the training set has {len(train_set)} images, fewer than one step needs "
            f"(batch_size {batch} x grad_accum_steps {accum} x {world} processes); lower --batch-size or add data"
        )
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_epochs * steps_per_epoch)
    warmup = max(0, min(warmup, total_steps - 1))

    ema = None
    if config.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(base, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    model = _wrap(model, config, dist)
    forward = _compiled(model, config, dist.device)
    if config.compile and dist.main:
        logger.info("--compile: the first step compiles the model's forward and backward (a minute or two)")
    # after wrapping: fully_shard replaces the parameters by sharded ones
    optimizer = build_optimizer(_unwrap(model), config, model_config_probe.depths)
    scheduler = build_scheduler(optimizer, total_steps, warmup, config.min_lr / config.lr)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=config.amp == "fp16")

    step, best_top1, best_step = 0, -1.0, None
    # running sums (loss * images, correct, images) since the last log line (row 0) and over the epoch (row 1);
    # a checkpoint keeps them, reduced over the processes, so a resumed run logs what an uninterrupted one does
    sums = torch.zeros(2, 3, dtype=torch.float64, device=dist.device)
    if resume_state is not None:
        saved_world = int(resume_state.get("world_size", world))
        if saved_world != world:
            raise TrainingError(
                f"the checkpoint was made by {saved_world} process(es) and this run has {world}: the global batch "
                f"({batch * accum * saved_world} images a step) and the step count would change. Resume with "
                f"{'torchrun --nproc-per-node ' + str(saved_world) if saved_world > 1 else 'one process'}, or "
                "start a new run from this run's weights (--model RUN/last)"
            )
        _load_full_state(model, optimizer, resume_state["model"], resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        _set_rng_state(resume_state["rng"])
        step = int(resume_state["step"])
        best_top1 = float(resume_state.get("best_top1", -1.0))
        best_step = resume_state.get("best_step")
        if step > total_steps:
            raise TrainingError(
                f"the checkpoint is at step {step}, past the {total_steps} steps of this run (the data or "
                "--epochs/--max-steps changed); resume with the run's own data and a length of at least its step"
            )
        saved = resume_state["train_config"]
        if (saved.get("epochs"), saved.get("max_steps")) != (config.epochs, config.max_steps) and dist.main:
            logger.warning(
                "the run's length changed (epochs %s, max_steps %s there; %s, %s now): the warm-up and cosine "
                "schedule follow the new length of %d steps, so the learning rate jumps to that curve's value "
                "at step %d", saved.get("epochs"), saved.get("max_steps"), config.epochs, config.max_steps,
                total_steps, step)
        if step == total_steps and dist.main:
            logger.warning("the run already reached its last step (%d): nothing left to train; to train longer, "
                           "resume with a larger --epochs", step)
        if dist.main:
            sums.copy_(resume_state["running_sums"])

    # -- files (rank 0)
    tensorboard = None
    if dist.main:
        if resume_state is not None:
            _resumed_metrics(run, step, history or run)
        elif (run / METRICS_FILE).exists():
            (run / METRICS_FILE).unlink()
        resolved = {**config.to_dict(), "resolved": {
            "world_size": world, "global_batch_size": batch * accum * world, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "warmup_steps": warmup, "device": str(dist.device),
            "model_config": base.config.to_dict(),
            "classes": class_names,
        }}
        text = json_text(resolved, indent=2) + "\n"
        atomic_write(run / RUN_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        tensorboard = _TensorBoard(run, config.tensorboard)
        logger.info("%s; %d images, %d steps of %d images (%d per epoch), %s, %d process(es)", described,
                    len(train_set), total_steps, batch * accum * world, steps_per_epoch, dist.device, world)

    def save_checkpoint() -> None:
        model_state, optim_state = _full_state(model, optimizer)  # collective: all ranks
        running = dist.all_reduce(sums.clone()).cpu()
        if not dist.main:
            return
        state = {
            "task": config.task, "step": step, "epoch": step // steps_per_epoch,
            "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "rng": _rng_state(), "best_top1": best_top1, "best_step": best_step,
            # (with the class, as save_pretrained records it: --model of this file then knows it has a classifier)
            TRAINING_CONFIG_KEY: {**base.config.to_dict(), "architectures": [type(base).__name__]},
            "train_config": config.to_dict(), "running_sums": running,
            "world_size": world,
        }
        path = checkpoint_path(run, step)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        for old in list_checkpoints(run)[config.keep_checkpoints:]:
            old.unlink(missing_ok=True)

    def diverged(what: str) -> None:
        bar.close()
        fixes = [f"a lower --lr (this run's is {config.lr:g})"]
        if not config.clip_grad or config.clip_grad > 1:
            fixes.append("--clip-grad 1")
        if config.amp != "none":
            fixes.append("fp32 (--amp none)")
        options = fixes[0] if len(fixes) == 1 else f"{', '.join(fixes[:-1])} or {fixes[-1]}"
        raise TrainingError(f"training diverged {what}; stopped without saving the weights. Start a new run with "
                            f"{options}")

    def check_finite(diverged_at: Tensor) -> None:
        """Stop before anything is written from weights that a non-finite gradient has turned into NaN."""
        first = int(diverged_at)
        if first >= 0:
            diverged(f"at step {first}: the loss or its gradients became NaN or infinite")
        # an update can overflow finite gradients into the weights (a huge lr), and SimMIM has no validation
        # to show it: the weights themselves, read with the log's synchronisation
        if not bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()):
            diverged(f"by step {step}: an update made the weights NaN or infinite")
        # fp16: the scaler skips such steps and halves its scale each time; below 1 even unscaled gradients
        # overflow, or the loss itself is NaN: no step would be taken again (get_scale() is 1 without fp16)
        if scaler.get_scale() < 1:
            diverged(f"by step {step}: under --amp fp16 the loss or its gradients stayed NaN or infinite, and "
                     f"loss scaling skipped those steps until its scale fell to {scaler.get_scale():.2g}")

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else model

    def export(folder: Path) -> None:
        """Export the (EMA) weights; a collective under FSDP, written by rank 0."""
        if config.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not dist.main:
                return
            plain = type(base)(base.config)
            plain.load_state_dict(state)
        else:
            if not dist.main:
                return
            plain = _unwrap(eval_model())
        export_model(plain, folder, config.image_mean, config.image_std)

    mixer = (batch_mixer(len(class_names), config.mixup, config.cutmix)
             if config.task == "classification" and class_names else None)
    patch_hw = model_config_probe.patch_hw
    norm_window = config.norm_target_window if config.norm_targets else None
    device = dist.device
    model.train()
    last_val: dict[str, Any] = {}
    start_epoch = step // steps_per_epoch
    windows: list[tuple[float, float]] = []  # (images, seconds) of each log window, for the run's throughput
    diverged_at = torch.full((), -1, dtype=torch.int64, device=device)  # the first step with a non-finite gradient

    for epoch in range(start_epoch, num_epochs):
        if step >= total_steps:
            break
        train_set.epoch = epoch
        sampler.set_epoch(epoch)
        done_in_epoch = step - epoch * steps_per_epoch
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=batch, sampler=_SkipSampler(sampler, done_in_epoch * accum * batch),
            num_workers=config.num_workers, drop_last=True, pin_memory=device.type == "cuda",
        )
        steps_this_epoch = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        bar = tqdm(total=steps_this_epoch, initial=done_in_epoch, desc=f"epoch {epoch + 1}/{num_epochs}",
                   disable=not (config.progress and dist.main), dynamic_ncols=True, file=sys.stderr)
        window, epoch_sums = sums[0], sums[1]  # views: zeroed at each epoch end, restored on resume
        window_start = time.perf_counter()
        for group in _micro_batches(loader, accum):
            if step >= total_steps:
                break
            torch.manual_seed(item_seed(config.seed, step, dist.rank))
            for i, (pixels, target) in enumerate(group):
                pixels = pixels.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                hard = target
                if mixer is not None:
                    pixels, target = mixer(pixels, target)
                with _sync_context(model, i == accum - 1):
                    with _autocast(device, config.amp):
                        if config.task == "classification":
                            logits = forward(pixel_values=pixels).logits.float()
                            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
                        else:
                            out = forward(pixel_values=pixels, bool_masked_pos=target)
                            loss = (simmim_loss(pixels, out.reconstruction, target, patch_hw, norm_window)
                                    if norm_window else out.loss.float())
                    # outside autocast, which would recast the backward's own ops (on a CPU without bf16
                    # units, whose forward fell back to fp32, into slow emulated bf16)
                    scaler.scale(loss / accum).backward()
                n = pixels.shape[0]
                correct = (logits.argmax(-1) == hard).sum() if config.task == "classification" and mixer is None else 0
                stats = torch.stack([loss.detach().double() * n, torch.as_tensor(correct, device=device).double(),
                                     torch.tensor(float(n), device=device, dtype=torch.float64)])
                window += stats
                epoch_sums += stats
            grad_norm = None
            if config.clip_grad:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            if not scaler.is_enabled():  # fp16's scaler skips a step whose gradients are not finite: no failure
                if grad_norm is None:
                    grads = [p.grad for p in model.parameters() if p.grad is not None]
                    grad_norm = torch.nn.utils.get_total_norm(grads)
                # the same on every process (the gradients are all-reduced); read at the next log or checkpoint,
                # so that watching it costs no synchronisation per step
                diverged_at = torch.where((diverged_at < 0) & ~grad_norm.isfinite(), step + 1, diverged_at)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[-1]["lr"]  # the top group: the peak lr times the schedule
            with warnings.catch_warnings():
                # fp16: the scaler skips the steps whose gradients overflowed; the schedule goes on regardless
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            if ema is not None:
                ema.update_parameters(_unwrap(model))
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total_steps:
                check_finite(diverged_at)
                reduced = dist.all_reduce(window.clone())
                elapsed = time.perf_counter() - window_start
                images = float(reduced[2])
                windows.append((images, elapsed))
                record = {"kind": "train", "step": step, "epoch": step / steps_per_epoch,
                          "loss": float(reduced[0] / images), "lr": lr, "img_per_s": images / max(elapsed, 1e-9)}
                if config.task == "classification" and mixer is None:
                    record["top1"] = float(reduced[1] / images)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{record['img_per_s']:.0f}")
                if dist.main:
                    _append_metrics(run, record)
                    tensorboard.log(record)
                window.zero_()
                window_start = time.perf_counter()
            if step % config.checkpoint_every == 0 and step < total_steps and step % steps_per_epoch != 0:
                check_finite(diverged_at)
                save_checkpoint()
        bar.close()
        check_finite(diverged_at)  # before the epoch's evaluation, export and checkpoint

        # -- epoch end (or the last step)
        reduced = dist.all_reduce(epoch_sums.clone())
        sums.zero_()  # a partial log window is not carried into the next epoch
        record = {"kind": "val" if val_set is not None else "epoch", "step": step, "epoch": step / steps_per_epoch}
        if reduced[2] > 0:
            record["train_loss"] = float(reduced[0] / reduced[2])
            if config.task == "classification" and mixer is None:
                record["train_top1"] = float(reduced[1] / reduced[2])
        if val_set is not None:
            raw = _evaluate_loader(_unwrap(eval_model()), val_set, len(class_names), dist, batch, config.num_workers,
                                   config.amp)
            if not math.isfinite(raw["loss"]):  # weights that an fp16 run kept finite can still give NaN
                diverged(f"by step {step}: the model gives NaN or infinite outputs on the validation images")
            last_val = {"loss": raw["loss"], "top1": raw["top1"], "top5": raw["top5"], "raw": raw}
            record.update(val_loss=raw["loss"], val_top1=raw["top1"], val_top5=raw["top5"])
            if raw["top1"] > best_top1:
                best_top1, best_step = raw["top1"], step
                export(run / "best")
            if dist.main:
                logger.info("epoch %d: val top-1 %.4f, top-5 %.4f, loss %.4f", epoch + 1, raw["top1"], raw["top5"],
                            raw["loss"])
        if dist.main:
            _append_metrics(run, record)
            tensorboard.log(record)
        save_checkpoint()

    # -- the end: export, final metrics, plots
    export(run / "last")
    metrics: dict[str, Any] = {"steps": step}
    if dist.main:
        records = read_metrics(run)
        train_records = [r for r in records if r["kind"] == "train"]
        if train_records:
            metrics["train_loss"] = train_records[-1]["loss"]
        if val_set is not None and last_val:
            result = _eval_result(last_val["raw"], class_names)
            metrics.update(top1=result.top1, top5=result.top5, val_loss=result.loss, best_top1=best_top1,
                           best_step=best_step, per_class=result.per_class)
            # the final weights' scores (last/), which best/ need not be: say which, and when
            scored = {**result.to_dict(), "weights": "last", "step": step}
            text = json_text(scored, indent=2) + "\n"
            atomic_write(run / EVAL_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            plot_confusion(result.confusion, result.class_names, run / "confusion_matrix.png",
                           title=f"last/ (step {step})")
        plot_run(run)
        if config.task == "simmim":
            plot_reconstructions(_unwrap(eval_model()), train_set, run / "reconstructions.png",
                                 config.image_mean, config.image_std, norm_window)
        if tensorboard is not None:
            tensorboard.close()
    # the first window pays for the start (workers, first allocations): left out when there are others
    steady = windows[1:] or windows
    seconds = sum(t for _, t in steady)
    images_per_second = sum(n for n, _ in steady) / seconds if seconds else 0.0
    metrics["img_per_s"] = images_per_second
    dist.barrier()
    best = run / "best" if (run / "best").is_dir() else None
    return TrainResult(run, run / "last", best, step, metrics, images_per_second)


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    with warnings.catch_warnings():  # class names in scripts the font lacks (CJK...) draw as boxes: no warning each
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def plot_learning_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                         train_key: str = "loss", val_key: str | None = "val_loss", ylabel: str = "loss") -> None:
    """One figure with a line per run of `train_key` over the "train" records and, when present, markers
    of `val_key` over the epoch-end records; x is the epoch. `runs` maps a label to metrics records."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, records in runs.items():
        train = [r for r in records if r.get("kind") == "train" and train_key in r]
        if train:
            line, = ax.plot([r["epoch"] for r in train], [r[train_key] for r in train],
                            label=f"{label} train".strip())
            color = line.get_color()
        else:
            color = None
        if val_key:
            val = [r for r in records if r.get("kind") in ("val", "epoch") and val_key in r]
            if val:
                ax.plot([r["epoch"] for r in val], [r[val_key] for r in val], "o--", color=color,
                        label=f"{label} val".strip())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, Path(path))
    plt.close(fig)


def plot_run(run: str | os.PathLike) -> list[Path]:
    """`loss.png`, `lr.png` and (classification) `accuracy.png` of a run folder, from its metrics.jsonl."""
    run = Path(run)
    records = read_metrics(run)
    written = []
    if not records:
        return written
    plot_learning_curves({"": records}, run / "loss.png")
    written.append(run / "loss.png")
    plt = _pyplot()
    train = [r for r in records if r["kind"] == "train"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    _save_figure(fig, run / "lr.png")
    plt.close(fig)
    written.append(run / "lr.png")
    val = [r for r in records if r["kind"] == "val"]
    if val:
        fig, ax = plt.subplots(figsize=(7, 4))
        if any("train_top1" in r for r in val):
            ax.plot([r["epoch"] for r in val if "train_top1" in r], [r["train_top1"] for r in val if "train_top1" in r],
                    "o-", label="train top-1 (training batches)")
        ax.plot([r["epoch"] for r in val], [r["val_top1"] for r in val], "o-", label="val top-1")
        ax.plot([r["epoch"] for r in val], [r["val_top5"] for r in val], "o--", label="val top-5")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        _save_figure(fig, run / "accuracy.png")
        plt.close(fig)
        written.append(run / "accuracy.png")
    return written


def plot_confusion(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> None:
    """The confusion matrix, rows = true class, normalised per row, with the counts written in the cells;
    `title` names the weights scored."""
    plt = _pyplot()
    matrix = np.asarray(confusion, dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    _save_figure(fig, Path(path))
    plt.close(fig)


@torch.no_grad()
def plot_reconstructions(model: Swinv2ForMaskedImageModeling, dataset: AugmentedDataset, path: str | os.PathLike,
                         mean: Sequence[float], std: Sequence[float], norm_window: int | None = None,
                         count: int = 8) -> None:
    """A grid of SimMIM results, one column per image: the original, the masked input (hidden patches grey)
    and the prediction of the hidden patches pasted into the visible ones.

    With normalised targets the model predicts locally normalised pixels, which cannot be mapped back
    without the hidden pixels' statistics; the grid then shows the normalised target and the prediction,
    each stretched to its own range, in place of the last row.
    """
    plt = _pyplot()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # spread over the dataset: its first images are often one folder's (one class, one kind of picture)
    chosen = sorted({i * len(dataset) // min(count, len(dataset)) for i in range(min(count, len(dataset)))})
    items = [dataset[i] for i in chosen]
    pixels = torch.stack([p for p, _ in items]).to(device)
    masks = torch.stack([m for _, m in items]).to(device)
    prediction = model(pixel_values=pixels, bool_masked_pos=masks).reconstruction.float()
    model.train(was_training)
    pixel_mask = masked_pixels(masks, model.config.patch_hw, *pixels.shape[-2:])
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def as_images(x: Tensor) -> np.ndarray:
        """(B, C, H, W) in [0, 1] -> what imshow takes: (B, H, W) for one channel, else (B, H, W, C)."""
        x = x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return x[..., 0] if x.shape[-1] == 1 else x

    def stretch(x: Tensor) -> Tensor:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return (x - low) / (high - low).clamp(min=1e-6)

    original = pixels * std_t + mean_t
    rows = {
        "original": as_images(original),
        "masked": as_images(original * (1 - pixel_mask) + 0.5 * pixel_mask),
    }
    if norm_window:
        target = norm_targets(pixels.float(), norm_window)
        rows["target (normalised)"] = as_images(stretch(target))
        rows["prediction"] = as_images(stretch(prediction * pixel_mask + target * (1 - pixel_mask)))
    else:
        rows["reconstructed"] = as_images(prediction * pixel_mask * std_t + mean_t * pixel_mask
                                          + original * (1 - pixel_mask))
    n = pixels.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.5 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c], cmap="gray" if images[c].ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    _save_figure(fig, Path(path))
    plt.close(fig)
