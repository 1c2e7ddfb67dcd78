"""Reading and writing checkpoints: where the weights are, which library wrote them, and their key names.

Every format is mapped onto our own module names (see `layers.py`) in one place, here, one table each:
- `hf`: transformers' `Swinv2*` models (`embeddings.patch_embeddings.projection`, `encoder.layers.N.blocks.M
  .attention.self.query`, ...), split query/key/value;
- `microsoft`: Microsoft's Swin-Transformer `.pth` (`{"model": ...}`; `patch_embed`, `layers.N.blocks.M.attn`,
  the patch merging at the end of a stage, `head`), and `microsoft-simmim`, SimMIM's pre-training files
  (the same under `encoder.`, plus `decoder.`);
- `timm`: the patch merging opens the next stage (`layers.N+1.downsample`), the classifier is `head.fc`;
- `torchvision`: one `features` Sequential, `qkv.bias = cat(q, 0, v)`;
- `swinv2`: our own names (`embeddings.proj`, `stages.N.blocks.M.attn.qkv`, ...), a fused qkv with
  `q_bias`/`v_bias` as in the paper's code.

A state dict in canonical form has the encoder's keys without prefix and the heads' keys under
`classifier.` or `decoder.`; `_fit_to_model` adds the `swinv2.` prefix that the heads' models use.
Buffers derived from the geometry are dropped on reading and recomputed on writing where a format persists
them; they also tell window and image size when a checkpoint comes without a config (`infer_config`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import functools
import inspect
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import (
    CONFIG_FIELDS,
    CONFIG_NAME,
    PRESET_NAMES,
    SHIFT_MASK_VALUE,
    Swinv2Config,
    preset_kwargs,
    stage_window,
    stage_windows,
    transformers_config_fields,
)
from .errors import Swinv2Error
from .layers import MASK_VALUE, relative_coords_table, relative_position_index, shifted_window_mask

logger = logging.getLogger("swinv2")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# `.pth.tar` is what timm's train.py names its checkpoints (model_best.pth.tar, last.pth.tar).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".pth.tar")
# Objects besides tensors that training scripts save next to the weights and that `torch.load(weights_only=
# True)` may rebuild: timm's train.py keeps its options as an `argparse.Namespace` (`"args"`). A Namespace
# is rebuilt from nothing but its attribute dict, whose values the safe unpickler checks like any other,
# so allowing it lets no code run.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
# The model's config in the checkpoints `swinv2 train` writes (`training.save_checkpoint`), a dict.
TRAINING_CONFIG_KEY = "model_config"
HEAD_PREFIXES = ("classifier.", "decoder.")
# Buffers that are derived from the geometry: never loaded, regenerated where a format persists them.
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")
# Where `write_checkpoint` keeps our config in files of formats that have no config.json.
EMBEDDED_CONFIG_KEY = "swinv2_config"


class CheckpointError(Swinv2Error):
    """A checkpoint that cannot be read or does not fit the model; the message says why and what to do."""


class WriteError(Swinv2Error, OSError):
    """A file that could not be written (a full disk, a failed device); also an OSError, as before."""


# ---------------------------------------------------------------------------------------------- files
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`: a crash never leaves half a file behind."""
    if str(path).endswith(("/", os.sep)):  # (Path() would drop the separator and write a file of that name)
        raise WriteError(f"{path} ends with a separator, which names a folder: name the file to write")
    path = Path(os.path.realpath(path))  # a symlink is written through, to the file it names, not replaced
    in_a_file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if in_a_file is not None:
        raise WriteError(f"{in_a_file} is a file, not a folder, so {path} cannot be written in it: write elsewhere")
    if path.is_dir():
        raise WriteError(f"{path} is a folder: name the file to write (e.g. {path / 'model.safetensors'})")
    if path.exists() and not path.is_file():  # a device or pipe would be replaced by a regular file
        raise WriteError(f"{path} is not a regular file (a device, pipe or socket); name a file to write")
    tmp = None
    created = [p for p in path.parents if not p.exists()]  # (deepest first) removed again if the write fails
    try:
        # inside the try: a read-only or full folder fails here already, and gets the same message
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            free = shutil.disk_usage(path.parent).free / 2**20  # before the partial file goes
        except OSError:  # no such folder: it could not be made
            free = 0.0
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        _remove_empty(created)
        # The writers' own errors for a full disk or a failed device say little (torch.save: a RuntimeError
        # from its stream writer, safetensors: SafetensorError): name the file, the free space and the fix.
        # Other errors of a writer (an exporter's, say) are its own business and pass unchanged.
        torch_write = isinstance(err, RuntimeError) and ("inline_container" in str(err) or "StreamWriter" in str(err))
        if isinstance(err, OSError) or torch_write or type(err).__name__ == "SafetensorError":
            # an OSError's own text names the temporary file, which the user never asked for
            reason = (err.strerror if isinstance(err, OSError) and err.strerror
                      else (str(err).strip().splitlines() or [type(err).__name__])[-1])
            full = not isinstance(err, OSError) or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
            fix = f"; {free:.0f} MiB free there): free space or write elsewhere" if full else "): write elsewhere"
            raise WriteError(f"could not write {path} ({reason}{fix}. Nothing was left half-written") from err
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


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed write created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, stale: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Write a folder of files as one change: yields an empty folder beside `target` to write into; when the
    block ends, its files replace `target`'s of the same names (a new `target` appears whole, by one rename),
    and `target`'s files that `stale(name)` calls outdated and that were not written again are removed. When
    the block fails, or a file would replace a folder, `target` is left as it was, and so are its parents
    (those this call made are removed)."""
    target = Path(os.path.realpath(target))
    if target.exists() and not target.is_dir():
        raise WriteError(f"{target} is a file, not a folder: name a folder to write the checkpoint into")
    created = [p for p in (target, *target.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    except OSError as err:
        _remove_empty(created)
        raise WriteError(f"cannot create the output folder {target}: {err.strerror}") from err
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # (mkdtemp makes it 0700) the mode a plain mkdir would give
    try:
        yield stage
        files = sorted(stage.iterdir())
        blocked = [target / f.name for f in files if (target / f.name).exists() and not (target / f.name).is_file()]
        if blocked:
            raise WriteError(
                f"{blocked[0]} is a folder (or not a regular file) where the checkpoint has a file: move it away "
                "or write elsewhere. Nothing was written"
            )
        if not target.exists():
            os.replace(stage, target)
            return
        for f in files:
            os.replace(f, target / f.name)
        written = {f.name for f in files}
        for old in target.iterdir():
            if stale is not None and old.name not in written and stale(old.name) and old.is_file():
                old.unlink()
    except BaseException as err:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        if isinstance(err, WriteError) and str(stage) in str(err):  # name the folder asked for, not the stage
            raise WriteError(str(err).replace(str(stage), str(target))) from err
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a `.safetensors`, `.bin`, `.pth` or `.pt` file (see `load_checkpoint_file`)."""
    return load_checkpoint_file(path)[0]


# What else a file named as weights often is: (first bytes, what to call it).
_OTHER_FILES = [
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP, WAV, AVI) file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<", "an HTML or XML page: a download that returned a web page?"),
    (b"{", "JSON text"),
    (b"version https://git-lfs", "a Git LFS pointer: run git lfs pull"),
]


def load_checkpoint_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Tensors of a `.safetensors`, `.bin`, `.pth`, `.pt` or `.pth.tar` file, and the config stored inside it,
    if any.

    Pickled files are read with `torch.load(weights_only=True)`, which refuses to run code (it rebuilds
    tensors, containers, numbers and strings, and the `SAFE_GLOBALS`). A training checkpoint
    (`{"model": ...}`, `{"state_dict": ...}`, `{"model_state": ...}`, timm's train.py's `{"state_dict": ...,
    "args": Namespace(...), "optimizer": ...}`) is unwrapped. The config is
    the one `write_checkpoint` embeds (safetensors metadata or a `"swinv2_config"` entry beside `"model"`), so
    that formats without a config.json keep window and image size.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or the save did not complete")
    with path.open("rb") as f:
        head = f.read(32)
    looks_safetensors = len(head) > 8 and head[8:9] == b"{"  # an 8-byte header length, then JSON
    if path.suffix != ".safetensors" and not looks_safetensors and not head.startswith((b"PK\x03\x04", b"\x80")):
        # neither torch.save's zip nor a pickle: name what it is instead of a pickle error
        kind = next((name for magic, name in _OTHER_FILES if head.startswith(magic)), "not a weights file")
        raise CheckpointError(
            f"{path} is no checkpoint ({kind}): weights come as .safetensors, or .bin/.pth/.pt/.pth.tar written by "
            "torch.save"
        )
    if path.suffix == ".safetensors" or looks_safetensors:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
                "download or save it again"
            ) from err
        if not tensors:
            raise CheckpointError(f"{path} holds no tensors")
        return _without_wrapper_prefixes(tensors), _parse_embedded_config(metadata.get(EMBEDDED_CONFIG_KEY), path)
    obj = torch_load(path)
    embedded = None
    if isinstance(obj, dict):
        embedded = obj.get(EMBEDDED_CONFIG_KEY)
        trained = obj.get(TRAINING_CONFIG_KEY)  # `swinv2 train`'s checkpoints: a dict beside "model"
        if embedded is None and isinstance(trained, dict) and trained.get("model_type") == "swinv2":
            embedded = trained
        if embedded is None:
            embedded = _timm_train_config(obj)
    return _unwrap_state_dict(obj, path), _parse_embedded_config(embedded, path)


def torch_load(path: Path) -> Any:
    """What `torch.save` wrote to `path`, read with `weights_only=True` (tensors, containers, numbers, strings
    and the `SAFE_GLOBALS`); a CheckpointError that says why not, in one line, instead of torch's advice to
    unpickle without weights_only (which it gives for any bytes its unpickler refuses, a damaged file's too)."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch.save's zip nor a pickle
        raise CheckpointError(f"{path} is truncated or corrupt: it is not a file torch.save wrote")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad pickle
        text = str(err)
        # weights_only refuses both a real object (a GLOBAL it does not allow: "Unsupported global: GLOBAL
        # numpy.core.multiarray._reconstruct ...") and bytes that are no pickle at all ("Unsupported operand
        # 200", "Can only append to lists"), under the same "Weights only load failed" heading: only the first
        # is a file to re-save, the second is damaged.
        # (a module torch blocks outright, os or sys: "Trying to load unsupported GLOBAL posix.system whose module
        # posix is blocked")
        refused = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
        if refused:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors ({refused[1]}), which could run code when "
                "unpickled, so it was not loaded. If you trust the file, re-save its state dict with "
                "torch.save(state_dict) or as safetensors"
            ) from err
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = unpickler[1].strip() if unpickler else (text.strip().splitlines() or [""])[0]
        reason = reason.split(". ")[0]  # (torch's zip reader goes on for a paragraph)
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is truncated or corrupt ({type(err).__name__}: {reason}). "
            "Download it again, or save it again"
        ) from err


def _timm_train_config(obj: dict[str, Any]) -> dict[str, Any] | None:
    """What a checkpoint of timm's train.py tells of the model it trained, as a timm config.json would: the
    name given to `create_model` (`arch`) and, from its options (`args`), the keyword arguments train.py adds
    to it (`in_chans` or `input_size`'s channels, `gp` as global_pool, `model_kwargs`). None for other files."""
    args = obj.get("args")
    if not isinstance(obj.get("arch"), str) or not isinstance(args, argparse.Namespace):
        return None
    model_args = dict(getattr(args, "model_kwargs", None) or {})
    input_size = getattr(args, "input_size", None)
    channels = getattr(args, "in_chans", None) or (input_size[0] if input_size else None)
    if channels:
        model_args["in_chans"] = channels
    if getattr(args, "gp", None):
        model_args["global_pool"] = args.gp
    return {"architecture": obj["arch"], "model_args": model_args}


def _parse_embedded_config(text: Any, path: Path) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = text if isinstance(text, dict) else json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: the embedded {EMBEDDED_CONFIG_KEY!r} is not a JSON object of config fields"
        )
    return data


# Where training scripts keep the weights in a checkpoint, first match wins: the model's own weights before
# an exponential moving average of them (timm's train.py writes both, `state_dict` and `state_dict_ema`).
STATE_DICT_KEYS = (
    "model", "state_dict", "model_state", "model_state_dict", "module",
    "model_ema", "state_dict_ema", "ema", "ema_state_dict",
)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in STATE_DICT_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        nested = ", ".join(repr(k) for k, v in obj.items() if isinstance(v, dict))
        raise CheckpointError(
            f"{path} holds no tensors"
            + (f" (but mappings under {nested}: save the weights alone from torch.load)" if nested else "")
        )
    return _without_wrapper_prefixes(tensors)


# What wrappers put before every key of the model they wrap: DistributedDataParallel and AveragedModel
# (`module.`), torch.compile (`_orig_mod.`), a Lightning module holding the model as `self.model`.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _without_wrapper_prefixes(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights of a model saved from a wrapper (`WRAPPER_PREFIXES` before every key, one or several: DDP
    around a compiled model), in any file format, under the model's own names. No format of a Swin V2 has
    a key of its own under these names."""
    # torch.optim.swa_utils.AveragedModel (EMA in torchvision's reference scripts) adds a step count
    if "n_averaged" in tensors and all(k.startswith("module.") for k in tensors if k != "n_averaged"):
        tensors = {k: v for k, v in tensors.items() if k != "n_averaged"}
    while tensors:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in tensors)), None)
        if prefix is None:
            break
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def _load_sharded(index_path: Path) -> dict[str, Tensor]:
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{index_path} is not valid JSON ({err}); download or save it again") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index_path} has no weight_map (tensor name -> shard file): it is not a sharded checkpoint's "
            "index, or it was cut short; download or save it again"
        )
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_state_dict_file(index_path.parent / shard))
    return state


def weight_names(variant: str | None = None, use_safetensors: bool | None = None) -> list[str]:
    """The weight files of a transformers folder, in the order transformers looks for them: safetensors
    first unless `use_safetensors` says which; a `variant` ("fp16") goes before the suffix
    (`model.fp16.safetensors`, `model.safetensors.index.fp16.json`)."""
    safe, pickled = [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME], [TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME]
    names = safe if use_safetensors else pickled if use_safetensors is False else safe + pickled
    if variant:
        names = [".".join([*name.split(".")[:-1], variant, name.split(".")[-1]]) for name in names]
    return names


def find_weights(folder: Path, variant: str | None = None, use_safetensors: bool | None = None) -> Path | None:
    """The weights of a folder: transformers' file names (`weight_names`), else its only weights file."""
    for name in weight_names(variant, use_safetensors):
        if (folder / name).is_file():
            return folder / name
    if variant or use_safetensors is not None:
        return None
    candidates = _weight_files(folder)
    return candidates[0] if len(candidates) == 1 else None


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file())


def _no_weights(
    where: str | os.PathLike, variant: str | None = None, use_safetensors: bool | None = None
) -> CheckpointError:
    """The error for a folder `find_weights` found no weights in: none, or several files and none by name."""
    expected = " or ".join(weight_names(variant, use_safetensors))
    several = _weight_files(Path(where)) if Path(where).is_dir() else []
    if len(several) > 1 and not variant and use_safetensors is None:
        names = ", ".join(p.name for p in several[:5]) + (", ..." if len(several) > 5 else "")
        return CheckpointError(
            f"{where} holds several weight files ({names}) and none named {expected}: give the path to the one "
            "to load"
        )
    return CheckpointError(
        f"no weights found at {where}: expected {expected}"
        + ("" if variant or use_safetensors is not None else " (or a single .safetensors/.bin/.pth file)")
        + " in the folder"
    )


def _is_shard_index(path: Path) -> bool:
    """transformers' index of a sharded checkpoint: `model.safetensors.index.json` (`....index.fp16.json`)."""
    return path.name.endswith(".json") and ".index." in path.name


def read_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The tensors behind a weights file or a shard index, and the config embedded in the file, if any."""
    if _is_shard_index(path):
        return _load_sharded(path), None
    return load_checkpoint_file(path)


# ---------------------------------------------------------------------------------------------- key mapping
# One table per format: (their name, our name) template pairs, read top to bottom, the first match wins;
# a name ending in "." renames a prefix. Placeholders: {i} the stage, {j} the block; an index stored as an
# affine function of the stage is written out: timm numbers its patch mergings {i+1} (they open the next
# stage), torchvision numbers patch embedding, stages and mergings in one Sequential ({2i+1} and {2i+2}).
# The keys that are not a plain rename (fused or split qkv, position embeddings) are handled by each format.

# transformers: split query/key/value, an unused first row in the position embeddings.
HF_NAMES: list[tuple[str, str]] = [
    ("embeddings.patch_embeddings.projection.", "embeddings.proj."),
    ("encoder.layers.{i}.blocks.{j}.attention.self.logit_scale", "stages.{i}.blocks.{j}.attn.logit_scale"),
    (
        "encoder.layers.{i}.blocks.{j}.attention.self.continuous_position_bias_mlp.",
        "stages.{i}.blocks.{j}.attn.cpb_mlp.",
    ),
    ("encoder.layers.{i}.blocks.{j}.attention.output.dense.", "stages.{i}.blocks.{j}.attn.proj."),
    ("encoder.layers.{i}.blocks.{j}.layernorm_before.", "stages.{i}.blocks.{j}.norm1."),
    ("encoder.layers.{i}.blocks.{j}.layernorm_after.", "stages.{i}.blocks.{j}.norm2."),
    ("encoder.layers.{i}.blocks.{j}.intermediate.dense.", "stages.{i}.blocks.{j}.mlp.fc1."),
    ("encoder.layers.{i}.blocks.{j}.output.dense.", "stages.{i}.blocks.{j}.mlp.fc2."),
    ("encoder.layers.{i}.downsample.", "stages.{i}.downsample."),
    ("layernorm.", "norm."),
]
# Microsoft's Swin-Transformer repository (and SimMIM's, under `encoder.`): our block internals have its
# names, the patch merging closes a stage. It persists relative_coords_table, relative_position_index and
# attn_mask.
MICROSOFT_NAMES: list[tuple[str, str]] = [
    ("patch_embed.proj.", "embeddings.proj."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("absolute_pos_embed", "embeddings.position_embeddings"),
    ("mask_token", "embeddings.mask_token"),
    ("layers.{i}.blocks.{j}.", "stages.{i}.blocks.{j}."),
    ("layers.{i}.downsample.", "stages.{i}.downsample."),
    ("norm.", "norm."),
    ("head.", "classifier."),
]
# timm: Microsoft's names, but the patch merging opens the next stage and the classifier is `head.fc`.
# A `features_only=True` model (timm's FeatureListNet, the weights kept for detection backbones) flattens
# the stages into its own children, `layers_N` for `layers.N`, and has no final norm or head. Those rows come
# after the plain ones, so that writing for timm gives the plain names.
TIMM_NAMES: list[tuple[str, str]] = [
    ("patch_embed.proj.", "embeddings.proj."),
    ("patch_embed.norm.", "embeddings.norm."),
    ("layers.{i}.blocks.{j}.", "stages.{i}.blocks.{j}."),
    ("layers.{i+1}.downsample.", "stages.{i}.downsample."),
    ("layers_{i}.blocks.{j}.", "stages.{i}.blocks.{j}."),
    ("layers_{i+1}.downsample.", "stages.{i}.downsample."),
    ("norm.", "norm."),
    ("head.fc.", "classifier."),
]
# torchvision: `features` = [conv + permute + norm, stage 0, merging 0, stage 1, ...];
# qkv.bias = cat(q, 0, v); the MLP is a Sequential (Linear, GELU, Dropout, Linear, Dropout). It persists
# relative_coords_table and a flat relative_position_index.
TORCHVISION_NAMES: list[tuple[str, str]] = [
    ("features.0.0.", "embeddings.proj."),
    ("features.0.2.", "embeddings.norm."),
    ("features.{2i+1}.{j}.mlp.0.", "stages.{i}.blocks.{j}.mlp.fc1."),
    ("features.{2i+1}.{j}.mlp.3.", "stages.{i}.blocks.{j}.mlp.fc2."),
    ("features.{2i+1}.{j}.", "stages.{i}.blocks.{j}."),
    ("features.{2i+2}.", "stages.{i}.downsample."),
    ("norm.", "norm."),
    ("head.", "classifier."),
]
FORMAT_NAMES = {
    "hf": "Hugging Face transformers",
    "microsoft": "Microsoft Swin-Transformer (.pth with 'model')",
    "microsoft-simmim": "Microsoft SimMIM pre-training (encoder. + decoder.)",
    "timm": "timm",
    "torchvision": "torchvision",
    "swinv2": "swinv2 (ours)",
}
WRITE_FORMATS = ("hf", "microsoft", "timm", "torchvision")

_PLACEHOLDER = re.compile(r"\{(\d*)([ij])(?:\+(\d+))?\}")
_OURS_QKV = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.(qkv\.weight|q_bias|v_bias)$")
_HF_QKV = re.compile(
    r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"
)
_TV_QKV_BIAS = re.compile(r"^features\.(\d+)\.(\d+)\.attn\.qkv\.bias$")
_OURS_QV_BIAS = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.(q_bias|v_bias)$")


@functools.cache
def _compile_template(template: str) -> tuple[re.Pattern, tuple[tuple[str, int, int], ...]]:
    """A template -> (regex with one group per placeholder, (variable, scale, offset) per placeholder)."""
    pattern, fields, last = "^", [], 0
    for match in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[last : match.start()]) + r"(\d+)"
        fields.append((match[2], int(match[1] or 1), int(match[3] or 0)))
        last = match.end()
    pattern += re.escape(template[last:]) + ("" if template.endswith(".") else "$")
    return re.compile(pattern), tuple(fields)


def _format_template(template: str, values: dict[str, int]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(int(m[1] or 1) * values[m[2]] + int(m[3] or 0)), template)


def rename_key(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    """Rename `key` by the first matching (source, target) template pair, or None when none matches."""
    for source, target in table:
        if reverse:
            source, target = target, source
        regex, fields = _compile_template(source)
        match = regex.match(key)
        if not match:
            continue
        values: dict[str, int] = {}
        for (name, scale, offset), text in zip(fields, match.groups()):
            index, remainder = divmod(int(text) - offset, scale)
            if index < 0 or remainder or values.get(name, index) != index:
                break
            values[name] = index
        else:
            return _format_template(target, values) + key[match.end() :]
    return None


def _rename_all(
    state: dict[str, Tensor], table: list[tuple[str, str]], reverse: bool = False
) -> dict[str, Tensor]:
    """Every key renamed by `table`; keys no template matches are kept, so that errors can name them."""
    out = {}
    for key, value in state.items():
        new = rename_key(key, table, reverse)
        out[new if new is not None else key] = value
    return out


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def _drop_derived(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not _is_derived(k)}


def split_heads(state: dict[str, Tensor], body_prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a state dict into the encoder (prefix removed) and the head keys."""
    body, heads = {}, {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES):
            heads[key] = value
        elif body_prefix and key.startswith(body_prefix):
            body[key[len(body_prefix) :]] = value
        else:
            body[key] = value
    return body, heads


# ---- transformers
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
            # transformers always allocates one row more than there are patches, a [CLS] slot Swin never has;
            # the patches' rows follow it, for any grid (square or not).
            out[key] = value[:, 1:]
            continue
        if key in ("embeddings.mask_token",) or key.startswith("embeddings.norm."):
            out[key] = value
            continue
        new = rename_key(key, HF_NAMES)
        out[new if new is not None else key] = value
    for (stage, block), parts in qkv.items():
        prefix = f"stages.{stage}.blocks.{block}.attn."
        if {"query.weight", "key.weight", "value.weight"} <= parts.keys():
            out[prefix + "qkv.weight"] = torch.cat(
                [parts["query.weight"], parts["key.weight"], parts["value.weight"]]
            )
        else:  # kept under their names: `load_into_model` fills what they have of qkv (`_fill_partial_qkv`)
            out.update(
                {
                    f"encoder.layers.{stage}.blocks.{block}.attention.self.{k}": v
                    for k, v in parts.items()
                    if k.endswith(".weight")
                }
            )
        if "query.bias" in parts:
            out[prefix + "q_bias"] = parts["query.bias"]
        if "value.bias" in parts:
            out[prefix + "v_bias"] = parts["value.bias"]
    return out


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
                for name, third in zip(("query", "key", "value"), value.chunk(3)):
                    out[f"{prefix}{name}.weight"] = third
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


# ---- Microsoft (and SimMIM)
def microsoft_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Microsoft's names (with SimMIM's `encoder.` prefix or without) -> canonical ours; buffers dropped."""
    return _drop_derived(_rename_all(_microsoft_plain(state), MICROSOFT_NAMES))


def _microsoft_plain(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SimMIM's `encoder.` prefix removed (`decoder.` kept); early Swin V2 code's `rpe_mlp` -> `cpb_mlp`."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("encoder.")
        out[key.replace(".attn.rpe_mlp.", ".attn.cpb_mlp.")] = value
    return out


def ours_to_microsoft(model: torch.nn.Module) -> dict[str, Tensor]:
    """A model's weights in Microsoft's layout, with the buffers its code persists (recomputed here).

    A SimMIM model (mask token and decoder) is written as SimMIM writes it: the encoder under `encoder.`.
    """
    config = model.config
    if not square_windows(config):
        setting = "always_partition" if isinstance(config.window_size, int) else f"window_size {config.window_size!r}"
        raise CheckpointError(
            f"Microsoft's Swin V2 has one square window for every stage, shrunk to small grids, and this model has "
            f"timm's {setting}; convert to timm or hf, which keep it"
        )
    state = model_state_canonical(model)
    out = _rename_all(state, MICROSOFT_NAMES, reverse=True)
    for i, (stage, (height, width)) in enumerate(zip(_encoder(model).stages, _microsoft_stage_grids(config))):
        # The buffers Microsoft's model has at this image size, so that its strict load_state_dict takes the
        # file: its window where it differs from ours (a portrait grid, `_warn_peer_geometry` says so).
        window, shift = microsoft_stage_window(height, width, config.window_size)
        table = relative_coords_table(window, config.pretrained_window_sizes[i])[None]
        for j, block in enumerate(stage.blocks):
            prefix = f"layers.{i}.blocks.{j}."
            own = block.window == (window, window)
            out[prefix + "attn.relative_coords_table"] = (
                block.attn.relative_coords_table.detach().cpu()[None].clone() if own else table.clone()
            )
            out[prefix + "attn.relative_position_index"] = (
                block.attn.relative_position_index.detach().cpu().clone() if own else relative_position_index(window)
            )
            if j % 2 and shift > 0:  # every other block is shifted
                pad_h, pad_w = -height % window, -width % window
                out[prefix + "attn_mask"] = shifted_window_mask(height + pad_h, width + pad_w, window, shift)
    _warn_peer_geometry(config, "microsoft", reading=False, state=out)
    if any(k.startswith("decoder.") for k in out):
        out = {(k if k.startswith("decoder.") else "encoder." + k): v for k, v in out.items()}
    return out


def microsoft_stage_window(height: int, width: int, window: int) -> tuple[int, int]:
    """Window and shift of a stage of `height` x `width` patches in Microsoft's code (its SwinTransformerBlock:
    `if min(input_resolution) <= window_size: shift_size = 0; window_size = min(input_resolution)`): sized by the
    grid's shorter side, where transformers sizes it by the height (swinv2: as `config.window_layout` says,
    `config.stage_window`). The two agree on square and landscape grids, and part on portrait ones."""
    return stage_window(min(height, width), window)  # (below one patch, which Microsoft's code cannot build: 1)


def _microsoft_stage_grids(config: Swinv2Config) -> list[tuple[int, int]]:
    """Each stage's (height, width) in patches as Microsoft's code builds it: `img_size // patch // 2**i`."""
    grid_h, grid_w = (s // p for s, p in zip(config.image_hw, config.patch_hw))
    return [(grid_h // 2**i, grid_w // 2**i) for i in range(len(config.depths))]


# ---- timm
def timm_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's names -> canonical ours (a patch merging moves from the start of stage i+1 to the end of i)."""
    return _drop_derived(_rename_all(state, TIMM_NAMES))


def ours_to_timm(model: torch.nn.Module) -> dict[str, Tensor]:
    """A model's weights in timm's `SwinTransformerV2` layout (timm persists no buffers)."""
    state = model_state_canonical(model)
    _refuse_extras(state, "timm")
    _warn_peer_geometry(model.config, "timm", reading=False, state=state)
    return _rename_all(state, TIMM_NAMES, reverse=True)


# timm's registered Swin V2 models: a written folder names the one of its family (its model_args give the rest)
TIMM_ARCHITECTURES = (
    "swinv2_tiny_window8_256", "swinv2_tiny_window16_256", "swinv2_small_window8_256", "swinv2_small_window16_256",
    "swinv2_base_window8_256", "swinv2_base_window16_256", "swinv2_base_window12_192",
    "swinv2_base_window12to16_192to256", "swinv2_base_window12to24_192to384", "swinv2_large_window12_192",
    "swinv2_large_window12to16_192to256", "swinv2_large_window12to24_192to384",
)
# Activations that timm's `get_act_layer` and transformers (hence `hidden_act`) name alike, computing alike.
TIMM_ACTIVATIONS = ("gelu", "relu", "silu", "swish", "mish", "tanh", "sigmoid", "relu6", "selu", "quick_gelu",
                    "leaky_relu")
_TIMM_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # (Pillow's filter numbers)


def timm_hub_config(model: torch.nn.Module, processor: Any = None) -> dict[str, Any]:
    """The config.json that timm's `save_for_hf` writes beside a model's weights, for `model`: the
    `architecture` of its family and the `model_args` that rebuild it exactly (size, patch, channels, classes,
    widths, depths, heads, windows, pretrained windows, MLP ratio, qkv bias, activation, always_partition),
    and a `pretrained_cfg` with its input size and, from `processor` (else swinv2's defaults), its mean, std
    and interpolation. `timm.create_model("local-dir:FOLDER", pretrained=True)` builds it."""
    config = model.config
    if config.hidden_act not in TIMM_ACTIVATIONS:
        raise CheckpointError(
            f"timm's Swin V2 takes act_layer by name, and this model's hidden_act {config.hidden_act!r} is none that "
            f"timm computes alike ({', '.join(TIMM_ACTIVATIONS)}); write the weights alone (a .safetensors or .pth "
            "path) and build timm's model with an act_layer of your own"
        )
    (height, width), (patch_h, patch_w) = config.image_hw, config.patch_hw
    classes = config.num_labels if any(k.startswith("classifier.") for k in model.state_dict()) else 0
    layers = config.num_layers
    args: dict[str, Any] = {
        "img_size": height if height == width else [height, width],
        "patch_size": patch_h if patch_h == patch_w else [patch_h, patch_w],
        "in_chans": config.num_channels,
        "num_classes": classes,
        "embed_dim": config.embed_dim,
        "depths": list(config.depths),
        "num_heads": list(config.num_heads),
        "window_size": compact_window_size(config.window_size, layers),
        "pretrained_window_sizes": list(config.pretrained_window_sizes)[:layers],
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
    }
    if config.hidden_act != "gelu":
        args["act_layer"] = config.hidden_act
    if config.always_partition:
        args["always_partition"] = True
    family = (config.embed_dim, tuple(config.depths), tuple(config.num_heads))
    named = {name: kw for name in TIMM_ARCHITECTURES if (kw := preset_kwargs(name))
             and (kw["embed_dim"], tuple(kw["depths"]), tuple(kw["num_heads"])) == family}
    exact = [name for name, kw in named.items() if kw["window_size"] == config.window_size]
    architecture = (exact or list(named) or ["swinv2_tiny_window8_256"])[0]
    mean = getattr(processor, "image_mean", [0.485, 0.456, 0.406])
    std = getattr(processor, "image_std", [0.229, 0.224, 0.225])
    pretrained_cfg = {
        "input_size": [config.num_channels, height, width],
        "fixed_input_size": True,
        "interpolation": _TIMM_INTERPOLATION.get(getattr(processor, "resample", 3), "bicubic"),
        "mean": mean if isinstance(mean, list) else [mean] * config.num_channels,
        "std": std if isinstance(std, list) else [std] * config.num_channels,
        "crop_pct": 1.0,  # (swinv2's processor resizes to the input size, as the Swin V2 checkpoints')
        "crop_mode": "center",
        "num_classes": classes,
    }
    return {
        "architecture": architecture,
        "num_classes": classes,
        "num_features": config.hidden_size,
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
        "model_args": args,
    }


def _refuse_extras(state: dict[str, Tensor], fmt: str) -> None:
    """timm and torchvision have no absolute position embeddings, mask token or SimMIM decoder."""
    extras = [
        k
        for k in state
        if k.startswith("decoder.") or k in ("embeddings.mask_token", "embeddings.position_embeddings")
    ]
    if extras:
        raise CheckpointError(
            f"{FORMAT_NAMES[fmt]}'s Swin V2 has no place for {', '.join(extras)}; convert to hf or "
            "microsoft, which keep them (or load the encoder alone with Swinv2Model, without "
            "use_absolute_embeddings)"
        )


# ---- torchvision
def torchvision_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's names -> canonical ours: `qkv.bias = cat(q, 0, v)` becomes `q_bias`, `v_bias`."""
    split: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _TV_QKV_BIAS.match(key)
        if match:
            prefix = key.removesuffix("qkv.bias")
            # The key's third is zero at init and zeroed again in every forward: it carries nothing.
            q, _, v = value.chunk(3)
            split[prefix + "q_bias"], split[prefix + "v_bias"] = q, v
        else:
            split[key] = value
    return _drop_derived(_rename_all(split, TORCHVISION_NAMES))


def ours_to_torchvision(model: torch.nn.Module) -> dict[str, Tensor]:
    """A model's weights in torchvision's `SwinTransformer` (V2 blocks) layout, with its persistent buffers
    (warned where torchvision lays the windows out otherwise, `_peer_geometry`)."""
    config = model.config
    if config.num_channels != 3:  # its stem's convolution is built for RGB: the weights would not load
        raise CheckpointError(
            f"torchvision's Swin V2 takes 3-channel images, and this model has {config.num_channels}; convert to "
            "hf, microsoft or timm (in_chans), which keep the channel count"
        )
    state = model_state_canonical(model)
    _refuse_extras(state, "torchvision")
    fused: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _OURS_QV_BIAS.match(key)
        if not match:
            fused[key] = value
        elif match[3] == "q_bias":
            prefix = key.removesuffix("q_bias")
            fused[prefix + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), state[prefix + "v_bias"]])
    windows = {config.target_window(i) for i in range(config.num_layers)}
    if len(windows) > 1:
        raise CheckpointError(
            f"torchvision's Swin V2 has one window for every stage, and this model has window_size "
            f"{config.window_size!r}; convert to hf or timm, which keep per-stage windows"
        )
    out = _rename_all(fused, TORCHVISION_NAMES, reverse=True)
    window = windows.pop()
    for i, stage in enumerate(_encoder(model).stages):
        table = relative_coords_table(window, config.pretrained_window_sizes[i])[None]
        for j, block in enumerate(stage.blocks):
            prefix = f"features.{2 * i + 1}.{j}.attn."
            if block.attn.q_bias is None:  # torchvision always has a qkv bias: a zero one is the same model
                dim = block.attn.dim
                out[prefix + "qkv.bias"] = block.attn.qkv.weight.new_zeros(3 * dim).detach().cpu()
            out[prefix + "relative_coords_table"] = table.clone()
            out[prefix + "relative_position_index"] = relative_position_index(window).flatten()
    _warn_peer_geometry(config, "torchvision", reading=False, state=out)
    return out


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "swinv2", model)


# ---- detection
def detect_format(state: dict[str, Tensor]) -> str:
    """Which library wrote this state dict (see `FORMAT_NAMES`); raises for anything else."""
    keys = list(state)
    if any(k.endswith("relative_position_bias_table") for k in keys):
        raise CheckpointError(
            "this is a Swin Transformer V1 checkpoint (it has relative_position_bias_table); swinv2 reads "
            "Swin Transformer V2 weights only (continuous position bias, cpb_mlp)"
        )
    if any(".attn.meta_mlp." in k for k in keys):
        raise CheckpointError(
            "this is a timm swinv2_cr_* checkpoint (Swin V2 'CR', timm's re-implementation, with its own "
            "position-bias MLP, meta_mlp, and normalisation layout): another architecture than the paper's code, "
            "transformers and timm's swinv2_* models, whose weights swinv2 reads"
        )
    other = _other_architecture(keys)
    if other:
        raise CheckpointError(
            f"this is not a Swin V2 checkpoint: its keys ({', '.join(other[1])}) are those of {other[0]}. swinv2 "
            "reads Swin Transformer V2 weights only (stages of windowed blocks, layers.N.blocks.M in timm's and "
            "Microsoft's files); use the library and model class that wrote this file"
        )
    if any(".attention.self." in k or "patch_embeddings.projection" in k for k in keys):
        return "hf"
    if any(re.match(r"features\.\d+\.\d+\.attn\.", k) for k in keys):
        return "torchvision"
    if any(re.match(r"encoder\.(patch_embed\.|layers\.\d+\.blocks\.)", k) for k in keys):
        return "microsoft-simmim"
    if any(re.match(r"(patch_embed\.|layers[._]\d+\.blocks\.)", k) for k in keys):
        # timm's first stage has no patch merging, Microsoft's has; with one stage the layouts agree but
        # for the head (`head.fc` in timm). `layers_N` is timm's features_only model.
        if "layers.0.downsample.reduction.weight" in state or "head.weight" in state:
            return "microsoft"
        if "head.fc.weight" in state or any(re.match(r"layers(\.\d+\.downsample\.|_\d+\.)", k) for k in keys):
            return "timm"
        # one stage and no head: Microsoft's code persists its position buffers, timm persists none
        return "microsoft" if any(k.endswith("relative_position_index") for k in keys) else "timm"
    if any(re.search(r"(^|\.)stages\.\d+\.blocks\.\d+\.attn\.", k) for k in keys) and any(
        "embeddings.proj." in k for k in keys
    ):
        return "swinv2"
    raise CheckpointError(
        "unknown checkpoint format: the keys match none of the formats we read ("
        + "; ".join(f"{name}: {text}" for name, text in FORMAT_NAMES.items())
        + f"). First keys: {keys[:5]}"
    )


# Other models whose files share the names of Microsoft's and timm's Swin (`patch_embed.proj`, `head`, `norm`)
# but have no windowed stages (`layers.N.blocks.M`): (a key pattern they have, what they are).
_OTHER_ARCHITECTURES = [
    (r"^(cls_token|pos_embed|dist_token|reg_token)$|^blocks\.\d+\.",
     "a plain Vision Transformer (timm's vit_*, deit_*, beit_*, eva_* layout: blocks.N, cls_token, pos_embed)"),
    (r"^stem\.\d+\.|^stages\.\d+\.blocks\.\d+\.(conv_dw|gamma)",
     "a convolutional network (timm's convnext_* layout: stem, stages.N.blocks.M.conv_dw)"),
]


def _other_architecture(keys: list[str]) -> tuple[str, list[str]] | None:
    """(what it is, some telling keys) for the state dict of a model other than Swin, else None. Only a state dict
    without any Swin stage is judged, so that a Swin V2 file with extra keys still reads."""
    swin = re.compile(r"(^|\.)(layers[._]\d+\.blocks\.|stages\.\d+\.blocks\.\d+\.attn\.|features\.\d+\.\d+\.attn\.)"
                      r"|(^|\.)encoder\.layers\.\d+\.blocks\.")
    if any(swin.search(k) for k in keys):
        return None
    for pattern, name in _OTHER_ARCHITECTURES:
        telling = [k for k in keys if re.search(pattern, k)]
        if telling:
            return name, telling[:3]
    return None


_READERS: dict[str, Callable[[dict[str, Tensor]], dict[str, Tensor]]] = {
    "hf": hf_to_ours,
    "microsoft": microsoft_to_ours,
    "microsoft-simmim": microsoft_to_ours,
    "timm": timm_to_ours,
    "torchvision": torchvision_to_ours,
}


def to_canonical(state: dict[str, Tensor], fmt: str | None = None) -> tuple[dict[str, Tensor], str]:
    """Map any supported state dict onto canonical ours; returns it with the (detected) format."""
    fmt = fmt or detect_format(state)
    if fmt in _READERS:
        return _READERS[fmt](state), fmt
    if fmt == "swinv2":
        body, heads = split_heads(state, "swinv2.")
        return {**_drop_derived(body), **heads}, fmt
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; we read: {', '.join(FORMAT_NAMES)}")


def _with_buffers_renamed(state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """The state dict under our names with the persisted buffers kept (they tell windows and image size)."""
    if fmt in ("microsoft", "microsoft-simmim"):
        return _rename_all(_microsoft_plain(state), MICROSOFT_NAMES)
    if fmt == "torchvision":
        return _rename_all(state, TORCHVISION_NAMES)
    return {}


# ------------------------------------------------------------------------------------------ resolving sources
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
    subfolder: str = "",
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> tuple[Path | None, Path | None]:
    """`(config.json or None, weights file or None)` for a folder (or its `subfolder`), a weights file, or a
    hub id; `variant` and `use_safetensors` choose among a folder's weight files as in transformers."""
    path = Path(name_or_path).expanduser() / subfolder
    if subfolder and not path.exists() and Path(name_or_path).expanduser().exists():
        raise CheckpointError(f"{name_or_path} has no subfolder {subfolder!r}; check the name (or leave subfolder out)")
    if path.is_dir():
        config = path / CONFIG_NAME
        return (config if config.is_file() else None), find_weights(path, variant, use_safetensors)
    if path.is_file():
        if path.name.endswith(".json") and not _is_shard_index(path):
            return path, find_weights(path.parent, variant, use_safetensors)
        if use_safetensors is not None and (path.suffix == ".safetensors" or ".safetensors.index." in path.name) != (
            use_safetensors
        ):
            raise CheckpointError(
                f"{path} is {'not ' if use_safetensors else ''}a safetensors file, but use_safetensors="
                f"{use_safetensors} was given; give another file or leave use_safetensors out"
            )
        sibling = path.parent / CONFIG_NAME
        return (sibling if sibling.is_file() else None), path
    text = str(name_or_path)
    looks_local = (
        text.startswith((".", "/", "~"))
        or text.endswith(WEIGHT_SUFFIXES)
        or (os.sep in text.rstrip("/") and text.count("/") > 1)
    )
    if preset_kwargs(text) is not None and text.count("/") == 0:
        raise CheckpointError(
            f"{text!r} names an official checkpoint, but no file or folder of that name is here. Give the "
            "path to its weights (a Microsoft .pth, a timm or torchvision file, a Hugging Face folder), or "
            f"build an untrained model with Swinv2Config.from_pretrained({text!r})"
        )
    if looks_local or text.count("/") != 1:
        raise CheckpointError(
            f"{text!r} is neither a file nor a folder, nor a Hugging Face Hub id (owner/name). Give the path "
            "to a folder with config.json and model.safetensors, or to a weights file (.safetensors, .bin, "
            ".pth)"
        )
    folder = _hub_download(text, revision, cache_dir, local_files_only) / subfolder
    config = folder / CONFIG_NAME
    return (config if config.is_file() else None), find_weights(folder, variant, use_safetensors)


def resolve_config(name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2Config:
    """The config for a folder, a weights file (inferred from its tensors when it has no config.json), an
    official checkpoint's name in any spelling (`swinv2-tiny-patch4-window8-256`, `microsoft/...`,
    `swinv2_tiny_window8_256`), or a hub id; its `name_or_path` says which."""
    config = _config_for(name_or_path, **overrides)
    config.name_or_path = name_or_path
    return config


def _config_for(name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2Config:
    text = str(name_or_path)
    if not Path(text).expanduser().exists():
        owner, _, repo = text.rpartition("/")
        kwargs = preset_kwargs(repo) if owner in ("", "microsoft") else None
        if kwargs is not None and (not owner or repo.lower() in PRESET_NAMES):
            return Swinv2Config(**{**kwargs, **overrides})
    config_path, weights_path = resolve_source(name_or_path)
    if config_path is not None:
        data = _read_json(config_path)
        if not _is_timm_config(data):
            return Swinv2Config.from_dict(data, **overrides)
    if weights_path is None:
        raise CheckpointError(f"no Swin V2 {CONFIG_NAME} and no weights to infer one from at {name_or_path}")
    state, embedded = read_weights(weights_path)
    fmt = detect_format(state)
    return checkpoint_config(state, fmt, config_path, embedded, weights_path, text, overrides)


def _is_timm_config(data: dict[str, Any]) -> bool:
    """timm's config.json names the model (`architecture`) instead of describing it."""
    return "architecture" in data and "model_type" not in data


# timm's `model_args` (what `timm.models._hub.save_for_hf` records: the keyword arguments `create_model` was
# given, and the model's current img_size, in_chans, num_classes and global_pool) -> our config fields.
TIMM_MODEL_ARGS = {
    "img_size": "image_size",
    "patch_size": "patch_size",
    "in_chans": "num_channels",
    "num_classes": "num_labels",
    "embed_dim": "embed_dim",
    "depths": "depths",
    "num_heads": "num_heads",
    "window_size": "window_size",
    "pretrained_window_sizes": "pretrained_window_sizes",
    "mlp_ratio": "mlp_ratio",
    "qkv_bias": "qkv_bias",
    "drop_path_rate": "drop_path_rate",
    "act_layer": "hidden_act",
    "always_partition": "always_partition",
}
# What a timm model name fixes besides width and depth (`swinv2_base_window12to16_192to256`: window 16, pretrained
# windows (12, 12, 12, 6), 256 px), which the tensors do not tell.
TIMM_NAME_FIELDS = ("window_size", "pretrained_window_sizes", "image_size")
# Arguments that change nothing timm computes at img_size: which input sizes it accepts (swinv2 runs any),
# and the device and dtype it was built on.
TIMM_INPUT_CHECKS = frozenset({"strict_img_size", "dynamic_img_size", "device", "dtype"})
# timm's other dropouts sit elsewhere than transformers' two (the head; attention and MLP projections): no
# field here means the same. They act in training only, and timm itself leaves them out of model_args.
TIMM_DROPOUTS = frozenset({"drop_rate", "proj_drop_rate", "attn_drop_rate"})


def _timm_config_fields(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The config fields told by a timm config.json beyond its `architecture`: `model_args`, and the image
    size of `pretrained_cfg.input_size` where model_args has no img_size (timm before model_args). Raises for
    a setting whose numbers swinv2 cannot compute, instead of computing other ones."""
    args = data.get("model_args") or {}
    pretrained = data.get("pretrained_cfg") or {}
    if not isinstance(args, dict) or not isinstance(pretrained, dict):
        raise CheckpointError(f"{path}: timm's model_args and pretrained_cfg must be JSON objects; fix the file")

    def refuse(setting: str, why: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: timm's {setting} {why}, so its outputs cannot be reproduced here and the checkpoint was not "
            "loaded. Re-create the timm model without it, or pass config=Swinv2Config(...) to load the weights "
            "into swinv2's architecture knowingly"
        )

    for source in (data, args):  # timm writes global_pool at the top and, since model_args, in it too
        pool = source.get("global_pool", "avg")
        if pool != "avg":
            raise refuse(
                f"global_pool={pool!r}",
                "is not the mean over the tokens that Swin V2's classifier (transformers', Microsoft's) reads",
            )
    known = set(TIMM_MODEL_ARGS) | TIMM_INPUT_CHECKS | TIMM_DROPOUTS | {"global_pool"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise refuse(f"model_args {', '.join(unknown)}", "have no counterpart in Swinv2Config")
    dropouts = {k: args[k] for k in sorted(TIMM_DROPOUTS & set(args)) if args[k]}
    if dropouts:
        logger.warning(
            "%s: timm's %s not taken (timm places these dropouts elsewhere than swinv2, and they act only in "
            "training); set hidden_dropout_prob / attention_probs_dropout_prob to fine-tune with dropout",
            path,
            ", ".join(f"{k}={v}" for k, v in dropouts.items()),
        )
    # timm builds `create_model(architecture, **model_args)`: the name's own arguments (window, pretrained
    # windows, image size) hold wherever model_args leave them, even where model_args change the width or depth
    # (then the name no longer describes the tensors, and infer_config would drop it as another architecture's).
    named = preset_kwargs(str(data.get("architecture", ""))) or {}
    fields = {name: named[name] for name in TIMM_NAME_FIELDS if name in named}
    fields.update({ours: args[theirs] for theirs, ours in TIMM_MODEL_ARGS.items() if theirs in args})
    input_size = pretrained.get("input_size")
    if "img_size" not in args and isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        fields["image_size"] = list(input_size[1:])  # (channels, height, width)
    for name in ("image_size", "patch_size"):
        if isinstance(fields.get(name), (list, tuple)):
            height, width = fields[name]
            fields[name] = height if height == width else [height, width]
    depths = fields.get("depths", named.get("depths"))
    if "window_size" in fields and isinstance(depths, (list, tuple)):
        fields["window_size"] = compact_window_size(fields["window_size"], len(depths))
    return fields


def compact_window_size(window_size: Any, num_stages: int) -> Any:
    """`window_size` in its shortest spelling: one side where every stage has the same square window, one
    `[height, width]` where every stage has the same window, else one entry per stage (a side where square,
    unless the first of two stages: timm would read the two as one `[height, width]`).
    A value that is none of timm's spellings is returned as it is, for the config to name."""
    try:
        windows = stage_windows(window_size, num_stages)
    except ValueError:
        return window_size
    if len(set(windows)) == 1:
        height, width = windows[0]
        return height if height == width else [height, width]
    per_stage = [height if height == width else [height, width] for height, width in windows]
    if len(per_stage) == 2 and isinstance(per_stage[0], int):
        return [list(window) for window in windows]  # (timm reads [8, 4], and [8, [4, 2]], as one window)
    return per_stage


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}); re-save the config or fix the file"
        ) from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of config fields, got {type(data).__name__}")
    return data


def _with_library_layout(config: Swinv2Config, fmt: str, keep: Collection[str] = ()) -> Swinv2Config:
    """A config given for weights of format `fmt` (`config=`, `convert --config`): where it holds transformers'
    shifted-window settings (the defaults) and the weights come from another library, a copy with that
    library's (`library_layout`: the shift mask value, the order of shift and padding), so that it computes
    as their library does. A value of its own, or one passed as a keyword of from_pretrained (`keep`), is
    kept; a config the checkpoint records (config.json, or embedded in the file) is never changed: it is the
    model that was saved."""
    defaults = library_layout("hf")
    changes = {
        name: value
        for name, value in library_layout(fmt).items()
        if name not in keep and getattr(config, name) == defaults[name] and value != defaults[name]
    }
    if not changes:
        return config
    config = copy.deepcopy(config)  # (the caller's object is left as it was)
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def library_layout(fmt: str) -> dict[str, Any]:
    """How the library that writes format `fmt` lays out its shifted windows, as config fields: Microsoft's
    code, timm and torchvision add the mask once (-100), transformers twice (-200, as our own files); timm
    sizes windows from the grid each stage runs on and rolls a grid before it pads it to whole windows;
    torchvision never shrinks a window; Microsoft's code sizes it by the grid's shorter side
    (`Swinv2Config.window_layout`)."""
    if fmt in ("hf", "swinv2"):
        return {"shift_mask_value": SHIFT_MASK_VALUE, "window_layout": "transformers"}
    return {"shift_mask_value": MASK_VALUE, "window_layout": fmt.removesuffix("-simmim")}


def checkpoint_config(
    state: dict[str, Tensor],
    fmt: str,
    config_path: Path | None,
    embedded: dict[str, Any] | None,
    weights_path: Path | None,
    name: str,
    overrides: dict[str, Any],
) -> Swinv2Config:
    """The config of a checkpoint: its config.json, else the config embedded in the weights file, else one
    inferred from the tensors and the names (the `architecture` of timm's config.json or train.py checkpoint,
    the file, the folder), with what timm records besides the name (`_timm_config_fields`) and then
    `overrides` on top."""
    names: list[str] = []
    # A weights file given by its path that records its own config is built by it: a config.json beside it
    # may be another model's (files of several models in one folder).
    given_file = weights_path is not None and Path(name).expanduser().resolve() == weights_path.resolve()
    if config_path is not None and not (given_file and embedded is not None and not _is_timm_config(embedded)):
        data = _read_json(config_path)
        if _is_timm_config(data):
            names.append(str(data["architecture"]))
            # timm's name gives the architecture it was created from; model_args what create_model changed
            # (img_size=64, window_size=4, ...). Keyword arguments of from_pretrained still win.
            overrides = {**_timm_config_fields(data, config_path), **overrides}
        else:
            return Swinv2Config.from_dict(data, **overrides)
    if embedded is not None and _is_timm_config(embedded):  # a checkpoint of timm's train.py
        names.append(str(embedded["architecture"]))
        overrides = {**_timm_config_fields(embedded, weights_path or Path(name)), **overrides}
    elif embedded is not None:
        return Swinv2Config.from_dict(embedded, **overrides)
    if weights_path is not None:
        names += [weights_path.name, weights_path.parent.name]
    return infer_config(state, fmt, [*names, name], **overrides)


def infer_config(
    state: dict[str, Tensor], fmt: str | None = None, names: Sequence[str] = (), **overrides: Any
) -> Swinv2Config:
    """A config that fits a state dict of any format, for checkpoints that come without config.json.

    The tensors give embed_dim, patch size, channels, depths, heads (the CPB MLP's last layer), MLP ratio,
    qkv bias, absolute position embeddings, the number of labels (classifier) and encoder_stride (SimMIM
    decoder). Window and pretrained windows come from the buffers that Microsoft's and torchvision's files
    persist, the image size from Microsoft's shift masks or absolute position embeddings, else both from an
    official name among `names` (see `config.preset_kwargs`); `overrides` win over everything. Raises when the
    window or the image size cannot be told (never a guess: it sizes each stage's window and shift).
    """
    canonical, fmt = to_canonical(state, fmt)
    proj = canonical.get("embeddings.proj.weight")
    if proj is None or proj.dim() != 4:
        raise CheckpointError(
            f"cannot infer a config from this {fmt} checkpoint: it has no patch embedding. Pass config=..."
        )
    embed_dim, num_channels, patch_h, patch_w = proj.shape
    depth_of: dict[int, int] = {}
    for key in canonical:
        match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            depth_of[stage] = max(depth_of.get(stage, 0), block + 1)
    num_stages = len(depth_of)
    try:
        if sorted(depth_of) != list(range(num_stages)) or not num_stages:
            raise KeyError("stages")
        num_heads = [
            canonical[f"stages.{i}.blocks.0.attn.cpb_mlp.2.weight"].shape[0] for i in range(num_stages)
        ]
        hidden = [canonical[f"stages.{i}.blocks.0.mlp.fc1.weight"].shape[0] for i in range(num_stages)]
    except KeyError as err:
        raise CheckpointError(
            f"cannot infer a config from this {fmt} checkpoint: {err} is missing. Pass config=..."
        ) from err
    patch = patch_h if patch_h == patch_w else [patch_h, patch_w]
    fields: dict[str, Any] = {
        "patch_size": patch,
        "num_channels": num_channels,
        "embed_dim": embed_dim,
        "depths": [depth_of[i] for i in range(num_stages)],
        "num_heads": num_heads,
        "mlp_ratio": _mlp_ratio(hidden, embed_dim, fmt),
        "qkv_bias": "stages.0.blocks.0.attn.q_bias" in canonical,
        "use_absolute_embeddings": "embeddings.position_embeddings" in canonical,
        "encoder_stride": patch_h * 2 ** (num_stages - 1),
    }
    if "classifier.weight" in canonical:
        fields["num_labels"] = canonical["classifier.weight"].shape[0]
    if "decoder.0.weight" in canonical:
        fields["encoder_stride"] = math.isqrt(canonical["decoder.0.weight"].shape[0] // num_channels)
    named, hint = next(((name, kwargs) for name in names if (kwargs := preset_kwargs(name))), ("", {}))
    contradicted = ""
    if hint and (hint["embed_dim"], hint["depths"]) != (embed_dim, fields["depths"]):
        # a name of another architecture (a renamed file): its window and image size are not this model's either
        contradicted = (f" (its name {named} is that of another architecture: embed_dim {hint['embed_dim']}, depths "
                        f"{hint['depths']}, where its tensors have {embed_dim}, {fields['depths']})")
        hint = {}
    geometry = _geometry(_with_buffers_renamed(state, fmt), canonical, fmt, patch_h, fields["depths"], hint)
    for name in ("window_size", "image_size", "pretrained_window_sizes"):
        value = geometry.get(name, hint.get(name))
        if value is not None:
            fields[name] = value
    fields.setdefault("pretrained_window_sizes", [0] * num_stages)
    fields.update(library_layout(fmt))
    fields.update(overrides)
    # The image size sizes each stage's window and shift (as in transformers), so a guess changes the numbers:
    # a size nothing tells is asked for, in every format. timm and torchvision weights never depend on it, so
    # their files never record it (torchvision persists the window, in its coordinate tables, but no size).
    unknown = [name for name in ("window_size", "image_size") if name not in fields]
    if unknown:
        example = {"window_size": "window_size=8", "image_size": "image_size=256"}
        pronoun = "them" if len(unknown) > 1 else "it"
        why = {
            "microsoft": " (its shift masks tell square sizes only)",
            "microsoft-simmim": " (its shift masks tell square sizes only)",
            "timm": f" (timm's weights do not depend on {pronoun})",
            "torchvision": f" (torchvision's weights do not depend on {pronoun}; its swin_v2_t/s/b are trained at "
            "256 px)",
        }.get(fmt, "")
        raise CheckpointError(
            f"this {fmt} checkpoint does not record its {' and '.join(unknown)}{why} and its name does not tell "
            f"{pronoun}{contradicted}. Pass {pronoun} (from_pretrained(path, "
            f"{', '.join(example[name] for name in unknown)})), or config=Swinv2Config(...) or a preset name "
            "(Swinv2Config.from_pretrained('swinv2-tiny-patch4-window8-256'))"
            + ("" if contradicted else ", or keep the official file name (e.g. swinv2_tiny_patch4_window8_256.pth, "
               "swin_v2_t-b137f0e2.pth)")
        )
    return Swinv2Config(**fields)


def _mlp_ratio(hidden: list[int], embed_dim: int, fmt: str) -> float:
    """The MLP ratio that gives every stage's hidden width, `int(dim * mlp_ratio)` for its `dim = embed_dim
    * 2**i` as the model (and transformers, timm, Microsoft) computes it: the shortest decimal that does.
    Stage 1 alone can be wrong (3.3 gives 52 for 16 channels, and 52 / 16 = 3.25 gives 104 for 32, not 105)."""

    def fits(ratio: float) -> bool:
        return all(int(embed_dim * 2**i * ratio) == h for i, h in enumerate(hidden))

    low = max(h / (embed_dim * 2**i) for i, h in enumerate(hidden))
    for decimals in range(8):
        ratio = math.ceil(low * 10**decimals) / 10**decimals
        if fits(ratio):
            return ratio
    for ratio in (low, hidden[0] / embed_dim):  # 1e-8 apart from a fitting decimal: float rounding
        if fits(ratio):
            return ratio
    raise CheckpointError(
        f"cannot infer a config from this {fmt} checkpoint: its MLP widths {hidden} (embed_dim {embed_dim}) fit "
        "no single mlp_ratio. Pass config=..."
    )


def _geometry(
    full: dict[str, Tensor],
    canonical: dict[str, Tensor],
    fmt: str,
    patch: int,
    depths: list[int],
    hint: dict[str, Any],
) -> dict[str, Any]:
    """Window, image size and pretrained windows told by persisted buffers and position embeddings."""
    windows: dict[int, tuple[int, int]] = {}
    pretrained: dict[int, int] = {}
    masks: dict[int, int] = {}
    for key, value in full.items():
        match = re.match(r"stages\.(\d+)\.blocks\.\d+\.(attn\.relative_coords_table|attn_mask)$", key)
        if not match:
            continue
        stage = int(match[1])
        if match[2] == "attn_mask":
            masks[stage] = value.shape[0]
        else:
            height, width = (value.shape[-3] + 1) // 2, (value.shape[-2] + 1) // 2
            if height != width and fmt != "torchvision":
                raise CheckpointError(
                    f"the checkpoint's stage {stage + 1} has {height}x{width} windows (its relative_coords_table): "
                    f"{fmt}'s Swin V2 has square windows only; a rectangular window is timm's or torchvision's, "
                    "whose files are read as theirs"
                )
            windows[stage] = (height, width)
            pretrained[stage] = _pretrained_window(value, height)
    out: dict[str, Any] = {}
    if sorted(pretrained) == list(range(len(depths))):
        out["pretrained_window_sizes"] = [pretrained[i] for i in range(len(depths))]
    positions = canonical.get("embeddings.position_embeddings")
    if fmt == "torchvision" and windows:  # its target windows, which never shrink: (height, width), per stage
        if sorted(windows) == list(range(len(depths))):
            out["window_size"] = compact_window_size([windows[i] for i in range(len(depths))], len(depths))
        elif len(set(windows.values())) == 1:
            out["window_size"] = compact_window_size(windows[min(windows)], len(depths))
        return out  # (it persists no shift mask, which would tell the image size)
    windows = {stage: w[0] for stage, w in windows.items()}
    if windows:  # (windows shrink to small grids: the largest is the target)
        out["window_size"] = max(windows.values())
    if fmt.startswith("microsoft") and windows:
        out.update(_microsoft_image_size(windows, masks, depths, patch, out["window_size"], positions, hint))
        return out
    for stage, count in sorted(masks.items()):
        side = math.isqrt(count)
        if side * side == count and stage in windows:  # a square grid of windows
            out["image_size"] = windows[stage] * side * 2**stage * patch
            break
    else:
        if positions is not None:
            out["image_size"] = math.isqrt(positions.shape[1]) * patch
    return out


def _microsoft_image_size(
    windows: dict[int, int],
    masks: dict[int, int],
    depths: list[int],
    patch: int,
    window: int,
    positions: Tensor | None,
    hint: dict[str, Any],
) -> dict[str, Any]:
    """The (square) image size and window of a Microsoft file without a config.

    The file keeps each stage's window (its coordinate table) and, for shifted blocks, the shift mask with
    one entry per window. A stage's grid is `image / patch // 2**i`; its window shrinks to that grid when the
    grid is not larger, and then nothing is shifted. Every grid that reproduces all of these builds the same
    model; among them the official name's size wins, then the size of the position embeddings, then a size
    Microsoft's code could run (every stage a whole number of windows), the largest.
    """
    shifted = {i: i in masks for i, depth in enumerate(depths) if depth > 1} if masks else {}

    def fits(grid: int, window: int) -> bool:
        for i in range(len(depths)):
            resolution = grid // 2**i
            own, shift = stage_window(resolution, window)
            if windows.get(i, own) != own or shifted.get(i, shift > 0) != (shift > 0):
                return False
            if i in masks and masks[i] != math.ceil(resolution / own) ** 2:
                return False
        return True

    if hint.get("image_size") and hint.get("window_size", 0) >= window:
        hinted = hint["image_size"]
        hinted = hinted if isinstance(hinted, int) else hinted[0]
        if fits(hinted // patch, hint["window_size"]):
            return {"image_size": hinted, "window_size": hint["window_size"]}
    if positions is not None:
        side = math.isqrt(positions.shape[1])
        if side * side == positions.shape[1] and fits(side, window):
            return {"image_size": side * patch}
    limit = 4096
    grids = [grid for grid in range(1, limit + 1) if fits(grid, window)]
    if not grids or grids[-1] == limit:  # nothing fits (not a square image), or nothing bounds the size
        return {}  # (infer_config asks for the size, unless it was given)
    whole = [g for g in grids if all((g // 2**i) % stage_window(g // 2**i, window)[0] == 0 for i in range(len(depths)))]
    return {"image_size": max(whole or grids) * patch}


def _pretrained_window(table: Tensor, window: int) -> int:
    """The pretrained window a coordinate table was normalised by (0: its own window).

    The largest coordinate is `log2(1 + 8 (W-1) / (W'-1)) / 3`, so `W' = 1 + 8 (W-1) / (2**(3 t) - 1)`.
    """
    if window <= 1:
        return 0
    top = float(table.reshape(-1, 2)[-1, 0])
    if not math.isfinite(top) or top <= 0:
        return 0
    reference = round(1 + 8 * (window - 1) / (2 ** (3 * top) - 1))
    return 0 if reference == window else reference


# ---------------------------------------------------------------------------------------------- loading
def _dtype_named(name: str) -> torch.dtype | None:
    """The torch dtype a name spells ("float16", "torch.bfloat16"), or None."""
    dtype = getattr(torch, name.replace("torch.", ""), None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _target_dtype(torch_dtype: Any, state: dict[str, Tensor], config: Swinv2Config | None = None) -> torch.dtype | None:
    """The dtype to load in: float32 by default; for "auto", as transformers, the dtype config.json names,
    else the file's first floating-point tensor's."""
    if torch_dtype is None:
        return torch.float32
    if torch_dtype == "auto":
        named = getattr(config, "torch_dtype", None)
        if isinstance(named, torch.dtype):
            return named
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        return floats[0] if floats else torch.float32
    if isinstance(torch_dtype, str):
        if _dtype_named(torch_dtype) is None:
            raise ValueError(f"unknown torch_dtype {torch_dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'")
        return _dtype_named(torch_dtype)
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


_ANY_TENSOR = torch.empty(3, 1, 1)  # stands for a weight where only its names are wanted (`_names_in_format`)
_HF_QKV_LEFT = re.compile(
    r"^(swinv2\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.weight$"
)


def _names_in_format(keys: Sequence[str], fmt: str, prefix: str) -> list[str]:
    """Keys of a model whose encoder sits under `prefix`, under the names the checkpoint's format gives them, for
    errors and loading info: a transformers user looks for `swinv2.layernorm.weight`, a timm user for
    `layers.1.blocks.0.mlp.fc1.weight`, not for our names of them. Keys a format has no name for stay as they
    are (a checkpoint's unknown keys pass through the conversion unrenamed)."""
    out: list[str] = []
    for key in keys:
        canonical = key if key.startswith(HEAD_PREFIXES) else key.removeprefix(prefix)
        state = {canonical: _ANY_TENSOR}
        if fmt == "hf":
            names = list(ours_to_hf(state, with_prefix=bool(prefix)))
        elif fmt in ("microsoft", "microsoft-simmim"):
            names = list(_rename_all(state, MICROSOFT_NAMES, reverse=True))
            if fmt == "microsoft-simmim":
                names = [n if n.startswith("decoder.") else "encoder." + n for n in names]
        elif fmt == "timm":
            names = list(_rename_all(state, TIMM_NAMES, reverse=True))
        elif fmt == "torchvision":
            fused = _OURS_QV_BIAS.sub(r"stages.\1.blocks.\2.attn.qkv.bias", canonical)
            names = list(_rename_all({fused: _ANY_TENSOR}, TORCHVISION_NAMES, reverse=True))
        else:
            names = [key]
        out += [name for name in names if name not in out]
    return out


def _fill_partial_qkv(state: dict[str, Tensor], own: Mapping[str, Tensor], prefix: str) -> list[str]:
    """A transformers checkpoint that lacks some of a block's query, key and value weights, which `hf_to_ours`
    kept under their names: the ones there fill their thirds of our fused `qkv.weight`, and the missing ones
    keep the model's initial values, as transformers initialises just the missing keys. Returns the names of
    the missing ones. Parts of another shape, or of a block the model has not, stay unexpected."""
    parts: dict[tuple[str, str], dict[str, str]] = {}
    for key in state:
        match = _HF_QKV_LEFT.match(key)
        if match:
            parts.setdefault((match[2], match[3]), {})[match[4]] = key
    missing = []
    for (stage, block), present in parts.items():
        target = f"{prefix}stages.{stage}.blocks.{block}.attn.qkv.weight"
        if target not in own or target in state:
            continue
        fused = own[target].detach().clone()
        thirds = dict(zip(("query", "key", "value"), fused.chunk(3)))
        if any(state[key].shape != thirds[name].shape for name, key in present.items()):
            continue
        for name, third in thirds.items():
            if name in present:
                third.copy_(state.pop(present[name]))
            else:
                missing.append(f"{prefix}encoder.layers.{stage}.blocks.{block}.attention.self.{name}.weight")
        state[target] = fused
    return missing


# How a caller of `load_into_model` loads a checkpoint that does not fit anyway, appended to its errors.
PYTHON_RELAX = {
    "mismatched": ", or pass ignore_mismatched_sizes=True to re-initialise these weights",
    "missing": ", or pass strict=False to load what fits",
}


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
    relax: Mapping[str, str] = PYTHON_RELAX,
) -> dict[str, list]:
    """Copy a canonical state dict into `model`. Heads of another size (labels) and missing ones (and the
    encoder's final norm, which a backbone checkpoint has not) are initialised afresh with a warning; any other
    missing, unexpected or mis-shaped weight is an error listing them. Returns what transformers'
    `output_loading_info` gives: the model's `missing_keys`, the checkpoint's `unexpected_keys`,
    `mismatched_keys` as `(key, checkpoint shape, model shape)` and `error_msgs`, every key named as the
    checkpoint's format names it (a missing weight: as that format would name it). `relax` says how to load
    anyway, for the error messages."""
    state = _fit_to_model(model, state)
    own = model.state_dict()
    prefix = "swinv2." if any(k.startswith("swinv2.") for k in own) else ""

    def named(keys: Sequence[str]) -> list[str]:
        return _names_in_format(keys, fmt, prefix)

    partial = _fill_partial_qkv(state, own, prefix) if fmt == "hf" else []
    head_like = (
        "classifier.", "decoder.", "swinv2.embeddings.mask_token", "embeddings.mask_token", "norm.", "swinv2.norm."
    )
    unexpected = [k for k in state if k not in own]
    # Heads the model lacks are left out: a SimMIM or classification checkpoint fine-tunes another head.
    # So are zero q and v biases for a model without them: torchvision always has a qkv bias, and a model
    # with qkv_bias=False is written there with zeros, which carry nothing.
    ignored_heads = [
        k
        for k in unexpected
        if k.startswith(HEAD_PREFIXES)
        or k in ("norm.weight", "norm.bias")
        or k.endswith("embeddings.mask_token")
        or (k.endswith((".attn.q_bias", ".attn.v_bias")) and not state[k].any())
    ]
    unexpected = [k for k in unexpected if k not in ignored_heads]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    fresh: dict[str, str] = {}  # re-initialised weight -> its two shapes, for the warning
    # A head of another size (other labels) is a new head; the final norm, or a classifier reading features of
    # another width, is another encoder (a config or a checkpoint cut short): an error like any other weight.
    other_encoder = {
        k for k in mismatched
        if k.startswith(("norm.", "swinv2.norm."))
        or (k.startswith("classifier.weight") and state[k].shape[1:] != own[k].shape[1:])
    }
    for key in mismatched:
        if key.endswith("position_embeddings") and state[key].dim() == 3:
            state[key] = _resize_positions(state[key], _encoder(model).embeddings.grid_size)
        elif (key.startswith(head_like) and key not in other_encoder) or ignore_mismatched_sizes:
            fresh[key] = f"{named([key])[0]} (checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
        else:
            raise CheckpointError(
                f"{source}: weight {named([key])[0]} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model (detected format: {fmt}); the config does not match "
                f"the weights. Use the checkpoint's own config.json{relax['mismatched']}"
            )
    mismatched_keys = [(named([k])[0], tuple(state[k].shape), tuple(own[k].shape)) for k in fresh]
    for key in fresh:
        del state[key]
    missing = [k for k in own if k not in state and k not in fresh]
    # new heads keep the model's names (a timm or SimMIM file has no name for a classifier it never had)
    missing_heads = [
        k if k.startswith(HEAD_PREFIXES) else named([k])[0] for k in missing if k.startswith(head_like)
    ]
    missing = named([k for k in missing if not k.startswith(head_like)]) + partial
    unexpected = named(unexpected)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
        raise CheckpointError(
            f"{source}: the checkpoint does not fit {type(model).__name__} (detected format: {fmt}); "
            + "; ".join(parts)
            + f". Check that the config matches the weights{relax['missing']}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    not_loaded = list(fresh.values()) + missing_heads + ([] if strict else missing)
    if not_loaded:
        warnings.warn(
            f"{type(model).__name__}: these weights were not in the checkpoint {source} (or did not fit) and "
            f"are newly initialised; train them before use: {_describe(not_loaded)}",
            stacklevel=3,
        )
    ignored_heads = named(ignored_heads)
    if ignored_heads or (unexpected and not strict):
        logger.info("unused weights from %s: %s", source, _describe(ignored_heads + unexpected))
    return {
        "missing_keys": missing_heads + missing,
        "unexpected_keys": ignored_heads + unexpected,
        "mismatched_keys": mismatched_keys,
        "error_msgs": [],
    }


def in_model_keys(model: torch.nn.Module, state: Any) -> Any:
    """A state dict in another library's layout (transformers, timm, torchvision, Microsoft) under `model`'s
    keys; ours, or keys no format explains (a partial dict), unchanged. Another architecture's weights (Swin V1,
    timm's swinv2_cr) raise the error that names it."""
    try:
        fmt = detect_format(state)
    except CheckpointError as err:
        if not str(err).startswith("unknown checkpoint format"):
            raise
        return state
    if fmt not in _READERS:
        return state
    canonical = _READERS[fmt](dict(state))
    config = getattr(model, "config", None)
    if isinstance(config, Swinv2Config):  # (weights of another library, computed with this model's layout)
        _warn_peer_geometry(config, fmt.removesuffix("-simmim"), reading=None, state=canonical)
    return _unknown_keys_as_given(_fit_to_model(model, canonical), state, model.state_dict())


def _unknown_keys_as_given(converted: dict[str, Any], given: Mapping[str, Any], own: Mapping[str, Any]) -> dict:
    """`converted` with each key the model does not have back under the name it was given, so that
    `load_state_dict` reports it as the caller wrote it (as transformers, which converts nothing, does). Such
    tensors pass through the conversion as they are: found by identity, where exactly one key held them."""
    names: dict[int, list[str]] = {}
    for key, value in given.items():
        names.setdefault(id(value), []).append(key)
    out = {}
    for key, value in converted.items():
        if key not in own and len(names.get(id(value), ())) == 1:
            key = names[id(value)][0]
        out[key] = value
    return out


def _resize_positions(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bicubically resize absolute position embeddings `(1, N, C)` to the model's patch grid `(gh, gw)`.

    The checkpoint's grid is not stored, only its N rows: it is taken to have the model's aspect ratio (a
    square grid for a square model), the only reading of N that a resize to that grid can mean.
    """
    gh, gw = grid
    n_old = pos.shape[1]
    old_hw = None
    for h in range(1, math.isqrt(n_old * gh // max(gw, 1)) + 2):
        if n_old % h == 0 and h * gw == (n_old // h) * gh:
            old_hw = (h, n_old // h)
    if old_hw is None:
        raise CheckpointError(
            f"the checkpoint's {n_old} absolute position embeddings do not form a grid of the model's aspect "
            f"ratio {gh}x{gw}, so they cannot be resized to it; pass the checkpoint's own image_size (and "
            "patch_size) instead"
        )
    image = pos.reshape(1, *old_hw, -1).permute(0, 3, 1, 2).float()
    image = torch.nn.functional.interpolate(image, size=(gh, gw), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(pos.dtype)


# transformers' `from_pretrained` options for the Hub client and its loader, which have nothing to do here
# (files are read whole, on the CPU, then placed): accepted and dropped, never written into the config.
LOADER_NO_OPS = frozenset({
    "token", "use_auth_token", "force_download", "resume_download", "proxies", "trust_remote_code",
    "low_cpu_mem_usage", "attn_implementation", "mirror", "user_agent", "code_revision", "_fast_init",
    "_from_auto", "_from_pipeline", "_commit_hash",
})
# transformers' options for what swinv2 does not do: an error that says so, never a silent fallback.
LOADER_UNSUPPORTED = {
    "quantization_config": "quantised loading", "load_in_8bit": "quantised loading",
    "load_in_4bit": "quantised loading", "from_tf": "TensorFlow checkpoints", "from_flax": "Flax checkpoints",
    "gguf_file": "GGUF files", "tp_plan": "tensor parallelism", "tp_size": "tensor parallelism",
    "max_memory": "a model split over devices", "offload_folder": "offloading",
    "offload_state_dict": "offloading", "offload_buffers": "offloading", "key_mapping": "custom key mappings",
    "adapter_name": "PEFT adapters", "adapter_kwargs": "PEFT adapters",
}


def _split_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`from_pretrained`'s remaining keyword arguments -> (the model constructor's, config overrides), with
    the Hub options dropped and what swinv2 cannot honour refused."""
    for name in kwargs:
        if name in LOADER_UNSUPPORTED:
            raise ValueError(
                f"from_pretrained({name}=...): swinv2 has no {LOADER_UNSUPPORTED[name]}; load the model without "
                "it (and quantise or convert it afterwards with the tool of your choice)"
            )
    init_names = set(inspect.signature(cls.__init__).parameters) - {"self", "config"}
    model_kwargs = {k: v for k, v in kwargs.items() if k in init_names}
    overrides = {k: v for k, v in kwargs.items() if k not in init_names and k not in LOADER_NO_OPS}
    return model_kwargs, overrides


def _refuse_unknown(cls: type, overrides: dict[str, Any], stored: Callable[[], Any]) -> None:
    """As transformers: a keyword that names no config field (of Swinv2Config, or one of `stored()`, the keys
    of the checkpoint's config, read only when needed) and no constructor argument is a TypeError, not a
    silent no-op written into config.json."""
    unknown = [k for k in overrides if k not in CONFIG_FIELDS]
    if unknown:
        known = stored()
        unknown = [k for k in unknown if k not in known]
    if unknown:
        raise TypeError(
            f"{cls.__name__}.from_pretrained() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
            "not a loading option, a constructor argument or a config field (Swinv2Config's, or one in the "
            "checkpoint's config.json)"
        )


def _as_config(config: Any) -> Swinv2Config | None:
    """`from_pretrained`'s `config`: ours, a path or preset name, or transformers' Swinv2Config (by its dict)."""
    if config is None or isinstance(config, Swinv2Config):
        return config
    if isinstance(config, (str, os.PathLike)):  # a config.json, its folder or a preset name, as in transformers
        return resolve_config(config)
    if callable(getattr(config, "to_dict", None)) and getattr(config, "model_type", None) in ("swinv2", "swin"):
        return Swinv2Config.from_dict(transformers_config_fields(config))
    raise TypeError(
        "config must be a Swinv2Config (swinv2's or transformers'), a path to a config.json or a preset name, "
        f"got {type(config).__module__}.{type(config).__name__}"
    )


def load_pretrained(
    cls: type,
    name_or_path: str | os.PathLike,
    config: Any = None,
    torch_dtype: Any = None,
    device: Any = None,
    ignore_mismatched_sizes: bool = False,
    strict: bool = True,
    revision: str | None = None,
    cache_dir: Any = None,
    local_files_only: bool = False,
    subfolder: str = "",
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, dict[str, list]]:
    """Build `cls` from the config, load the weights found at `name_or_path` (see `from_pretrained`), and
    return it with `load_into_model`'s loading info.

    Keyword arguments that `cls.__init__` takes besides the config (`add_pooling_layer`, `use_mask_token` of
    `Swinv2Model`) go to the model, as in transformers; config fields override the config.
    """
    model_kwargs, config_overrides = _split_kwargs(cls, kwargs)
    config_path, weights_path = resolve_source(
        name_or_path, revision, cache_dir, local_files_only, subfolder, variant, use_safetensors
    )
    if weights_path is None:
        raise _no_weights(Path(name_or_path) / subfolder if subfolder else name_or_path, variant, use_safetensors)
    state, embedded = read_weights(weights_path)
    canonical, fmt = to_canonical(state)
    config = _as_config(config)

    def stored() -> Any:
        if config is not None:
            return config.extra
        if config_path is None:
            return embedded or {}
        try:
            return json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # (checkpoint_config names the problem)

    _refuse_unknown(cls, config_overrides, stored)
    if config is None:
        config = checkpoint_config(
            state, fmt, config_path, embedded, weights_path, str(name_or_path), config_overrides
        )
    else:  # a config of the caller's, for these weights
        if config_overrides:
            config = Swinv2Config.from_dict(config.to_dict(), **config_overrides)
        config = _with_library_layout(config, fmt, keep=config_overrides)
    if fmt in ("timm", "torchvision", "microsoft", "microsoft-simmim"):
        _warn_peer_geometry(config, fmt.removesuffix("-simmim"), reading=True, state=canonical)
    dtype = _target_dtype(torch_dtype, state, config)
    model = cls(config, **model_kwargs)
    info = load_into_model(model, canonical, fmt, strict, ignore_mismatched_sizes, str(weights_path))
    model.to(device=device, dtype=dtype)
    model.config.torch_dtype = model.dtype  # what it holds now, as in transformers
    model.config.name_or_path = name_or_path
    model.eval()
    return model, info


def _peer_geometry(config: Swinv2Config, fmt: str) -> list[str]:
    """Where, at `config.image_size`, timm, torchvision or transformers (`fmt` "hf": a folder written for it,
    which it reads with its own layout) lays its windows out otherwise than swinv2 with `config`: one line per
    difference, empty where they compute alike.

    timm (1.0) drops an image's partial patches, sizes window and shift per side from the grid each stage
    runs on, and shifts before it pads the grid to whole windows; torchvision drops partial patches, never
    shrinks its square window, pads the grid to whole windows and then shifts each side unless one window
    covers it. swinv2 does either with their `window_layout`, and as transformers by default: partial patches
    zero-padded, a square window and shift sized from the grid's height at `image_size` (floor-halved from
    stage to stage), padded, then shifted (`config.stage_window`). Patch merging pads an odd grid alike in
    all. Microsoft's code sizes window and shift from the grid's shorter side (`microsoft_stage_window`):
    only that is compared for it (it runs only on whole windows and even grids, which every layout computes
    alike)."""
    if fmt == "microsoft":
        return _microsoft_geometry(config)
    library = "transformers" if fmt == "hf" else fmt
    if fmt == "hf" and (config.window_layout == "transformers" or not square_windows(config)):
        return []  # (its own layout; or a config it builds no model of, which convert says apart)
    (h, w), (ph, pw) = config.image_hw, config.patch_hw
    lines = []
    if (h % ph or w % pw) and fmt == "hf":  # (the config drops them: not transformers' layout)
        lines.append(f"patch {ph}x{pw} does not divide the image {h}x{w}: transformers pads the last pixels to a "
                     "whole patch, this config drops them")
    elif (h % ph or w % pw) and not config.drops_partial_patches:
        return [f"patch {ph}x{pw} does not divide the image {h}x{w}: {fmt} drops the last pixels, this config "
                "pads them to a whole patch"]
    grid = (h // ph, w // pw)  # the grid each stage runs on: odd grids are padded before merging
    # timm's always_partition is the config's own (a timm file read, or the timm model it is written for)
    always = fmt == "timm" and config.always_partition
    if fmt == "hf":
        transformers_config = copy.deepcopy(config)
        transformers_config.window_layout = "transformers"
    for stage, depth in enumerate(config.depths):
        ours, shift = config.stage_window(stage)
        if fmt == "hf":  # square, from the grid's height at image_size
            theirs, shifts = transformers_config.stage_window(stage)
        else:
            theirs, shifts = zip(*(
                stage_window(side, target, shrink=fmt == "timm" and not always, always_shift=always)
                for side, target in zip(grid, config.target_window(stage))
            ))
        if depth < 2:  # only every other block is shifted
            shift, shifts = (0, 0), (0, 0)
        # Shifting first moves the padding into other windows, unless the padding is the half window the
        # shift rolls over (the real tokens then meet the same ones either way).
        pads = (fmt == "timm") != (config.window_layout == "timm") and any(
            s and -side % win and not (-side % win == s and win == 2 * s) for side, win, s in zip(grid, ours, shift)
        )
        if theirs != ours or shifts != shift:
            lines.append(
                f"stage {stage + 1} ({grid[0]}x{grid[1]} patches): {library} window {theirs[0]}x{theirs[1]} shift "
                f"{shifts[0]},{shifts[1]} against this config's window {ours[0]}x{ours[1]} shift {shift[0]},{shift[1]}"
            )
        elif pads:
            order = "shifts before it pads the grid" if fmt == "timm" else "pads the grid before it shifts"
            lines.append(f"stage {stage + 1} ({grid[0]}x{grid[1]} patches): {library} {order}, where this config "
                         f"does the other (window_layout={config.window_layout!r})")
        grid = tuple(-(-side // 2) for side in grid)
    return lines


def square_windows(config: Swinv2Config) -> bool:
    """Whether `config` has what transformers and Microsoft's code can build: one square window side for every
    stage (shrunk to small grids), no timm always_partition."""
    return isinstance(config.window_size, int) and not config.always_partition


def _microsoft_geometry(config: Swinv2Config) -> list[str]:
    """`_peer_geometry` for Microsoft's code: the stages whose window or shift it sizes otherwise (portrait)."""
    lines = []
    for stage, (depth, grid) in enumerate(zip(config.depths, _microsoft_stage_grids(config))):
        ours, shift = config.stage_window(stage)
        theirs, their_shift = microsoft_stage_window(*grid, config.window_size)
        if depth < 2:  # only every other block is shifted
            shift, their_shift = (0, 0), 0
        if ((theirs, theirs), (their_shift, their_shift)) != (ours, shift):
            lines.append(
                f"stage {stage + 1} ({grid[0]}x{grid[1]} patches): microsoft window {theirs} shift {their_shift} "
                f"(from the shorter side) against this config's window {ours[0]}x{ours[1]} shift "
                f"{shift[0]},{shift[1]}"
            )
    return lines


def _mask_value_difference(config: Swinv2Config, fmt: str, state: Mapping[str, Any] | None) -> str | None:
    """A line when the library masks shifted windows with another value than `config` and the weights' logit
    scales let that show: a masked score can come within `2 s + 16 - |mask|` of an unmasked one (cosines in
    [-1, 1] times the head's scale s <= 100, the position bias in (0, 16)), so where even the weaker mask
    leaves masked pairs more than ~1e-6 of the weight (s above ~35), the two masks give other outputs."""
    theirs = library_layout(fmt)["shift_mask_value"]
    if state is None or config.shift_mask_value == theirs:
        return None
    scales = [v for k, v in state.items() if k.endswith("logit_scale") and isinstance(v, Tensor) and v.numel()]
    if not scales:
        return None
    largest = max(float(v.detach().float().clamp(max=math.log(100.0)).exp().max()) for v in scales)
    weaker = min(abs(config.shift_mask_value), abs(theirs))
    if 2 * largest + 16 - weaker < math.log(1e-6):
        return None
    return (f"it masks shifted windows with {theirs:g} where swinv2 has shift_mask_value {config.shift_mask_value:g}, "
            f"which shows where a head's logit scale is near its clamp of 100 (here up to {largest:.1f})")


def _warn_peer_geometry(
    config: Swinv2Config, fmt: str, reading: bool | None, state: Mapping[str, Any] | None = None
) -> None:
    """Warn where a transformers, timm, torchvision or Microsoft model computes otherwise than swinv2 at
    `config.image_size`, or with its weights' logit scales (`state`) masks shifted windows otherwise.
    `reading`: True for a checkpoint read, False for one written, None for a state dict loaded into a model."""
    mask = _mask_value_difference(config, fmt, state)
    lines = _peer_geometry(config, fmt)
    if not lines and mask is None:
        return
    library = "transformers" if fmt == "hf" else fmt
    possessive = "'" if library.endswith("s") else "'s"
    kind = {True: f"this {library} checkpoint", False: f"the {library} model that loads this file",
            None: f"the {library} model this state dict comes from"}[reading]
    # (timm's always_partition shifts grids of one window, which no other library does at any size)
    official = isinstance(config.window_size, int) and not config.always_partition
    parts = []
    if lines:
        parts.append(
            f"at image_size {config.image_size} it lays its windows out otherwise than swinv2 ({'; '.join(lines)})"
            + ("; image sizes where every stage's grid is square and whole windows (the official ones) agree"
               if official else "")
        )
    if mask is not None:
        parts.append(mask)
    fix = ""
    if reading is None:
        theirs = library_layout(fmt)
        fix = (f"; to compute as {library} does, build the model with window_layout={theirs['window_layout']!r} "
               f"and shift_mask_value={theirs['shift_mask_value']:g} (from_pretrained of the file sets them)")
    warnings.warn(
        f"{kind} computes otherwise than swinv2 with this config: {'; and '.join(parts)}, so its outputs "
        f"{'differ' if lines else 'can differ (by up to ~1e-2 where masked pairs score high)'} "
        f"from {library}{possessive}{fix}",
        stacklevel=4,
    )


# ---------------------------------------------------------------------------------------------- saving
def model_state_canonical(model: torch.nn.Module) -> dict[str, Tensor]:
    state = {k: v for k, v in model.state_dict().items() if not _is_derived(k)}
    body, heads = split_heads(state, "swinv2.")
    return {**body, **heads}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a size as transformers spells `max_shard_size`: "5GB" (10^9), "500MiB" (2^20)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B\s*", str(size).upper())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"max_shard_size {size!r} is not a size; use bytes (an int) or e.g. '5GB', '500MiB'")
    base = 1024 if match[3] else 1000
    return int(float(match[1]) * base ** " KMGT".index(match[2] or " "))


def _shards(state: dict[str, Tensor], limit: int) -> list[dict[str, Tensor]]:
    """The tensors in order, cut into shards of at most `limit` bytes (a larger tensor is a shard alone)."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


_SHARD = re.compile(r"-\d{5}-of-\d{5}(?=\.[a-z]+$)")


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | os.PathLike,
    safe_serialization: bool = True,
    max_shard_size: int | str = "5GB",
    variant: str | None = None,
) -> None:
    """config.json + model.safetensors (or pytorch_model.bin) in transformers' layout, each file written
    atomically. Above `max_shard_size` the weights go into shards (`model-00001-of-00002.safetensors`) with
    transformers' index; `variant` ("fp16") names the files `model.fp16.safetensors`. Weight files of the
    folder that this save does not write (another format, older shards) are removed afterwards: they would
    be read instead of, or with, the new ones."""
    from safetensors.torch import save_file

    with_prefix = any(k.startswith("swinv2.") for k in model.state_dict())
    state = ours_to_hf(model_state_canonical(model), with_prefix)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]
    config_dict["torch_dtype"] = config_dict["dtype"] = str(next(iter(state.values())).dtype).replace("torch.", "")

    def write(path: Path, tensors: dict[str, Tensor]) -> None:
        if safe_serialization:
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(path, lambda tmp: torch.save(tensors, tmp))

    weights_name, index_name = weight_names(variant, safe_serialization)
    shards = _shards(state, parse_size(max_shard_size))
    with staged_folder(save_directory, stale=_weight_file_of(variant)) as folder:
        if len(shards) == 1:
            write(folder / weights_name, state)
        else:
            stem, suffix = weights_name.rsplit(".", 1)
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"{stem}-{i:05d}-of-{len(shards):05d}.{suffix}"
                write(folder / name, shard)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
            atomic_write(folder / index_name, lambda tmp: Path(tmp).write_text(index + "\n", encoding="utf-8"))
        text = json.dumps(config_dict, indent=2, sort_keys=True) + "\n"
        atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _weight_file_of(variant: str | None) -> Callable[[str], bool]:
    """Whether a file name is a weights file (or shard, or index) that `save_pretrained` with `variant` could
    have written in any format: one such file not written again would be read instead of, or with, the new."""
    names = set(weight_names(variant))
    return lambda name: name in names or _SHARD.sub("", name) in names


# ---------------------------------------------------------------------------------------------- other formats
_WRITERS: dict[str, Callable[[torch.nn.Module], dict[str, Tensor]]] = {
    "microsoft": ours_to_microsoft,
    "timm": ours_to_timm,
    "torchvision": ours_to_torchvision,
}


def export_state_dict(model: torch.nn.Module, fmt: str) -> dict[str, Tensor]:
    """The model's weights in another library's layout: `hf`, `microsoft`, `timm` or `torchvision`."""
    if fmt == "hf":
        with_prefix = any(k.startswith("swinv2.") for k in model.state_dict())
        return ours_to_hf(model_state_canonical(model), with_prefix)
    if fmt not in _WRITERS:
        raise CheckpointError(f"cannot write format {fmt!r}; we write: {', '.join(WRITE_FORMATS)}")
    return _WRITERS[fmt](model)


def write_checkpoint(model: torch.nn.Module, path: str | os.PathLike, fmt: str) -> Path:
    """Write the model for another library, atomically; returns what was written.

    `hf`: a `save_pretrained` folder. `microsoft`: a `.pth` holding `{"model": state_dict}` as Microsoft's
    code reads it. `timm`/`torchvision`: a plain state dict, as `.safetensors` or `.pth` by the suffix of
    `path`, or for timm and a `path` without a suffix a folder as timm's `save_for_hf` writes it
    (`write_timm_folder`). Our config rides along where the format allows it (safetensors metadata, a `"swinv2_config"`
    entry beside Microsoft's `"model"`), so that reading the file back needs no config; plain `.pth` state
    dicts for timm or torchvision carry none, as those libraries load them with `load_state_dict`.
    """
    path = Path(path)
    if fmt == "hf":
        save_pretrained(model, path)
        return path
    if fmt == "timm" and not path.suffix:
        write_timm_folder(model, path)
        return path
    if fmt == "torchvision" and not any(k.startswith("classifier.") for k in model.state_dict()):
        # torchvision's SwinTransformer always has its classifier: a file without one fails its strict load
        raise CheckpointError(
            f"{path}: torchvision's Swin V2 always has a classifier (head.weight, head.bias), and this "
            f"{type(model).__name__} has none, so torchvision could not load the file. Convert a classification "
            "checkpoint (Swinv2ForImageClassification), or write this encoder for timm (num_classes=0), hf or "
            "microsoft, which hold models without a head"
        )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in export_state_dict(model, fmt).items()}
    config_text = json.dumps(model.config.to_dict(), sort_keys=True)
    if path.suffix == ".safetensors" and fmt == "microsoft":
        raise CheckpointError(
            f"{path}: Microsoft's code reads a .pth file that holds {{'model': state_dict}} "
            "(torch.load(path)['model']); give the microsoft file a .pth suffix"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": "pt", EMBEDDED_CONFIG_KEY: config_text}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    elif path.name.endswith((".pth", ".pt", ".bin", ".pth.tar")):
        payload: dict[str, Any] = (
            {"model": state, EMBEDDED_CONFIG_KEY: config_text} if fmt == "microsoft" else state
        )
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    else:
        raise CheckpointError(f"{path}: give the {fmt} file a .safetensors or .pth suffix")
    return path


def write_timm_folder(model: torch.nn.Module, folder: str | os.PathLike, processor: Any = None) -> Path:
    """`model` as timm's `save_for_hf` writes one: `model.safetensors` in timm's layout and the config.json of
    `timm_hub_config`, in `folder`, together (`staged_folder`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    text = json.dumps(timm_hub_config(model, processor), indent=2) + "\n"  # (refused before anything is written)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in ours_to_timm(model).items()}
    with staged_folder(folder) as stage:
        atomic_write(stage / SAFE_WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write(stage / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def model_class_for(state: dict[str, Tensor]) -> type:
    """The model class that holds exactly the weights of a canonical state dict (nothing re-initialised)."""
    from . import modeling

    if any(k.startswith("decoder.") for k in state):
        return modeling.Swinv2ForMaskedImageModeling
    if any(k.startswith("classifier.") for k in state):
        return modeling.Swinv2ForImageClassification
    if "norm.weight" in state:
        return modeling.Swinv2Model
    return modeling.Swinv2Backbone


def convert(
    source: str | os.PathLike, destination: str | os.PathLike, fmt: str, config: Swinv2Config | None = None
) -> tuple[str, torch.nn.Module]:
    """Read a checkpoint of any format we read and write it as `fmt`; returns the source's format and the
    model in between. The weights go through a model of the matching class, so that a checkpoint with missing
    or unexpected weights fails here rather than in the other library; dtypes are kept."""
    if fmt not in WRITE_FORMATS:
        raise CheckpointError(f"cannot write format {fmt!r}; we write: {', '.join(WRITE_FORMATS)}")
    suffix = Path(destination).suffix.lower()
    if fmt == "hf" and suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt") and not Path(destination).is_dir():
        raise CheckpointError(
            f"--to hf writes a folder (config.json, model.safetensors); give a folder name, not a {suffix} file: "
            f"DST {str(destination)!r}"
        )
    config_path, weights_path = resolve_source(source)
    if weights_path is None:
        raise _no_weights(source)
    target = Path(destination).resolve()
    timm_folder = fmt == "timm" and not target.suffix  # (`write_checkpoint`'s rule)
    if target in (weights_path.resolve(), weights_path.parent.resolve() if fmt == "hf" or timm_folder else None):
        raise CheckpointError(f"{destination} is where {source} is read from: write the converted copy elsewhere")
    state, embedded = read_weights(weights_path)
    canonical, source_fmt = to_canonical(state)
    if config is None:  # (a config the checkpoint records is the model that was saved: kept as it is)
        config = checkpoint_config(state, source_fmt, config_path, embedded, weights_path, str(source), {})
    else:
        config = _with_library_layout(config, source_fmt)
    head = canonical.get("classifier.weight")
    if head is not None and head.dim() == 2 and head.shape[0] != config.num_labels:
        # convert writes the weights it reads: a head of the config's size would be a new, untrained one
        labels = head.shape[0]
        raise CheckpointError(
            f"{source}'s classifier has {labels} labels ({_names_in_format(['classifier.weight'], source_fmt, '')[0]} "
            f"{tuple(head.shape)}), the config {config.num_labels}: give the config num_labels={labels} (swinv2 "
            f"convert --num-labels {labels}, or a config.json with it), so that the checkpoint's own head is written"
        )
    cls = model_class_for(canonical)
    model = cls(config)
    with warnings.catch_warnings():
        # A warning about re-initialised weights would mean invented weights in the output: an error here.
        warnings.simplefilter("error", UserWarning)
        try:
            load_into_model(model, canonical, source_fmt, strict=True, source=str(weights_path),
                            relax={"mismatched": " (convert --config)", "missing": " (convert --config)"})
        except UserWarning as err:
            raise CheckpointError(f"{source} does not fill a {cls.__name__}: {err}") from err
    model.to(dtype=_target_dtype("auto", state)).eval()
    if fmt != "hf" and not timm_folder:
        write_checkpoint(model, destination, fmt)
        return source_fmt, model
    from .processing import PREPROCESSOR_CONFIG_NAME, Swinv2ImageProcessor

    # The source's image settings go along: without them the folder's processor would be rebuilt from
    # config.json (ImageNet's mean and std), and predictions change. Looked up where the processor looks.
    own = [f for f in (p.parent / PREPROCESSOR_CONFIG_NAME for p in (weights_path, config_path) if p) if f.is_file()]
    try:
        processor = Swinv2ImageProcessor.from_json_file(own[0]) if own else None
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"cannot read the image settings of {source} ({own[0]}): {err}") from err
    if not timm_folder and not square_windows(config):
        warnings.warn(
            f"transformers builds no model of this config (window_size {config.window_size!r}"
            f"{', always_partition' if config.always_partition else ''}: its windows are one square side, sized "
            "to each stage's grid): the folder loads in swinv2 (from_pretrained), not in transformers",
            stacklevel=2,
        )
    if not timm_folder:
        _warn_peer_geometry(config, "hf", reading=False, state=model.state_dict())
    if timm_folder:  # (timm keeps the image settings in its config.json's pretrained_cfg)
        write_timm_folder(model, target, processor)
        return source_fmt, model
    with staged_folder(target, stale=_weight_file_of(None)) as stage:  # weights and image settings together
        write_checkpoint(model, stage, fmt)
        if processor is not None:
            processor.save_pretrained(stage)
    return source_fmt, model
