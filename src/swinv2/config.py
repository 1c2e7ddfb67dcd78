"""`Swinv2Config`: the architecture and the output switches, read from and written to `config.json`.

The file format is the one transformers writes for `model_type: "swinv2"`, so a folder saved by either
library loads in the other. Keys we do not know are kept and written back unchanged.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

# transformers' names (ACT2FN), without its two with learnable parameters (prelu, xielu), so that a config
# written here loads in transformers; and "selu", which the documentation lists though transformers 4.57 has
# no such name (a config with it loads here only)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python",
               "gelu_python_tanh", "gelu_10", "quick_gelu", "laplace", "relu", "relu2", "relu6", "leaky_relu",
               "linear", "silu", "swish", "mish", "tanh", "sigmoid", "selu")
LEARNABLE_ACTIVATIONS = ("prelu", "xielu")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
CONFIG_NAME = "config.json"

# Fields of transformers' PretrainedConfig that a Swin V2 config.json may carry and that we understand.
# What transformers' shifted windows add across regions (its -100 mask is added twice; see `shift_mask_value`).
SHIFT_MASK_VALUE = -200.0
# How shifted windows are laid out where the geometry leaves a choice (`Swinv2Config.window_layout`).
WINDOW_LAYOUTS = ("transformers", "timm", "torchvision", "microsoft")


def stage_window(resolution: int, window: int, shrink: bool = True, always_shift: bool = False) -> tuple[int, int]:
    """A stage's window and shift from its grid side `resolution`: a window larger than the grid shrinks to
    the grid (transformers, timm; with `shrink=False` it stays, and the grid is padded up to it, as in
    torchvision), and where one window covers the grid nothing is shifted (with `always_shift`, half a window
    all the same: timm's `always_partition`)."""
    own = max(1, min(window, resolution)) if shrink else window
    return own, (window // 2 if always_shift or resolution > own else 0)


def stage_windows(window_size: Any, num_stages: int) -> list[tuple[int, int]]:
    """Each stage's target window `(height, width)` from `window_size` as timm takes it: one side for every
    stage, one `(height, width)` for every stage (a list of two ints is always that), or one of either per
    stage. Raises a ValueError naming the field for anything else."""

    def side(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    def window(value: Any) -> tuple[int, int] | None:
        if side(value):
            return value, value
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(map(side, value)):
            return int(value[0]), int(value[1])
        return None

    single = window(window_size)
    if single is not None:
        return [single] * num_stages
    if isinstance(window_size, Sequence) and not isinstance(window_size, str) and len(window_size) == num_stages:
        windows = [window(value) for value in window_size]
        if all(w is not None for w in windows):
            return windows
    raise ValueError(
        f"window_size must be a positive int (a square window), a pair of them (height, width), or one of either "
        f"per stage ({num_stages}), got {window_size!r}{_fix('window_size')}"
    )


_COMMON_DEFAULTS: dict[str, Any] = {
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "problem_type": None,
    "architectures": None,
    "torch_dtype": None,
    "torchscript": False,
    # feed-forward layers run over the sequence in chunks of this many tokens, 0 all at once; transformers'
    # Swin V2 never chunks, nor do we: kept for code that reads it and for config.json's round trip
    "chunk_size_feed_forward": 0,
}


# transformers' PretrainedConfig fields for text generation and other model kinds, which mean nothing to an
# image encoder: accepted (as from_pretrained overrides, or in config.json) and kept verbatim, as there.
GENERIC_FIELDS = frozenset({
    "add_cross_attention", "bad_words_ids", "begin_suppress_tokens", "bos_token_id",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty", "finetuning_task",
    "forced_bos_token_id", "forced_eos_token_id", "is_decoder", "is_encoder_decoder", "length_penalty",
    "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams", "num_return_sequences",
    "output_scores", "pad_token_id", "prefix", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k", "top_p",
    "transformers_version", "typical_p", "use_bfloat16",
})


# What transformers' PretrainedConfig answers for generic fields that config.json did not set: read by code
# written for transformers (`config.is_encoder_decoder`, `config.pruned_heads`), never written by to_dict.
_GENERIC_DEFAULTS: dict[str, Any] = {
    "is_encoder_decoder": False, "is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True,
    "tie_encoder_decoder": False, "pruned_heads": {}, "tokenizer_class": None, "prefix": None,
    "bos_token_id": None, "pad_token_id": None, "eos_token_id": None, "sep_token_id": None,
    "decoder_start_token_id": None, "finetuning_task": None, "task_specific_params": None,
    "cross_attention_hidden_size": None, "tf_legacy_loss": False, "use_bfloat16": False,
}


def _dtype_name(dtype: Any) -> str | None:
    """A dtype as config.json spells it ("float16"), from a torch.dtype or a string."""
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _fix(name: str) -> str:
    """How to mend a bad value of field `name`, for its error: its default."""
    return f"; e.g. {name}={_DEFAULTS[name]!r} (the default)" if name in _DEFAULTS else ""


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}{_fix(name)}")


def _lists(value: Any) -> Any:
    """Tuples as lists, nested too: what config.json gives back."""
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _int_list(value: Any, name: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a list of ints, got {value!r}")
    return [int(v) for v in value]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{_fix(name)}")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


class Swinv2Config:
    """Configuration of a Swin Transformer V2 model.

    The defaults give the `microsoft/swinv2-tiny-patch4-window8-256` architecture family (with the
    documented `image_size=224, window_size=7`). Every argument is validated here, so a wrong value fails
    with a `ValueError` naming the field instead of a shape error deep inside the model.

    Args:
        image_size: input resolution the model is built for (int or (height, width)). Other sizes run too;
            windows and shifts are sized from this value, as in transformers.
        patch_size: side of the square patches embedded by the stem.
        num_channels: input channels.
        embed_dim: width of the first stage; stage i has `embed_dim * 2**i` channels.
        depths: number of blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the square attention windows. With `window_layout` "timm" or "torchvision" also
            as those libraries take it: `(height, width)`, or one side or `(height, width)` per stage (a list of
            two ints is always one `(height, width)`).
        pretrained_window_sizes: per stage, the window the weights were trained with (0: this window);
            the log-spaced coordinates of the continuous position bias are normalised by it.
        mlp_ratio: hidden width of the MLP relative to the stage width.
        qkv_bias: learn biases for the query and the value (the key never has one).
        hidden_dropout_prob: dropout after the embeddings and the MLP.
        attention_probs_dropout_prob: dropout on the attention probabilities and the attention output.
        drop_path_rate: stochastic depth rate of the last block, growing linearly from 0 at the first.
        hidden_act: MLP non-linearity.
        use_absolute_embeddings: add learned absolute position embeddings to the patch embeddings.
        initializer_range: standard deviation of the normal weight initialisation.
        layer_norm_eps: epsilon of the LayerNorms inside the blocks and after the last stage.
        encoder_stride: upsampling factor of the SimMIM decoder.
        out_features / out_indices: stages returned by `Swinv2Backbone` ("stem", "stage1", ...).
        **kwargs: `num_labels`, `id2label`, `label2id`, `problem_type`, `output_hidden_states`,
            `output_attentions`, `return_dict`, `use_gradient_checkpointing`, `check_finite_inputs`;
            anything else is kept verbatim and written back to `config.json`.
            `check_finite_inputs` decides whether `forward` rejects NaN/Inf pixel values with a ValueError:
            None (default) checks tensors on the CPU only, True checks on every device (on a GPU that costs
            a host synchronisation per call), False never checks.
            `shift_mask_value` is what a shifted window adds to the scores of token pairs from different
            regions of the rolled grid: -200 by default, what transformers' `Swinv2SelfAttention` adds (its
            -100 mask, added twice); -100 in Microsoft's code, timm and torchvision, whose checkpoints are
            read with -100. It matters only when scaled cosine scores span ~100 (logit scales near their
            clamp, 100): then each implementation's numbers are those of the weights' own library.
            `window_layout`: which library's geometry the model follows where the libraries part.
            "transformers" (the default): an image that is no whole number of patches is zero-padded to
            whole patches; each stage's square window and shift are sized from the patch grid's height at
            `image_size` halved with rounding down from stage to stage (a window larger than the grid
            shrinks to it), and a shifted block pads its grid to whole windows, then rolls it. "timm": the
            patch convolution drops the partial patches; window and shift are sized per side from the grid
            each stage runs on (odd grids are padded before merging: rounded up), so a window shrinks to a
            narrow grid along that side only, and a grid is rolled, then padded. "torchvision": partial
            patches dropped; a square window that never shrinks (a smaller grid is padded up to it),
            shifted along each side where the grid of each input (not the one at `image_size`) spans more
            than one window; padded, then rolled. "microsoft" (the paper's
            code): partial patches dropped; as transformers, but sized from the grid's shorter side (a
            portrait grid's width). Each library's checkpoints are read with its own. They give other
            numbers where a grid is not whole windows (e.g. 224 px with window 8: stage 3 is 14x14 patches,
            stage 4 7x7), is not square, a small stage follows an odd grid, or an image is no whole number
            of patches.
            `always_partition` (with window_layout "timm" only): timm's `always_partition=True`, windows that
            never shrink (a smaller grid is padded up to them) and every other block shifted by half a window
            whatever the grid.
    """

    model_type = "swinv2"
    _commit_hash: str | None = None  # (what transformers' pipelines read from a hub config; never saved)

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 4,
        num_channels: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] | Sequence[int | Sequence[int]] = 7,
        pretrained_window_sizes: Sequence[int] = (0, 0, 0, 0),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.1,
        hidden_act: str = "gelu",
        use_absolute_embeddings: bool = False,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        encoder_stride: int = 32,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        # a string would become a list of characters
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = list(patch_size) if isinstance(patch_size, (list, tuple)) else patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.depths = list(depths) if isinstance(depths, (list, tuple)) else depths
        self.num_heads = list(num_heads) if isinstance(num_heads, (list, tuple)) else num_heads
        self.window_size = window_size  # (lists, as config.json gives it back: `validate`)
        self.pretrained_window_sizes = (
            list(pretrained_window_sizes)
            if isinstance(pretrained_window_sizes, (list, tuple))
            else pretrained_window_sizes
        )
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.hidden_act = hidden_act
        self.use_absolute_embeddings = use_absolute_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.encoder_stride = encoder_stride

        kwargs.pop("model_type", None)
        # Derived in transformers' config.json; recomputed here, never trusted from the file.
        for derived in ("num_layers", "hidden_size", "stage_names", "use_return_dict", "num_hidden_layers",
                        "num_attention_heads"):
            kwargs.pop(derived, None)
        for name, default in _COMMON_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        dtype = kwargs.pop("dtype", None)  # transformers' newer name of torch_dtype, which wins there
        self.torch_dtype = _dtype_name(dtype if dtype is not None else self.torch_dtype)
        self.use_gradient_checkpointing = kwargs.pop("use_gradient_checkpointing", False)
        self.check_finite_inputs = kwargs.pop("check_finite_inputs", None)
        self.shift_mask_value = kwargs.pop("shift_mask_value", SHIFT_MASK_VALUE)
        self.window_layout = kwargs.pop("window_layout", "transformers")
        self.always_partition = kwargs.pop("always_partition", False)

        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if id2label is None and isinstance(label2id, dict) and label2id:
            # names given one way only: the other way is their inverse (transformers drops such a label2id
            # for LABEL_i placeholders, which then disagree with it in the saved config)
            indices = sorted(int(v) for v in label2id.values())
            if indices != list(range(len(label2id))):
                raise ValueError(
                    f"label2id must map the names to the class indices 0..{len(label2id) - 1}, got {label2id}"
                )
            id2label = {int(v): str(k) for k, v in label2id.items()}
        if id2label is not None:
            if not isinstance(id2label, dict):
                raise ValueError(f"id2label must be a mapping of class index to name, got {type(id2label).__name__}")
            try:
                self.id2label = {int(k): str(v) for k, v in id2label.items()}
            except (TypeError, ValueError) as err:
                raise ValueError(f"id2label keys must be class indices, got {list(id2label)[:5]}") from err
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(
                    f"num_labels={num_labels} disagrees with id2label, which has {len(self.id2label)} entries"
                )
        else:
            n = 2 if num_labels is None else num_labels
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"num_labels must be a non-negative int, got {n!r}")
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        if label2id is not None:
            if not isinstance(label2id, dict):
                raise ValueError(f"label2id must be a mapping of name to class index, got {type(label2id).__name__}")
            self.label2id = {str(k): int(v) for k, v in label2id.items()}
        else:
            self.label2id = {v: k for k, v in self.id2label.items()}

        self.extra = kwargs  # unknown keys survive a round trip through config.json
        self.validate()
        self._out_features, self._out_indices = self._align_outputs(out_features, out_indices)

    # ------------------------------------------------------------------ keys we do not know
    def __getattr__(self, name: str) -> Any:
        """A key we do not know, read as an attribute (transformers sets every key as one)."""
        extra = self.__dict__.get("extra", {})  # (not self.extra: unset while copy or pickle rebuild a config)
        if name in extra:
            return extra[name]
        if name in _GENERIC_DEFAULTS:
            return copy.copy(_GENERIC_DEFAULTS[name])  # a fresh {} for pruned_heads
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # After __init__, a name that is no field and no property is a key we do not know: it goes with the
        # others in `extra`, so that to_dict and config.json keep it (as transformers keeps any attribute).
        unknown = name not in self.__dict__ and not hasattr(type(self), name) and not name.startswith("_")
        if unknown and "extra" in self.__dict__:
            self.extra[name] = value
        else:
            super().__setattr__(name, value)

    def update(self, config_dict: Mapping[str, Any]) -> None:
        """Set each key of `config_dict` as an attribute, as transformers' `update` does; the values derived
        from others that `to_dict` writes (num_layers, hidden_size, ...) are skipped, and nothing is changed
        when the result is not a valid config."""
        derived = {name for name in config_dict if isinstance(getattr(type(self), name, None), property)
                   and getattr(type(self), name).fset is None}
        updated = copy.deepcopy(self)
        for key, value in config_dict.items():
            if key not in derived:
                setattr(updated, key, value)
        updated.validate()
        self.__dict__.update(updated.__dict__)

    # ------------------------------------------------------------------ transformers' generic attributes
    attribute_map: ClassVar[dict[str, str]] = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    @property
    def torch_dtype(self) -> torch.dtype | str | None:
        """The dtype the weights were saved or loaded in, as a `torch.dtype` (config.json spells it "float32");
        None when unknown. `dtype` is its newer name."""
        name = self.__dict__.get("_dtype_name")
        dtype = getattr(torch, name, None) if name is not None else None
        return dtype if isinstance(dtype, torch.dtype) else name

    @torch_dtype.setter
    def torch_dtype(self, value: torch.dtype | str | None) -> None:
        self._dtype_name = _dtype_name(value)

    dtype = torch_dtype

    @property
    def name_or_path(self) -> str:
        """The folder, file or name the config was read from ("" for one built in code), as in transformers."""
        return self.__dict__.get("_name_or_path", "")

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(value)

    # ------------------------------------------------------------------ derived values
    @property
    def num_layers(self) -> int:
        return len(self.depths)

    # transformers' attribute_map names
    @property
    def num_hidden_layers(self) -> int:
        """`num_layers`, the number of stages."""
        return self.num_layers

    @property
    def num_attention_heads(self) -> list[int]:
        """`num_heads`, the heads of each stage."""
        return self.num_heads

    @property
    def hidden_size(self) -> int:
        """Channels after the last stage."""
        return int(self.embed_dim * 2 ** (self.num_layers - 1))

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_layers + 1)]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"num_labels must be a non-negative int, got {value!r}")
        if value != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        """Whether forwards return output objects: `return_dict`, unless `torchscript` asks for tuples (as in
        transformers, for `torch.jit.trace`)."""
        return bool(self.return_dict) and not self.torchscript

    @property
    def out_features(self) -> list[str]:
        return list(self._out_features)

    @out_features.setter
    def out_features(self, value: list[str] | None) -> None:
        self._out_features, self._out_indices = self._align_outputs(value, None)

    @property
    def out_indices(self) -> list[int]:
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, value: list[int] | None) -> None:
        self._out_features, self._out_indices = self._align_outputs(None, value)

    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size, "image_size")

    @property
    def patch_hw(self) -> tuple[int, int]:
        return _pair(self.patch_size, "patch_size")

    @property
    def drops_partial_patches(self) -> bool:
        """Whether an image that is no whole number of patches loses its last rows and columns (the patch
        convolutions of timm, torchvision and Microsoft's code) instead of being zero-padded (transformers)."""
        return self.window_layout != "transformers"

    def stage_window(self, stage: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window and shift of `stage`, each as (height, width), as `window_layout` sizes them at
        `image_size`. transformers: square, from the patch grid's height halved with rounding down from stage
        to stage (Microsoft's code: from its shorter side). timm: each side from that side of the grid the
        stage runs on (halved with rounding up), so a window shrinks to a narrow grid along that side alone
        (with `always_partition`, never, and every shifted block shifts by half of it); torchvision: a window
        that never shrinks, shifted along the sides it does not cover whole (the model decides that for each
        input's grid: `Swinv2Block.shift_for`). timm's and torchvision's windows are `target_window`'s."""
        height, width = (size // patch for size, patch in zip(self.image_hw, self.patch_hw))
        if self.window_layout in ("transformers", "microsoft"):
            side = (height if self.window_layout == "transformers" else min(height, width)) // 2**stage
            window, shift = stage_window(side, self.window_size)
            return (window, window), (shift, shift)
        grid = (-(-height // 2**stage), -(-width // 2**stage))
        shrink = self.window_layout == "timm" and not self.always_partition
        (wh, sh), (ww, sw) = (
            stage_window(side, target, shrink=shrink, always_shift=self.always_partition)
            for side, target in zip(grid, self.target_window(stage))
        )
        return (wh, ww), (sh, sw)

    def target_window(self, stage: int) -> tuple[int, int]:
        """The window `(height, width)` that `window_size` gives `stage`, before `stage_window` fits it to
        the stage's grid."""
        return stage_windows(self.window_size, len(self.depths))[stage]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise a ValueError naming the field and a good value for any value that builds no model (also
        for those set as attributes after construction: every model checks its config when built)."""
        image = _pair(self.image_size, "image_size")
        patch = _pair(self.patch_size, "patch_size")
        if min(image) < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size!r}{_fix('image_size')}")
        if min(patch) < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size!r}{_fix('patch_size')}")
        for name in ("num_channels", "embed_dim", "encoder_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}{_fix(name)}")
        self.depths = _int_list(self.depths, "depths")
        self.num_heads = _int_list(self.num_heads, "num_heads")
        self.pretrained_window_sizes = _int_list(self.pretrained_window_sizes, "pretrained_window_sizes")
        if not self.depths:
            raise ValueError("depths must name at least one stage")
        if len(self.num_heads) != len(self.depths):
            raise ValueError(
                f"depths and num_heads must have one entry per stage: depths has {len(self.depths)} "
                f"({self.depths}), num_heads has {len(self.num_heads)} ({self.num_heads})"
            )
        if len(self.pretrained_window_sizes) < len(self.depths):
            # Longer lists are allowed: transformers' default [0, 0, 0, 0] travels with 2- and 3-stage configs.
            raise ValueError(
                f"pretrained_window_sizes must have one entry per stage ({len(self.depths)}), "
                f"got {self.pretrained_window_sizes}"
            )
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must all be >= 1, got {self.depths}")
        self.window_size = _lists(self.window_size)
        stage_windows(self.window_size, len(self.depths))
        if any(h < 1 for h in self.num_heads):
            raise ValueError(f"num_heads must all be >= 1, got {self.num_heads}")
        if any(w < 0 for w in self.pretrained_window_sizes):
            raise ValueError(f"pretrained_window_sizes must be >= 0, got {self.pretrained_window_sizes}")
        for i, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**i
            if dim % heads:
                raise ValueError(
                    f"embed_dim: stage {i + 1} has {dim} channels (embed_dim * 2**{i}), which num_heads[{i}]"
                    f"={heads} does not divide"
                )
        self.mlp_ratio = _number(self.mlp_ratio, "mlp_ratio")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}{_fix('mlp_ratio')}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = _number(getattr(self, name), name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
            setattr(self, name, value)
        self.initializer_range = _number(self.initializer_range, "initializer_range")
        if self.initializer_range < 0:  # a standard deviation
            raise ValueError(
                f"initializer_range must be >= 0, got {self.initializer_range}{_fix('initializer_range')}"
            )
        self.layer_norm_eps = _number(self.layer_norm_eps, "layer_norm_eps")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}{_fix('layer_norm_eps')}")
        for name in ("qkv_bias", "use_absolute_embeddings", "output_hidden_states", "output_attentions",
                     "return_dict", "use_gradient_checkpointing"):
            _flag(getattr(self, name), name)
        if not (self.check_finite_inputs is None or isinstance(self.check_finite_inputs, bool)):
            raise ValueError(
                f"check_finite_inputs must be None (check CPU inputs), true or false, got {self.check_finite_inputs!r}"
            )
        self.shift_mask_value = _number(self.shift_mask_value, "shift_mask_value")  # (no _fix: not an argument)
        if not -1e4 <= self.shift_mask_value < 0:  # (large enough to vanish in softmax, finite in fp16)
            raise ValueError(
                f"shift_mask_value must be negative and at least -1e4, got {self.shift_mask_value}; e.g. "
                f"{SHIFT_MASK_VALUE} (transformers', the default) or -100.0 (Microsoft's, timm's, torchvision's)"
            )
        if self.window_layout not in WINDOW_LAYOUTS:
            raise ValueError(
                f"window_layout must be one of {', '.join(map(repr, WINDOW_LAYOUTS))}, got {self.window_layout!r}"
            )
        if not isinstance(self.window_size, int) and self.window_layout in ("transformers", "microsoft"):
            raise ValueError(
                f"window_size {self.window_size!r}: window_layout {self.window_layout!r} has one square window "
                "side for every stage (an int), as transformers and Microsoft's code; rectangular and per-stage "
                "windows are timm's and torchvision's (window_layout='timm' or 'torchvision')"
            )
        _flag(self.always_partition, "always_partition")
        if self.always_partition and self.window_layout != "timm":
            raise ValueError(
                f"always_partition is timm's setting and needs window_layout='timm', got {self.window_layout!r}"
            )
        if self.hidden_act in LEARNABLE_ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} has learnable parameters, which the MLP here does not hold (nor "
                f"do the Microsoft, timm and torchvision layouts): use one of {', '.join(ACTIVATIONS)}"
            )
        if not callable(self.hidden_act) and self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {', '.join(ACTIVATIONS)} (or a callable), got "
                             f"{self.hidden_act!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES} or None, got {self.problem_type!r}")

    def _align_outputs(
        self, out_features: list[str] | None, out_indices: list[int] | None
    ) -> tuple[list[str], list[int]]:
        names = self.stage_names
        if out_features is not None:
            if isinstance(out_features, str) or not isinstance(out_features, Sequence):
                raise ValueError(f"out_features must be a list of stage names, got {out_features!r}")
            out_features = list(out_features)
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"out_features: unknown stage(s) {unknown}; the stages are {names}")
            if len(set(out_features)) != len(out_features):
                raise ValueError(f"out_features must not repeat a stage, got {out_features}")
            if out_features != [n for n in names if n in out_features]:
                raise ValueError(f"out_features must follow the stage order {names}, got {out_features}")
        if out_indices is not None:
            if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
                raise ValueError(f"out_indices must be a list of stage indices, got {out_indices!r}")
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
                raise ValueError(f"out_indices must be a list of ints, got {out_indices!r}")
            if any(not -len(names) <= i < len(names) for i in out_indices):
                raise ValueError(f"out_indices must index the stages {names}, got {list(out_indices)}")
            positive = [i % len(names) for i in out_indices]
            if len(set(positive)) != len(positive):
                raise ValueError(f"out_indices must not repeat a stage, got {list(out_indices)}")
            if positive != sorted(positive):
                raise ValueError(f"out_indices must follow the stage order, got {list(out_indices)}")
            out_indices = list(out_indices)
        if out_features is None and out_indices is None:
            return [names[-1]], [len(names) - 1]
        if out_features is None:
            return [names[i] for i in out_indices], out_indices
        if out_indices is None:
            return out_features, [names.index(f) for f in out_features]
        if out_features != [names[i] for i in out_indices]:
            raise ValueError(
                f"out_features {out_features} and out_indices {out_indices} must name the same stages"
            )
        return out_features, out_indices

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields, in the layout of transformers' `config.json`."""
        out: dict[str, Any] = {
            "model_type": self.model_type,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window_size,
            "pretrained_window_sizes": list(self.pretrained_window_sizes),
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "drop_path_rate": self.drop_path_rate,
            "hidden_act": self.hidden_act,
            "use_absolute_embeddings": self.use_absolute_embeddings,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "encoder_stride": self.encoder_stride,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "stage_names": self.stage_names,
            "out_features": self.out_features,
            "out_indices": self.out_indices,
            "id2label": dict(self.id2label),  # int keys, as transformers' (JSON writes them as strings)
            "label2id": dict(self.label2id),
        }
        for name in _COMMON_DEFAULTS:
            value = self._dtype_name if name == "torch_dtype" else getattr(self, name)
            if value is not None or name == "problem_type":
                out[name] = value
        if self._dtype_name is not None:  # under both names: transformers reads dtype first, older ones torch_dtype
            out["dtype"] = self._dtype_name
        if self.use_gradient_checkpointing:
            out["use_gradient_checkpointing"] = True
        if self.check_finite_inputs is not None:
            out["check_finite_inputs"] = self.check_finite_inputs
        if self.shift_mask_value != SHIFT_MASK_VALUE:
            out["shift_mask_value"] = self.shift_mask_value
        if self.window_layout != "transformers":
            out["window_layout"] = self.window_layout
        if self.always_partition:
            out["always_partition"] = True
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> Swinv2Config:
        data = copy.deepcopy(data)
        if "num_labels" in overrides and "id2label" not in overrides:
            # A new head size replaces the stored label names, as in transformers.
            stored = data.get("id2label")
            if stored is None or len(stored) != overrides["num_labels"]:
                data.pop("id2label", None)
                data.pop("label2id", None)
        for given, stored in (("out_features", "out_indices"), ("out_indices", "out_features")):
            if given in overrides and stored not in overrides:  # the stored other half named the old stages
                data.pop(stored, None)
        data.update(overrides)
        model_type = data.get("model_type", cls.model_type)
        if model_type not in (cls.model_type, "swin", None):
            raise ValueError(
                f"config.json describes a {model_type!r} model, not a Swin V2 ('swinv2') model"
            )
        if model_type == "swin":  # as transformers: read, with a word (Swin V1 weights are refused when loaded)
            warnings.warn(
                "config.json describes a Swin (V1, 'swin') model: it is read as a Swin V2 config; a Swin V1 "
                "model's weights will not load into Swin V2",
                stacklevel=2,
            )
        return cls(**data)

    def to_diff_dict(self) -> dict[str, Any]:
        """`to_dict` without transformers' generic fields that hold their defaults, as transformers writes
        config.json; every Swin V2 field stays."""
        return {k: v for k, v in self.to_dict().items() if k not in _COMMON_DEFAULTS or v != _COMMON_DEFAULTS[k]}

    def to_json_string(self, use_diff: bool = True) -> str:
        """JSON of `to_diff_dict()`, or of every field with `use_diff=False` (transformers' arguments)."""
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(path).write_text(self.to_json_string(use_diff), encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> Swinv2Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save the config or fix the file") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object of config fields, got {type(data).__name__}")
        return cls.from_dict(data, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(Path(save_directory) / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2Config:
        """Read `config.json` from a folder, a file path, a preset name or a hub id."""
        from .checkpoints import resolve_config

        return resolve_config(name_or_path, **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Swinv2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Swinv2Config {self.to_json_string()}"


# The constructor's defaults, which the errors offer as a fix.
_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(Swinv2Config.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty and parameter.default is not None
}
# Every keyword Swinv2Config gives a meaning to (the rest it keeps verbatim): what `from_pretrained` may
# override.
CONFIG_FIELDS = frozenset(
    set(inspect.signature(Swinv2Config.__init__).parameters) - {"self", "kwargs"}
) | set(_COMMON_DEFAULTS) | {
    "id2label", "label2id", "num_labels", "dtype", "use_gradient_checkpointing", "check_finite_inputs",
    "shift_mask_value", "window_layout", "always_partition",
} | GENERIC_FIELDS


def transformers_config_fields(config: Any) -> dict[str, Any]:
    """The fields of a transformers config object as its config.json holds them: `to_diff_dict()`, without the
    dozens of text-generation defaults that `to_dict()` adds."""
    diff = getattr(config, "to_diff_dict", None)
    return diff() if callable(diff) else config.to_dict()


# ---------------------------------------------------------------------------------------------- presets
# The official checkpoints (Microsoft's release, mirrored as microsoft/swinv2-* on the Hugging Face Hub and as
# swinv2_* in timm): family -> (embed_dim, depths, num_heads).
FAMILIES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
IMAGENET_1K_LABELS = 1000
IMAGENET_22K_LABELS = 21841

# Names as on the Hub (without "microsoft/"): family, window, image size, and for the fine-tuned ones the
# window and image size of pre-training, given as "12to16" and "192to256".
PRESET_NAMES: tuple[str, ...] = (
    "swinv2-tiny-patch4-window8-256",
    "swinv2-tiny-patch4-window16-256",
    "swinv2-small-patch4-window8-256",
    "swinv2-small-patch4-window16-256",
    "swinv2-base-patch4-window8-256",
    "swinv2-base-patch4-window16-256",
    "swinv2-base-patch4-window12-192-22k",
    "swinv2-large-patch4-window12-192-22k",
    "swinv2-base-patch4-window12to16-192to256-22kto1k-ft",
    "swinv2-base-patch4-window12to24-192to384-22kto1k-ft",
    "swinv2-large-patch4-window12to16-192to256-22kto1k-ft",
    "swinv2-large-patch4-window12to24-192to384-22kto1k-ft",
)

# Microsoft/Hub names (swinv2-base-patch4-window12to16-192to256-22kto1k-ft), timm names
# (swinv2_base_window12to16_192to256.ms_in22k_ft_in1k) and file names (swinv2_tiny_patch4_window8_256.pth),
# after "_" -> "-" and lower-casing.
_NAME = re.compile(
    r"swinv2-(?P<family>tiny|small|base|large)(?:-patch(?P<patch>\d+))?"
    r"-window(?P<window0>\d+)(?:to(?P<window>\d+))?-(?P<image0>\d+)(?:to(?P<image>\d+))?(?P<rest>.*)$"
)
# SimMIM's pre-training checkpoints: simmim_pretrain__swinv2_base__img192_window12__800ep.pth
_SIMMIM_NAME = re.compile(
    r"swinv2-(?P<family>tiny|small|base|large)-+img(?P<image>\d+)-window(?P<window>\d+)"
)
# torchvision's swin_v2_t / swin_v2_s / swin_v2_b: window 8, trained at 256 x 256.
_TORCHVISION_NAME = re.compile(r"(?:^|[^a-z])swin-v2-(?P<letter>[tsb])(?![a-z])")


def preset_kwargs(name: str | os.PathLike) -> dict[str, Any] | None:
    """Config fields told by a checkpoint's name, or None when the name tells nothing.

    Understands the official names in every spelling: `swinv2-tiny-patch4-window8-256`,
    `microsoft/swinv2-tiny-patch4-window8-256`, `swinv2_tiny_patch4_window8_256.pth`, timm's
    `swinv2_base_window12to16_192to256.ms_in22k_ft_in1k`, SimMIM's `..._swinv2_base__img192_window12_...` and
    torchvision's `swin_v2_t`. A fine-tuned name (`window12to16_192to256`) gives `pretrained_window_sizes`:
    the pre-training window clipped to each stage's pre-training grid, e.g. `[12, 12, 12, 6]`.
    """
    text = Path(str(name)).name.lower().replace("_", "-")
    for suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        text = text.removesuffix(suffix)
    match = _NAME.search(text)
    if match:
        family = match["family"]
        patch = int(match["patch"] or 4)
        window = int(match["window"] or match["window0"])
        image = int(match["image"] or match["image0"])
        rest = match["rest"]
        # (the 192 px models were trained on ImageNet-22k only: timm's swinv2_base_window12_192 has no tag)
        in22k = ("22k" in rest and "1k" not in rest) or rest.endswith("in22k") or (
            int(match["image0"]) == 192 and not match["image"] and "1k" not in rest
        )
        pretrained = [0, 0, 0, 0]
        if match["window"]:
            pretrain_window, pretrain_grid = int(match["window0"]), int(match["image0"]) // patch
            pretrained = [min(pretrain_window, pretrain_grid // 2**i) for i in range(4)]
        num_labels = IMAGENET_22K_LABELS if in22k else IMAGENET_1K_LABELS
        return _family_kwargs(family, patch, window, image, pretrained, num_labels)
    match = _SIMMIM_NAME.search(text)
    if match:
        return _family_kwargs(match["family"], 4, int(match["window"]), int(match["image"]), [0, 0, 0, 0], 0)
    match = _TORCHVISION_NAME.search(text)
    if match:
        family = {"t": "tiny", "s": "small", "b": "base"}[match["letter"]]
        return _family_kwargs(family, 4, 8, 256, [0, 0, 0, 0], IMAGENET_1K_LABELS)
    return None


def _family_kwargs(
    family: str, patch: int, window: int, image: int, pretrained: list[int], num_labels: int
) -> dict[str, Any]:
    embed_dim, depths, num_heads = FAMILIES[family]
    return {
        "image_size": image,
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depths": list(depths),
        "num_heads": list(num_heads),
        "window_size": window,
        "pretrained_window_sizes": pretrained,
        "num_labels": num_labels,
        "encoder_stride": patch * 2 ** (len(depths) - 1),
    }


def preset_config(name: str | os.PathLike, **overrides: Any) -> Swinv2Config | None:
    """The config of an official checkpoint named in any spelling (see `preset_kwargs`), or None."""
    kwargs = preset_kwargs(name)
    return None if kwargs is None else Swinv2Config(**{**kwargs, **overrides})
