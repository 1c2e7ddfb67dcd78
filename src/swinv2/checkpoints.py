"""Reading and writing checkpoints: where the weights are, which library wrote them, and their key names.

Every format is mapped onto our own module names (see `layers.py`) in one place, here:
- `hf`: transformers' `Swinv2*` models (`embeddings.patch_embeddings.projection`, `encoder.layers.N.blocks.M
  .attention.self.query`, ...), split query/key/value;
- `swinv2`: our own names (`embeddings.proj`, `stages.N.blocks.M.attn.qkv`, ...), a fused qkv with
  `q_bias`/`v_bias` as in the paper's code.

A state dict in canonical form has the encoder's keys without prefix and the heads' keys under
`classifier.` or `decoder.`; `_fit_to_model` adds the `swinv2.` prefix that the heads' models use.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import CONFIG_NAME, Swinv2Config

logger = logging.getLogger("swinv2")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
HEAD_PREFIXES = ("classifier.", "decoder.")
# Buffers that are derived from the geometry: never loaded, regenerated where a format persists them.
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- files
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a `.safetensors`, `.bin`, `.pth` or `.pt` file.

    Pickled files are read with `torch.load(weights_only=True)`, which refuses to run code. A training
    checkpoint (`{"model": ...}`, `{"state_dict": ...}`, `{"model_state": ...}`) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or the save did not complete")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
                "download or save it again"
            ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad pickle
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which could run code when unpickled, so it was "
                "not loaded. If you trust the file, re-save its state dict with torch.save(state_dict) or as "
                "safetensors"
            ) from err
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(err).__name__}: {text.splitlines()[0] if text else ''}); "
            "it may be truncated or corrupt: download or save it again"
        ) from err
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in ("model", "state_dict", "model_state", "model_state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _load_sharded(index_path: Path) -> dict[str, Tensor]:
    index = json.loads(index_path.read_text())
    state: dict[str, Tensor] = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        state.update(load_state_dict_file(index_path.parent / shard))
    return state


def find_weights(folder: Path) -> Path | None:
    for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return candidates[0] if len(candidates) == 1 else None


def read_weights(path: Path) -> dict[str, Tensor]:
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    return load_state_dict_file(path)


# ---------------------------------------------------------------------------------------------- key mapping
# transformers <-> ours for the keys that are a plain rename; a name ending in "." renames a prefix.
# ({i}: stage, {j}: block.) The fused qkv and the position embeddings are handled apart.
HF_NAMES: list[tuple[str, str]] = [
    ("embeddings.patch_embeddings.projection.", "embeddings.proj."),
    ("encoder.layers.{i}.blocks.{j}.attention.self.logit_scale", "stages.{i}.blocks.{j}.attn.logit_scale"),
    ("encoder.layers.{i}.blocks.{j}.attention.self.continuous_position_bias_mlp.", "stages.{i}.blocks.{j}.attn.cpb_mlp."),
    ("encoder.layers.{i}.blocks.{j}.attention.output.dense.", "stages.{i}.blocks.{j}.attn.proj."),
    ("encoder.layers.{i}.blocks.{j}.layernorm_before.", "stages.{i}.blocks.{j}.norm1."),
    ("encoder.layers.{i}.blocks.{j}.layernorm_after.", "stages.{i}.blocks.{j}.norm2."),
    ("encoder.layers.{i}.blocks.{j}.intermediate.dense.", "stages.{i}.blocks.{j}.mlp.fc1."),
    ("encoder.layers.{i}.blocks.{j}.output.dense.", "stages.{i}.blocks.{j}.mlp.fc2."),
    ("encoder.layers.{i}.downsample.", "stages.{i}.downsample."),
    ("layernorm.", "norm."),
]
_HF_QKV = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_OURS_QKV = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.(qkv\.weight|q_bias|v_bias)$")


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + pattern + ("" if template.endswith(".") else "$"))


def rename_key(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    """Rename `key` by the first matching (source, target) template pair, or None when none matches."""
    for source, target in table:
        if reverse:
            source, target = target, source
        match = _template_regex(source).match(key)
        if match:
            return target.format(**match.groupdict()) + key[match.end():]
    return None


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def split_heads(state: dict[str, Tensor], body_prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a state dict into the encoder (prefix removed) and the head keys."""
    body, heads = {}, {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES):
            heads[key] = value
        elif body_prefix and key.startswith(body_prefix):
            body[key[len(body_prefix):]] = value
        else:
            body[key] = value
    return body, heads


def hf_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' key names -> canonical ours (the `swinv2.` prefix of the heads' models is removed)."""
    body, out = split_heads(state, "swinv2.")
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in body.items():
        if _is_derived(key) or key.startswith("pooler."):
            continue
        match = _HF_QKV.match(key)
        if match:
            stage, block, part, kind = match.groups()
            qkv.setdefault((stage, block), {})[f"{part}.{kind}"] = value
            continue
        if key == "embeddings.position_embeddings":
            # transformers keeps an unused first row (a [CLS] slot Swin never has).
            out[key] = value[:, 1:] if value.shape[1] > 1 and _is_square_plus_one(value.shape[1]) else value
            continue
        if key in ("embeddings.mask_token",) or key.startswith("embeddings.norm."):
            out[key] = value
            continue
        new = rename_key(key, HF_NAMES)
        out[new if new is not None else key] = value
    for (stage, block), parts in qkv.items():
        prefix = f"stages.{stage}.blocks.{block}.attn."
        if {"query.weight", "key.weight", "value.weight"} <= parts.keys():
            out[prefix + "qkv.weight"] = torch.cat([parts["query.weight"], parts["key.weight"], parts["value.weight"]])
        else:  # keep what is there so that the error names it
            out.update({f"encoder.layers.{stage}.blocks.{block}.attention.self.{k}": v for k, v in parts.items()})
        if "query.bias" in parts:
            out[prefix + "q_bias"] = parts["query.bias"]
        if "value.bias" in parts:
            out[prefix + "v_bias"] = parts["value.bias"]
    return out


def _is_square_plus_one(n: int) -> bool:
    root = int(round((n - 1) ** 0.5))
    return root * root == n - 1 and n > 1


def ours_to_hf(state: dict[str, Tensor], with_prefix: bool) -> dict[str, Tensor]:
    """Canonical ours -> transformers' key names; `with_prefix` adds `swinv2.` to the encoder's keys."""
    body, heads = split_heads(state, "")
    out: dict[str, Tensor] = {}
    for key, value in body.items():
        if _is_derived(key):
            continue
        match = _OURS_QKV.match(key)
        if match:
            stage, block, part = match.groups()
            prefix = f"encoder.layers.{stage}.blocks.{block}.attention.self."
            if part == "qkv.weight":
                q, k, v = value.chunk(3)
                out[prefix + "query.weight"], out[prefix + "key.weight"], out[prefix + "value.weight"] = q, k, v
            else:
                out[prefix + ("query.bias" if part == "q_bias" else "value.bias")] = value
            continue
        if key == "embeddings.position_embeddings":
            value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        new = rename_key(key, HF_NAMES, reverse=True)
        out[new if new is not None else key] = value
    prefix = "swinv2." if with_prefix else ""
    out = {prefix + k: v for k, v in out.items()}
    out.update(heads)
    return out


def detect_format(state: dict[str, Tensor]) -> str:
    """Which library wrote this state dict: `hf` or `swinv2` (ours); raises for anything else."""
    keys = list(state)
    if any(".attention.self." in k or "patch_embeddings.projection" in k for k in keys):
        return "hf"
    if any(re.search(r"(^|\.)stages\.\d+\.blocks\.\d+\.attn\.", k) for k in keys) and any(
        "embeddings.proj." in k for k in keys
    ):
        return "swinv2"
    raise CheckpointError(
        "unknown checkpoint format: the keys match none of the formats we read (Hugging Face transformers, "
        f"swinv2). First keys: {keys[:5]}"
    )


def to_canonical(state: dict[str, Tensor], fmt: str | None = None) -> tuple[dict[str, Tensor], str]:
    """Map any supported state dict onto canonical ours; returns it with the detected format."""
    fmt = fmt or detect_format(state)
    if fmt == "hf":
        return hf_to_ours(state), fmt
    if fmt == "swinv2":
        body, heads = split_heads(state, "swinv2.")
        return {**{k: v for k, v in body.items() if not _is_derived(k)}, **heads}, fmt
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; we read: hf, swinv2")


# ---------------------------------------------------------------------------------------------- resolving sources
def _hub_download(repo_id: str, revision: str | None, cache_dir: Any, local_files_only: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise CheckpointError(
            f"{repo_id!r} is not a file or a folder here; to fetch it from the Hugging Face Hub install "
            "huggingface_hub (pip install 'swinv2[hub]')"
        ) from err
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=["*.json", "*.safetensors", "*.bin"],
        )
    except Exception as err:  # network errors, missing repos, offline mode without a cached copy
        raise CheckpointError(
            f"{repo_id!r} is not a local file or folder, and the Hugging Face Hub could not provide it "
            f"({type(err).__name__}: {err}). Check the path, or the repo id and your connection "
            "(HF_HUB_OFFLINE=1 reads only the local cache)"
        ) from err
    return Path(folder)


def resolve_source(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: Any = None,
    local_files_only: bool = False,
) -> tuple[Path | None, Path | None]:
    """`(config.json or None, weights file or None)` for a folder, a weights file, or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config = path / CONFIG_NAME
        return (config if config.is_file() else None), find_weights(path)
    if path.is_file():
        if path.name.endswith(".json") and not path.name.endswith(".index.json"):
            return path, find_weights(path.parent)
        sibling = path.parent / CONFIG_NAME
        return (sibling if sibling.is_file() else None), path
    text = str(name_or_path)
    looks_local = text.startswith((".", "/", "~")) or text.endswith(WEIGHT_SUFFIXES) or os.sep in text.rstrip("/") and text.count("/") > 1
    if looks_local or text.count("/") != 1:
        raise CheckpointError(
            f"{text!r} is neither a file nor a folder, nor a Hugging Face Hub id (owner/name). Give the path "
            "to a folder with config.json and model.safetensors, or to a weights file (.safetensors, .bin, .pth)"
        )
    folder = _hub_download(text, revision, cache_dir, local_files_only)
    config = folder / CONFIG_NAME
    return (config if config.is_file() else None), find_weights(folder)


def resolve_config(name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2Config:
    config_path, _ = resolve_source(name_or_path)
    if config_path is None:
        raise CheckpointError(f"no {CONFIG_NAME} found for {name_or_path}")
    return Swinv2Config.from_json_file(config_path, **overrides)


# ---------------------------------------------------------------------------------------------- loading
def _target_dtype(torch_dtype: Any, state: dict[str, Tensor]) -> torch.dtype | None:
    if torch_dtype is None:
        return torch.float32
    if torch_dtype == "auto":
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        return floats[0] if floats else torch.float32
    if isinstance(torch_dtype, str):
        dtype = getattr(torch, torch_dtype.replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch_dtype {torch_dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'")
        return dtype
    return torch_dtype


def _fit_to_model(model: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Canonical keys -> the keys of this model class (the heads' models hold the encoder in `swinv2`)."""
    own = model.state_dict()
    prefix = "swinv2." if any(k.startswith("swinv2.") for k in own) else ""
    out = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES):
            out[key] = value
        else:
            out[prefix + key] = value
    return out


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_into_model(
    model: torch.nn.Module,
    state: dict[str, Tensor],
    fmt: str,
    strict: bool = True,
    ignore_mismatched_sizes: bool = False,
    source: str = "",
) -> None:
    """Copy a canonical state dict into `model`. Heads that do not fit are initialised afresh with a warning;
    any other missing, unexpected or mis-shaped weight is an error listing them."""
    state = _fit_to_model(model, state)
    own = model.state_dict()
    head_like = ("classifier.", "decoder.", "swinv2.embeddings.mask_token", "embeddings.mask_token")
    unexpected = [k for k in state if k not in own]
    # A SimMIM checkpoint's mask token is of no use to the other heads: dropped, as transformers does.
    ignored_heads = [
        k for k in unexpected
        if k.startswith(HEAD_PREFIXES) or k in ("norm.weight", "norm.bias") or k.endswith("embeddings.mask_token")
    ]
    unexpected = [k for k in unexpected if k not in ignored_heads]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    fresh: list[str] = []
    for key in mismatched:
        if key.endswith("position_embeddings") and state[key].dim() == 3:
            state[key] = _resize_positions(state[key], own[key].shape)
        elif key.startswith(head_like) or ignore_mismatched_sizes:
            fresh.append(f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)})")
            del state[key]
        else:
            raise CheckpointError(
                f"{source}: weight {key} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model (detected format: {fmt}); the config does not match the "
                "weights. Use the checkpoint's own config.json, or pass ignore_mismatched_sizes=True to "
                "re-initialise these weights"
            )
    missing = [k for k in own if k not in state]
    missing_heads = [k for k in missing if k.startswith(head_like)]
    missing = [k for k in missing if k not in missing_heads]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
        raise CheckpointError(
            f"{source}: the checkpoint does not fit {type(model).__name__} (detected format: {fmt}); "
            + "; ".join(parts)
            + ". Check that the config matches the weights, or pass strict=False to load what fits"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    not_loaded = fresh + missing_heads + ([] if strict else missing)
    if not_loaded:
        warnings.warn(
            f"{type(model).__name__}: these weights were not in the checkpoint {source} (or did not fit) and are "
            f"newly initialised; train them before use: {_describe(not_loaded)}",
            stacklevel=3,
        )
    if ignored_heads or (unexpected and not strict):
        logger.info("unused weights from %s: %s", source, _describe(ignored_heads + unexpected))


def _resize_positions(pos: Tensor, shape: torch.Size) -> Tensor:
    """Bicubically resize square absolute position embeddings `(1, N, C)` to another grid."""
    n_old, n_new = pos.shape[1], shape[1]
    old, new = int(round(n_old**0.5)), int(round(n_new**0.5))
    if old * old != n_old or new * new != n_new:
        raise CheckpointError(f"cannot resize position embeddings of {n_old} patches to {n_new}")
    grid = pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, n_new, -1).to(pos.dtype)


def load_pretrained(
    cls: type,
    name_or_path: str | os.PathLike,
    config: Swinv2Config | None = None,
    torch_dtype: Any = None,
    device: Any = None,
    ignore_mismatched_sizes: bool = False,
    strict: bool = True,
    revision: str | None = None,
    cache_dir: Any = None,
    local_files_only: bool = False,
    **config_overrides: Any,
):
    """Build `cls` from the config and load the weights found at `name_or_path` (see `from_pretrained`)."""
    config_path, weights_path = resolve_source(name_or_path, revision, cache_dir, local_files_only)
    if weights_path is None:
        raise CheckpointError(
            f"no weights found at {name_or_path}: expected {SAFE_WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME} "
            "(or a single .safetensors/.bin/.pth file) in the folder"
        )
    state = read_weights(weights_path)
    canonical, fmt = to_canonical(state)
    if config is None:
        if config_path is None:
            raise CheckpointError(
                f"no {CONFIG_NAME} next to {weights_path}: give the model's config with config=Swinv2Config(...)"
            )
        config = Swinv2Config.from_json_file(config_path, **config_overrides)
    elif config_overrides:
        config = Swinv2Config.from_dict(config.to_dict(), **config_overrides)
    dtype = _target_dtype(torch_dtype, state)
    model = cls(config)
    load_into_model(model, canonical, fmt, strict, ignore_mismatched_sizes, str(weights_path))
    model.to(device=device, dtype=dtype)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------- saving
def model_state_canonical(model: torch.nn.Module) -> dict[str, Tensor]:
    state = {k: v for k, v in model.state_dict().items() if not _is_derived(k)}
    body, heads = split_heads(state, "swinv2.")
    return {**body, **heads}


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
    """config.json + model.safetensors (or pytorch_model.bin) in transformers' layout, each written atomically."""
    from safetensors.torch import save_file

    folder = Path(save_directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the output folder {folder}: {err.strerror}") from err
    with_prefix = any(k.startswith("swinv2.") for k in model.state_dict())
    state = ours_to_hf(model_state_canonical(model), with_prefix)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]
    config_dict["torch_dtype"] = str(next(iter(state.values())).dtype).replace("torch.", "")
    if safe_serialization:
        atomic_write(folder / SAFE_WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    else:
        atomic_write(folder / TORCH_WEIGHTS_NAME, lambda tmp: torch.save(state, tmp))
    text = json.dumps(config_dict, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
