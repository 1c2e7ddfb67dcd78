"""Image preprocessing: load, convert, resize, crop, rescale and normalise images for the model.

`Swinv2ImageProcessor` reads and writes the `preprocessor_config.json` that transformers' `ViTImageProcessor`
(the processor of the Swin V2 checkpoints on the Hugging Face Hub) reads and writes, and gives the same
numbers for the same settings: images are resized with Pillow, exactly as transformers does, and the
rescale and normalisation run on the whole batch at once as tensor operations.

`load_image` opens an image file with errors that name the file and the problem (empty, truncated,
corrupt, not an image, too large); the `predict` command and the folder datasets use it.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from torch import Tensor

from .errors import Swinv2Error

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# The processor type written into preprocessor_config.json: transformers' AutoImageProcessor then builds a
# ViTImageProcessor, the class the Swin V2 checkpoints on the Hub are published with.
HF_PROCESSOR_TYPE = "ViTImageProcessor"

# What transformers' processors take for the keys a preprocessor_config.json leaves out (their constructors'
# defaults), by class name less "ImageProcessor"/"FeatureExtractor". A null size, crop_size, image_mean,
# image_std or crop_pct also means the default (their constructors replace None); a class whose default size is a
# short side (Bit, CLIP, ConvNeXt) reads an int size as the short side, ViT as a square.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViT": {
        "size": {"height": 224, "width": 224},
        "resample": int(PIL.Image.Resampling.BILINEAR),
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
    "Bit": {
        "size": {"shortest_edge": 224},
        "resample": int(PIL.Image.Resampling.BICUBIC),
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # OpenAI's CLIP statistics
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    },
    "ConvNext": {
        "size": {"shortest_edge": 384},
        "resample": int(PIL.Image.Resampling.BILINEAR),
        "crop_pct": 224 / 256,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
}
HF_DEFAULTS["CLIP"] = HF_DEFAULTS["Bit"]  # (Bit's processor is CLIP's, copied)
HF_DEFAULTS["DeiT"] = HF_DEFAULTS["Beit"] = {  # (BEiT's is DeiT's, and both crop)
    "size": {"height": 256, "width": 256},
    "resample": int(PIL.Image.Resampling.BICUBIC),
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
_NULL_MEANS_DEFAULT = ("size", "crop_size", "image_mean", "image_std", "crop_pct")

# Pillow's resampling filters by name; config files store the integer.
RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "box": PIL.Image.Resampling.BOX,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "hamming": PIL.Image.Resampling.HAMMING,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
}


class ImageLoadError(Swinv2Error):
    """An image file that cannot be read: empty, truncated, corrupt, not an image, or too large."""


# ---------------------------------------------------------------------------------------------- files
def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Open an image file fully (so a truncated file fails here, not later) and apply its EXIF rotation.

    The mode is left as stored (RGB, L, RGBA, P, CMYK, ...); the processor converts it to the model's
    channels. 16-bit images are scaled to 8 bits (32-bit integer ones by their maximum; 32-bit float ones
    from [0, 1], or as 8-bit levels when they reach above 1, or by their maximum above 255). Pillow's
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) stays in force.

    Raises:
        ImageLoadError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageLoadError(f"{path}: cannot read ({err.strerror})") from err
    if size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    try:
        with PIL.Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file raises here
            image = PIL.ImageOps.exif_transpose(image)
    except PIL.Image.DecompressionBombError as err:
        raise ImageLoadError(
            f"{path}: too many pixels ({err}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust this file"
        ) from err
    except PIL.UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not an image file Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated and corrupt data as OSError (and a few decoders as SyntaxError/ValueError).
        raise ImageLoadError(f"{path}: truncated or corrupt image ({err})") from err
    if image.mode in _WIDE_MODES:
        try:
            image = _wide_to_8bit(image)
        except ValueError as err:
            raise ImageLoadError(f"{path}: {err}") from err
    return image


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """A 16-bit, 32-bit integer or 32-bit float image (`_WIDE_MODES`) as 8-bit "L", scaled: 16-bit values
    from 65535, 32-bit integers by their maximum, floats from [0, 1], as 8-bit levels when they reach above 1,
    or by their maximum above 255. (Pillow's own `convert` clips every value above 255 to white.)"""
    array = np.asarray(image, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("the image holds NaN or infinite values")
    high = float(array.max(initial=0.0))
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F":
        top = 1.0 if high <= 1 else 255.0 if high <= 255 else high
    else:
        top = max(high, 1.0)
    return PIL.Image.fromarray(np.round(array * (255.0 / top)).clip(0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------- outputs
class BatchFeature(Mapping):
    """The processor's output: a mapping (`model(**inputs)`) whose entries are also attributes.

    `pixel_values` has shape (batch, channels, height, width).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no field {name!r}; it has {list(self.data)}") from None

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) if hasattr(v, "shape") else type(v).__name__ for k, v in self.data.items()}
        return f"BatchFeature({shapes})"

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> BatchFeature:
        """Move every tensor to `device`, and cast the floating ones to `dtype`; a dtype alone may come first
        (`features.to(torch.bfloat16)`, as transformers' pipelines call it)."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError("to() got two dtypes; pass a device and a dtype, or a dtype alone")
            device, dtype = None, device
        moved = {}
        for key, value in self.data.items():
            if isinstance(value, Tensor):
                value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            moved[key] = value
        return BatchFeature(moved)


# ---------------------------------------------------------------------------------------------- settings
def _size_dict(size: Any, name: str) -> dict[str, int]:
    """transformers' size conventions: an int is a square, (h, w) a rectangle, or a dict."""
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int, (height, width) or a dict, got {size!r}")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, Mapping):
        raise ValueError(
            f"{name} must be an int, (height, width), {{'height': H, 'width': W}} or {{'shortest_edge': N}}, "
            f"got {size!r}"
        )
    keys = set(size)
    if keys not in ({"height", "width"}, {"shortest_edge"}):
        raise ValueError(f"{name} must have the keys 'height' and 'width', or only 'shortest_edge'; got {sorted(keys)}")
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}[{key!r}] must be a positive int, got {value!r}")
    return dict(size)


def _resample(value: Any) -> int:
    if value is None:
        raise ValueError(f"resample must be a Pillow filter number 0-5 or a name in {sorted(RESAMPLE)}, got None")
    if isinstance(value, str):
        if value.lower() not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)} (or Pillow's number), got {value!r}")
        return int(RESAMPLE[value.lower()])
    if isinstance(value, bool) or int(value) not in {int(v) for v in RESAMPLE.values()}:
        raise ValueError(f"resample must be a Pillow filter number 0-5 or a name in {sorted(RESAMPLE)}, got {value!r}")
    return int(value)


def _number(value: Any, name: str, kind: type = float) -> float | int:
    """`value` as a float (or int), or an error that names the setting: preprocessor_config.json may hold a
    string or a list where a number belongs."""
    if isinstance(value, (bool, str, bytes)) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if kind is int and number != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return number


def rgb_stats_for(stats: Sequence[float], channels: int) -> list[float]:
    """A mean or std given for RGB, for images of `channels` channels: as it is for 3, else its average on each
    channel (a grey pixel's value)."""
    return list(stats) if channels == 3 else [round(sum(stats) / 3, 8)] * channels


def _channel_stats(values: Any, name: str) -> list[float] | float:
    """One number, or a list of one per channel; numpy scalars, arrays and tensors are taken as transformers
    takes them (np.float32(0.5) is 0.5)."""
    problem = ValueError(f"{name} must be a number or a list with one number per channel, got {values!r}")
    if isinstance(values, (bool, np.bool_, str, bytes)):
        raise problem
    try:
        if np.ndim(values) == 0:
            return float(values)
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise problem from None
    if not values:
        raise problem
    return values


# ---------------------------------------------------------------------------------------------- conversion
def _layout(value: Any, name: str) -> str | None:
    """"channels_first" / "channels_last" from a string or transformers' ChannelDimension ("first"/"last")."""
    if value is None:
        return None
    text = str(getattr(value, "value", value)).lower()
    text = {"first": "channels_first", "last": "channels_last"}.get(text, text)
    if text not in ("channels_first", "channels_last"):
        raise ValueError(f"{name} must be 'channels_first' or 'channels_last', got {value!r}")
    return text


def _channel_layout(shape: tuple[int, ...], is_tensor: bool) -> str:
    """"channels_first" or "channels_last": how to read a 3-D image of this shape given without
    `input_data_format`.

    transformers' rule (`infer_channel_dimension_format`) first, so that the same array gives the same
    pixels: a first dimension of 1 or 3 means channels first, checked before the last one (and a warning when
    both could be). Then 2 or 4 channels, which transformers does not read, at whichever end alone can hold
    them; where both can, tensors are channels-first (as torchvision makes them), arrays channels-last.
    """
    first, last = shape[0], shape[-1]
    if first in (1, 3) or last in (1, 3):
        choice = first in (1, 3)
        ambiguous = first in (1, 3) and last in (1, 3)
    else:
        ambiguous = first in (2, 4) and last in (2, 4)
        choice = is_tensor if ambiguous else first in (2, 4)
    if ambiguous:
        warnings.warn(
            f"the channel dimension of an image of shape {shape} is ambiguous: channels are taken to be the "
            f"{'first' if choice else 'last'} dimension; pass input_data_format='channels_first' or "
            "'channels_last' to say which",
            stacklevel=5,  # the caller of preprocess
        )
    return "channels_first" if choice else "channels_last"


def _to_hwc(image: Any, num_channels: int, layout: str | None = None) -> np.ndarray:
    """One image as a (height, width, num_channels) array, uint8 when it came as 8-bit, float otherwise.
    A 3-D array or tensor is read by `layout` ("channels_first"/"channels_last") when given, else by its
    shape (`_channel_layout`)."""
    if isinstance(image, (np.ndarray, Tensor)) and image.ndim == 3:
        layout = layout or _channel_layout(tuple(image.shape), isinstance(image, Tensor))
        if isinstance(image, Tensor):
            image = image.detach().cpu()
            image = (image.float() if image.is_floating_point() and image.dtype != torch.float64 else image).numpy()
        image = image.transpose(1, 2, 0) if layout == "channels_first" else image
    if isinstance(image, PIL.Image.Image):
        mode = "L" if num_channels == 1 else "RGB"
        if image.mode in _WIDE_MODES:  # scaled to 8 bits as `load_image` scales them
            image = _wide_to_8bit(image)
        if image.mode != mode:
            # Pillow's conversions (alpha dropped, palettes expanded, CMYK to RGB, ITU-R 601-2 luma),
            # the same as transformers with do_convert_rgb=True.
            image = image.convert(mode)
        array = np.asarray(image)
        return array[:, :, None] if array.ndim == 2 else array
    if isinstance(image, Tensor):
        if image.is_floating_point() and image.dtype != torch.float64:
            image = image.float()  # numpy has no bfloat16
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(
            f"images must be PIL images, numpy arrays (H, W, C) or torch tensors (C, H, W), got {type(image).__name__}"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"an image array must be (H, W), (H, W, C) or, as a tensor, (C, H, W) with C in 1-4; got shape "
            f"{tuple(array.shape)}"
        )
    if 0 in array.shape[:2]:  # numpy's own error would come from deep inside ("zero-size array to reduction")
        raise ValueError(f"an image is empty: {array.shape[0]}x{array.shape[1]} pixels (shape {tuple(array.shape)} "
                         "as height, width, channels); give images of at least 1x1 pixel")
    return _convert_channels(array, num_channels)


def _convert_channels(array: np.ndarray, num_channels: int) -> np.ndarray:
    channels = array.shape[-1]
    if channels == num_channels:
        return array
    if array.dtype == np.uint8 and channels in (1, 2, 3, 4):
        # 8-bit: let Pillow convert so arrays give exactly what the same picture as a PIL image gives.
        modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
        source = array[:, :, 0] if channels == 1 else array
        converted = np.asarray(
            PIL.Image.fromarray(source, modes[channels]).convert("L" if num_channels == 1 else "RGB")
        )
        converted = converted[:, :, None] if converted.ndim == 2 else converted
        if num_channels in (1, 3):
            return converted
        array = converted
        channels = array.shape[-1]
    color = array[:, :, :3] if channels >= 3 else array[:, :, :1]  # drop alpha
    if num_channels == 1:
        if color.shape[-1] == 1:
            return color
        luma = color[..., 0] * 0.299 + color[..., 1] * 0.587 + color[..., 2] * 0.114  # ITU-R 601-2, as Pillow
        return luma[:, :, None].astype(np.float32)
    if color.shape[-1] == num_channels:
        return color
    if color.shape[-1] == 1:
        return np.repeat(color, num_channels, axis=-1)
    raise ValueError(
        f"cannot convert a {channels}-channel image to the model's {num_channels} channels; give "
        f"{num_channels}-channel images"
    )


def _pil_ready(array: np.ndarray) -> tuple[np.ndarray, float]:
    """The 8-bit array Pillow resizes, and the factor that brings the result back to the input's range.

    The same rules as transformers: integer values in [0, 255] are taken as they are, floats in [0, 1] are
    multiplied by 255 (and truncated) and divided again after the resize.
    """
    if array.dtype == np.uint8:
        return array, 1.0
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if np.allclose(values, values.astype(np.int64)):
        if low >= 0 and high <= 255:
            return values.astype(np.uint8), 1.0
        raise ValueError(
            f"integer image values must lie in [0, 255] to be resized, got [{low:g}, {high:g}]; convert "
            "16-bit images to 8 bits or to floats in [0, 1]"
        )
    if low >= 0 and high <= 1:
        # as transformers: x * 255 in float64, rounded to float32, then truncated (k / 255 in float64 times 255
        # can fall just below k, which float32 rounds back up)
        return (values * 255).astype(np.float32).astype(np.uint8), 1 / 255
    raise ValueError(
        f"float image values must lie in [0, 1] (or be whole numbers in [0, 255]) to be resized, got "
        f"[{low:g}, {high:g}]"
    )


def _resize(array: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    pixels, back = _pil_ready(array)
    source = PIL.Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
    resized = np.asarray(source.resize((width, height), resample=resample))
    resized = resized[:, :, None] if resized.ndim == 2 else resized
    return resized if back == 1.0 else (resized.astype(np.float64) * back).astype(np.float32)


def _short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side `short`, the aspect ratio kept (rounded down, as transformers)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central `height x width` window; zero-padded (centred) where the image is smaller."""
    h, w = array.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return array[top : top + height, left : left + width]
    padded = np.zeros((max(h, height), max(w, width), array.shape[2]), dtype=array.dtype)
    pad_top, pad_left = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
    padded[pad_top : pad_top + h, pad_left : pad_left + w] = array
    h, w = padded.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return padded[top : top + height, left : left + width]


def _flatten(images: Any) -> list[Any]:
    """A single image, a batch array/tensor (N, ...) or a (nested) list of images, as a flat list."""
    if isinstance(images, (PIL.Image.Image, np.ndarray, Tensor)):
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)  # (N, H, W, C)
        if isinstance(images, Tensor) and images.ndim == 4:
            return list(images.unbind(0))  # (N, C, H, W)
        return [images]
    if isinstance(images, (list, tuple)):
        flat = [image for item in images for image in _flatten(item)]
        if not flat:
            raise ValueError("no images given: the list is empty")
        return flat
    raise TypeError(
        f"images must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(images).__name__}"
    )


def _looks_rescaled(image: Any) -> bool:
    """Whether an array or tensor image holds floats in [0, 1] (transformers' test for images rescaled twice)."""
    if isinstance(image, Tensor):
        return bool(image.is_floating_point() and image.numel() > 0 and image.min() >= 0 and image.max() <= 1)
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating) and image.size:
        return bool(image.min() >= 0 and image.max() <= 1)
    return False


# ---------------------------------------------------------------------------------------------- processor
class Swinv2ImageProcessor:
    """Resize, (centre-crop,) rescale and normalise images into `pixel_values` for a Swin V2 model.

    Mirrors transformers' `ViTImageProcessor` (the processor the Swin V2 checkpoints use) and reads the
    settings of its relatives where a config carries them:

    Args:
        do_resize: resize the images.
        size: `{"height": H, "width": W}` (or an int for a square): resize to exactly that size; or
            `{"shortest_edge": N}`: resize the short side to N, keeping the aspect ratio.
        resample: Pillow filter (3 = bicubic), a number or a name.
        do_rescale: multiply the pixel values by `rescale_factor` (1/255 maps 8-bit values to [0, 1]).
        do_normalize: subtract `image_mean` and divide by `image_std`, per channel.
        image_mean / image_std: one value, or one per channel.
        do_convert_rgb: kept for transformers' config files; images are always converted to the model's
            channels (`num_channels`): RGBA, palette, CMYK and grayscale become RGB, or luma for 1 channel.
        do_center_crop / crop_size: crop the centre `crop_size` after resizing (zero-padded where the image is
            smaller); 224 x 224 when no crop_size is given, as transformers' processors that crop (Bit, CLIP).
        crop_pct: with `size={"shortest_edge": N}`: resize the short side to `int(N / crop_pct)` and crop
            the centre N x N, as transformers' ConvNextImageProcessor (identical pixels). timm's evaluation
            transform rounds the crop offset half to even where this floors it, as every transformers crop
            does: a one-pixel shift where the margin is odd.
        num_channels: channels of the model's input; default: the length of `image_mean`, else 3.
        **kwargs: other keys of a preprocessor_config.json, kept and written back.
    """

    model_input_names = ("pixel_values",)

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | dict[str, int] | None = None,
        resample: int | str = PIL.Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | dict[str, int] | None = None,
        crop_pct: float | None = None,
        num_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        # Names written by older transformers versions, with no meaning for the numbers.
        for key in ("feature_extractor_type", "image_processor_type", "processor_class", "_processor_class"):
            kwargs.pop(key, None)
        self.do_resize = bool(do_resize)
        self.size = _size_dict(size if size is not None else {"height": 256, "width": 256}, "size")
        self.resample = _resample(resample)
        self.do_rescale = bool(do_rescale)
        if rescale_factor is None:
            raise ValueError("rescale_factor must be a number (1/255 maps 8-bit values to [0, 1]), got None")
        self.rescale_factor = _number(rescale_factor, "rescale_factor")
        self.do_normalize = bool(do_normalize)
        self.image_mean = _channel_stats(
            image_mean if image_mean is not None else list(IMAGENET_DEFAULT_MEAN), "image_mean"
        )
        self.image_std = _channel_stats(image_std if image_std is not None else list(IMAGENET_DEFAULT_STD), "image_std")
        stds = self.image_std if isinstance(self.image_std, list) else [self.image_std]
        if any(s == 0 for s in stds):
            raise ValueError(f"image_std must not contain 0 (it divides), got {self.image_std}")
        self.do_convert_rgb = do_convert_rgb
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(crop_size, "crop_size") if crop_size is not None else None
        if self.crop_size is not None and set(self.crop_size) != {"height", "width"}:
            raise ValueError(f"crop_size must be {{'height': H, 'width': W}} or an int, got {crop_size!r}")
        if self.do_center_crop and self.crop_size is None:
            # what a transformers user gets from do_center_crop=True (Bit's and CLIP's default, which is also what
            # transformers reads from the BitImageProcessor file we write for it); cropping nothing wrote a file
            # that transformers applied with this crop
            self.crop_size = {"height": 224, "width": 224}
        self.crop_pct = None if crop_pct is None else _number(crop_pct, "crop_pct")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        self.num_channels = None if num_channels is None else _number(num_channels, "num_channels", int)
        if self.num_channels is not None and self.num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        for name in ("image_mean", "image_std"):
            stats = getattr(self, name)
            if isinstance(stats, list) and len(stats) != self.channels:
                raise ValueError(
                    f"{name} has {len(stats)} values but the images have {self.channels} channels; give one per channel"
                )
        self.extra = dict(kwargs)

    @property
    def channels(self) -> int:
        """How many channels the images are converted to."""
        if self.num_channels is not None:
            return self.num_channels
        return len(self.image_mean) if isinstance(self.image_mean, list) else 3

    @property
    def keeps_aspect_ratio(self) -> bool:
        """True when the output size follows each image (`{"shortest_edge": N}` without a crop, or no resize
        and no crop): images of different shapes then do not stack into one batch."""
        if self.do_center_crop and self.crop_size is not None:
            return False
        return not self.do_resize or ("shortest_edge" in self.size and self.crop_pct is None)

    def __repr__(self) -> str:
        return f"Swinv2ImageProcessor({json.dumps(self.to_dict(), sort_keys=True)})"

    # -- the pipeline
    def _geometry(self, array: np.ndarray) -> np.ndarray:
        """Resize and crop one (H, W, C) image."""
        if self.do_resize:
            h, w = array.shape[:2]
            if "shortest_edge" in self.size:
                short = self.size["shortest_edge"]
                if self.crop_pct is not None:
                    array = _resize(array, *_short_side_size(h, w, int(short / self.crop_pct)), self.resample)
                    return _center_crop(array, short, short)
                array = _resize(array, *_short_side_size(h, w, short), self.resample)
            else:
                array = _resize(array, self.size["height"], self.size["width"], self.resample)
        if self.do_center_crop and self.crop_size is not None:
            array = _center_crop(array, self.crop_size["height"], self.crop_size["width"])
        return array

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        data_format: str = "channels_first",
        **overrides: Any,
    ) -> BatchFeature:
        """Turn one image or a batch into `pixel_values` of shape (batch, channels, height, width).

        Args:
            images: PIL images, numpy arrays (H, W[, C]) of uint8 or floats, torch tensors (C, H, W) or
                batches (N, H, W, C) arrays / (N, C, H, W) tensors, alone or in a list.
            return_tensors: "pt" (a float32 torch tensor), "np" (a numpy array) or None (a list of
                (C, H, W) numpy arrays, which may differ in size).
            input_data_format: "channels_first" or "channels_last": how to read the arrays and tensors
                (for a shape such as (3, 50, 3), which both could be); default: by the shape, as
                transformers reads it (a first dimension of 1 or 3 is channels; then 2 or 4 at either end).
            data_format: "channels_first" (the model's input, default) or "channels_last" for the output.
            **overrides: settings for this call only (e.g. `size=384`, `do_normalize=False`).
        """
        layout, out_layout = _layout(input_data_format, "input_data_format"), _layout(data_format, "data_format")
        if overrides:
            known = set(inspect.signature(Swinv2ImageProcessor.__init__).parameters) - {"self", "kwargs"}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(
                    f"unknown image processor setting(s) {', '.join(unknown)}; the settings are "
                    f"{', '.join(sorted(known))}, and per call input_data_format and data_format"
                )
            return self.__class__(**{**self.to_dict(), **overrides}).preprocess(
                images, return_tensors, input_data_format, data_format
            )
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        flat = _flatten(images)
        if self.do_rescale and any(_looks_rescaled(image) for image in flat):
            warnings.warn(
                "the images are floats in [0, 1], which look rescaled already, and do_rescale=True multiplies "
                f"them by rescale_factor={self.rescale_factor:g} again; pass do_rescale=False for such images "
                "(or give 8-bit values)",
                stacklevel=2,
            )
        first = flat[0] if flat else None
        if layout is None and isinstance(first, (np.ndarray, Tensor)) and first.ndim == 3:
            # as transformers: the first image's layout is the batch's (a (1, 37, 3) strip after a (24, 22, 3)
            # image is RGB, not a 37x3 grey image read on its own)
            layout = _channel_layout(tuple(first.shape), isinstance(first, Tensor))
        arrays = [self._geometry(_to_hwc(image, self.channels, layout)) for image in flat]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1 and return_tensors is not None:
            raise ValueError(
                f"the images have different sizes after resizing ({sorted(shapes)}) and do not stack into "
                "one batch; resize to one size (size={'height': H, 'width': W}) or pass return_tensors=None"
            )
        if return_tensors is None:
            values = [self._finish(torch.from_numpy(np.array(a))[None], out_layout)[0].numpy() for a in arrays]
            return BatchFeature({"pixel_values": values})
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))  # (N, H, W, C), one copy
        pixel_values = self._finish(batch, out_layout)
        return BatchFeature({"pixel_values": pixel_values if return_tensors == "pt" else pixel_values.numpy()})

    __call__ = preprocess

    def _finish(self, batch: Tensor, layout: str = "channels_first") -> Tensor:
        """(N, H, W, C) uint8/float -> (N, C, H, W) float32 (or (N, H, W, C) for "channels_last"), rescaled
        and normalised in one pass."""
        x = batch.permute(0, 3, 1, 2)
        x = x.to(torch.float64) * self.rescale_factor if self.do_rescale else x.to(torch.float64)
        x = x.to(torch.float32)  # transformers rescales in float64 and normalises in float32
        if self.do_normalize:
            c = x.shape[1]
            mean = torch.tensor(self.image_mean, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
            x = (x - mean) / std
        return x.contiguous() if layout == "channels_first" else x.permute(0, 2, 3, 1).contiguous()

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json entries, with the keys transformers' ViTImageProcessor writes."""
        out: dict[str, Any] = {
            "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": self.image_mean,
            "image_processor_type": self.transformers_class()[0],
            "image_std": self.image_std,
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
        }
        # Settings ViTImageProcessor does not have: written only when used, so a plain config stays identical.
        for key in ("do_center_crop", "crop_size", "crop_pct", "num_channels"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        short = self.size.get("shortest_edge") if self.do_resize else None
        if out["image_processor_type"] == "BitImageProcessor" and short is not None and self.crop_pct is not None:
            # crop_pct from 384 up (ConvNeXt's processor warps there): the same pixels as Bit's resize of the
            # short side to int(N / crop_pct) and centre crop of N x N, which Bit, and swinv2, read back
            out.pop("crop_pct")
            out["size"] = {"shortest_edge": int(short / self.crop_pct)}
            out["crop_size"] = {"height": short, "width": short}
            out["do_center_crop"] = True
        elif out["image_processor_type"] == "BitImageProcessor":
            out["do_center_crop"] = bool(self.do_center_crop)  # Bit's default crops (224)
            # images are always converted (see do_convert_rgb); Bit converts by default, but not for a null
            out["do_convert_rgb"] = True
        out.update(self.extra)
        return out

    def transformers_class(self) -> tuple[str, str | None]:
        """The transformers image processor that applies these settings as this one does, for
        `image_processor_type` (ViTImageProcessor, which the Swin V2 checkpoints use; BitImageProcessor for a
        short-side resize or a centre crop, and for `crop_pct` from 384 up; ConvNextImageProcessor for `crop_pct`
        below), and what none of them can
        apply (None when one can)."""
        cropped = bool(self.do_center_crop and self.crop_size is not None)
        short = self.size.get("shortest_edge") if self.do_resize else None
        if self.channels != 3:
            return HF_PROCESSOR_TYPE, f"images of {self.channels} channel(s) (they take 3)"
        if short is not None and self.crop_pct is not None:
            # (ConvNeXt's crops by crop_pct below 384 only; from 384 up, `to_dict` writes Bit's equivalent)
            return ("ConvNextImageProcessor" if short < 384 else "BitImageProcessor"), None
        if cropped or short is not None:
            return "BitImageProcessor", None
        return HF_PROCESSOR_TYPE, None

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `preprocessor_config.json` into the folder (atomically); returns its path."""
        from .checkpoints import atomic_write

        folder = Path(save_directory)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create the output folder {folder}: {err.strerror}") from err
        path = folder / PREPROCESSOR_CONFIG_NAME
        name, unsupported = self.transformers_class()
        if unsupported:
            warnings.warn(
                f"no transformers image processor applies {unsupported}: swinv2 reads its "
                f"{PREPROCESSOR_CONFIG_NAME}, but transformers' {name} would preprocess otherwise",
                stacklevel=2,
            )
        text = self.to_json_string()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path

    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> Swinv2ImageProcessor:
        """The processor of a preprocessor_config.json's entries, `overrides` applied, read as the transformers
        processor the file names (`image_processor_type`) reads it: that class's defaults for the keys left out
        or null (`HF_DEFAULTS`; ViT's for other or no names), and only the settings that class applies."""
        settings = {**config, **overrides}
        kind = str(settings.get("image_processor_type") or settings.get("feature_extractor_type") or "")
        name = kind.removesuffix("Fast").removesuffix("ImageProcessor").removesuffix("FeatureExtractor")
        defaults = HF_DEFAULTS.get(name, HF_DEFAULTS["ViT"])
        channels = _number(settings.get("num_channels") or 3, "num_channels", int)
        for key, value in defaults.items():
            if key not in settings or (settings[key] is None and key in _NULL_MEANS_DEFAULT):
                if key in ("image_mean", "image_std"):
                    value = rgb_stats_for(value, channels)
                settings[key] = value
        if isinstance(settings["size"], int) and "shortest_edge" in defaults["size"]:
            settings["size"] = {"shortest_edge": settings["size"]}  # (the files of Bit, CLIP, ConvNeXt)
        for key, flag in (("resample", "do_resize"), ("rescale_factor", "do_rescale")):
            if key in settings and settings[key] is None:  # transformers refuses a null one only when it is used
                if settings.get(flag, True):
                    example = "a Pillow filter number (2 bilinear, 3 bicubic)" if key == "resample" else "1/255"
                    raise ValueError(
                        f"the image processor config sets {key} to null while {flag} is on; give {key} "
                        f"{example}, or set {flag} to false"
                    )
                del settings[key]
        size = settings["size"]
        short = size.get("shortest_edge") if isinstance(size, Mapping) else None
        if channels == 3:  # (files of other channel counts are our own: no transformers class applies them)
            if name in ("ViT", "ConvNext") and settings.get("do_center_crop"):
                settings["do_center_crop"] = False  # these classes keep the key in their file but never crop by it
            if name in ("Bit", "CLIP") and short is not None:
                settings.pop("crop_pct", None)  # Bit and CLIP do not crop by crop_pct
        if name == "ConvNext" and isinstance(short, int) and short >= 384:
            # ConvNeXt's processor warps to N x N from 384 up, without the crop_pct it still writes
            settings["size"] = {"height": short, "width": short}
            settings.pop("crop_pct", None)
        return cls(**settings)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> Swinv2ImageProcessor:
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the image processor config {path}: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
        return cls.from_dict(config, **overrides)

    @classmethod
    def from_model_config(cls, config: Any, **overrides: Any) -> Swinv2ImageProcessor:
        """The evaluation transform of a checkpoint that ships no preprocessor_config.json.

        Microsoft, timm and torchvision Swin V2 checkpoints are evaluated at `config.image_size` with bicubic
        resizing and the ImageNet mean and std; models with other channel counts use the channel-averaged
        ImageNet statistics.
        """
        height, width = config.image_hw
        channels = int(config.num_channels)
        if channels == 3:
            mean, std = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
        else:
            mean = [round(sum(IMAGENET_DEFAULT_MEAN) / 3, 4)] * channels
            std = [round(sum(IMAGENET_DEFAULT_STD) / 3, 4)] * channels
        settings: dict[str, Any] = {
            "size": {"height": height, "width": width},
            "resample": PIL.Image.Resampling.BICUBIC,
            "image_mean": mean,
            "image_std": std,
        }
        if channels != 3:
            settings["num_channels"] = channels
        return cls(**{**settings, **overrides})

    @classmethod
    def from_timm_pretrained_cfg(cls, cfg: Mapping[str, Any], **overrides: Any) -> Swinv2ImageProcessor:
        """The processor for timm's `pretrained_cfg` (stored in its config.json): its `input_size`,
        interpolation, mean and std.

        Images are resized to `input_size`, as transformers' processor for Swin V2 resizes them; timm's
        evaluation crop (`crop_pct`) is not applied. Pass `size={"shortest_edge": N}, crop_pct=...` to crop
        (offsets floored as transformers', not rounded as timm's: see `crop_pct`).
        """
        channels, height, width = (int(v) for v in cfg["input_size"])
        settings: dict[str, Any] = {
            "size": {"height": height, "width": width},
            "resample": cfg.get("interpolation", "bicubic"),
            "image_mean": list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            "image_std": list(cfg.get("std", IMAGENET_DEFAULT_STD)),
        }
        if channels != 3:
            settings["num_channels"] = channels
        return cls(**{**settings, **overrides})

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2ImageProcessor:
        """The processor of a checkpoint (a folder, a file in it, or a hub id), from the first of:

        1. its `preprocessor_config.json` (transformers' layout);
        2. timm's `pretrained_cfg` in a timm `config.json` (see `from_timm_pretrained_cfg`);
        3. the model's config (`config.json`, or the one inferred for Microsoft, timm and torchvision
           weights files): `image_size`, bicubic, ImageNet mean and std (see `from_model_config`).

        Keyword arguments override settings.
        """
        from .checkpoints import CheckpointError, resolve_config, resolve_source

        path = Path(name_or_path).expanduser()
        if path.is_file() and path.name == PREPROCESSOR_CONFIG_NAME:
            return cls.from_json_file(path, **overrides)
        folder = path if path.is_dir() else path.parent if path.is_file() else None
        if folder is not None and (folder / PREPROCESSOR_CONFIG_NAME).is_file():
            return cls.from_json_file(folder / PREPROCESSOR_CONFIG_NAME, **overrides)
        config_path, _ = resolve_source(name_or_path)  # a clear error for a missing path; fetches hub ids
        if config_path is not None:
            if (config_path.parent / PREPROCESSOR_CONFIG_NAME).is_file():
                return cls.from_json_file(config_path.parent / PREPROCESSOR_CONFIG_NAME, **overrides)
            try:
                data = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None  # resolve_config below explains what is wrong with the file
            timm_cfg = data.get("pretrained_cfg") if isinstance(data, dict) and "architecture" in data else None
            if isinstance(timm_cfg, dict) and "input_size" in timm_cfg:
                return cls.from_timm_pretrained_cfg(timm_cfg, **overrides)
        try:
            config = resolve_config(name_or_path)
        except CheckpointError as err:
            raise ValueError(
                f"no {PREPROCESSOR_CONFIG_NAME} for {name_or_path}, and no model config to build one from "
                f"({err}). Build the processor with Swinv2ImageProcessor(size=..., image_mean=..., image_std=...)"
            ) from err
        return cls.from_model_config(config, **overrides)


class AutoImageProcessor:
    """`AutoImageProcessor.from_pretrained(path)`, as in transformers; Swin V2 has one processor class."""

    def __init__(self) -> None:
        raise TypeError("use AutoImageProcessor.from_pretrained(path)")

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **overrides: Any) -> Swinv2ImageProcessor:
        """See `Swinv2ImageProcessor.from_pretrained`."""
        return Swinv2ImageProcessor.from_pretrained(name_or_path, **overrides)


# ---------------------------------------------------------------------------------------------- class names
# Class-index order of the ImageNet heads: built by scripts/make_imagenet_labels.py (see labels/README.md).
IMAGENET_LABEL_FILES = {1000: "imagenet1k_labels.tsv", 21841: "imagenet22k_labels.tsv"}


def imagenet_id2label(num_classes: int) -> dict[int, str]:
    """The ImageNet class names of a `num_classes`-way head: 1000 (ImageNet-1k) or 21841 (ImageNet-22k,
    the Microsoft Swin V2 22k checkpoints), e.g. `{0: "tench, Tinca tinca", ...}`."""
    from importlib.resources import files

    if num_classes not in IMAGENET_LABEL_FILES:
        raise ValueError(
            f"there are ImageNet class names for 1000 (ImageNet-1k) and 21841 (ImageNet-22k) classes, "
            f"not for {num_classes}"
        )
    text = files("swinv2").joinpath("labels", IMAGENET_LABEL_FILES[num_classes]).read_text(encoding="utf-8")
    names = [line.split("\t", 1)[1] for line in text.splitlines() if line]
    if len(names) != num_classes:
        raise RuntimeError(f"{IMAGENET_LABEL_FILES[num_classes]} holds {len(names)} names, not {num_classes}")
    return dict(enumerate(names))


def has_placeholder_labels(id2label: Mapping[int, str]) -> bool:
    """True when the names are transformers' placeholders `LABEL_0, LABEL_1, ...` (no names were stored)."""
    return all(name == f"LABEL_{index}" for index, name in id2label.items())


def resolve_id2label(config: Any) -> tuple[dict[int, str], str]:
    """The class names of a model, and where they come from ("config", "imagenet-1k", "imagenet-22k").

    Checkpoints that store no names (Microsoft, timm, torchvision; transformers' placeholders `LABEL_i`)
    with a 1000- or 21841-way head get the ImageNet names.
    """
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    if has_placeholder_labels(id2label) and len(id2label) in IMAGENET_LABEL_FILES:
        source = "imagenet-1k" if len(id2label) == 1000 else "imagenet-22k"
        return imagenet_id2label(len(id2label)), source
    return id2label, "config"
