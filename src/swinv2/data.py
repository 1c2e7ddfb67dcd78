"""Training data: image folders, Fashion-MNIST, the reference augmentations and the SimMIM mask generator.

Every random choice an item makes (crop, flip, RandAugment, mask) is drawn from a generator seeded by
`(seed, epoch, index)`, so an item looks the same whichever process, worker or resumed run loads it. This
is what lets a run killed and resumed, or split over `torchrun` ranks, reproduce a single uninterrupted run.

Needs torchvision (the `train` extra).
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import Swinv2Error

logger = logging.getLogger("swinv2")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_FOLDER_NAMES = ("val", "validation", "valid", "test")

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
# MD5 of the files as published by Zalando Research (the Debian package re-compresses them, so its .gz
# files differ; their decoded contents are checked by shape and label range instead).
FASHION_MNIST_FILES = {
    "train": (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
              ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"), 60000),
    "test": (("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
             ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"), 10000),
}


class DataError(Swinv2Error):
    """Data that cannot be used; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------- SimMIM masks
@dataclass
class MaskGenerator:
    """SimMIM's random masking: hide `mask_ratio` of the `mask_patch_size` squares of the image.

    Returns a boolean mask over the model's patches, `(H/model_patch_size * W/model_patch_size,)`, row-major,
    as `bool_masked_pos` expects; each masked square covers `(mask_patch_size/model_patch_size)**2` patches.
    """

    input_size: tuple[int, int]
    mask_patch_size: int = 32
    model_patch_size: int = 4
    mask_ratio: float = 0.6

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_patch_size % self.model_patch_size:
            raise ValueError(
                f"mask_patch_size ({self.mask_patch_size}) must be a multiple of the model's patch size "
                f"({self.model_patch_size})"
            )
        if any(side % self.mask_patch_size for side in self.input_size):
            raise ValueError(
                f"the image size {self.input_size} must be a multiple of mask_patch_size ({self.mask_patch_size}); "
                "choose a mask patch size that divides it (e.g. --mask-patch-size 8 for 32 px images)"
            )
        gh, gw = self.mask_grid
        if self.num_masked >= gh * gw:
            raise ValueError(
                f"mask_patch_size {self.mask_patch_size} leaves {gh}x{gw} mask squares on {self.input_size} images, "
                f"and a mask ratio of {self.mask_ratio} masks all of them: nothing is left to see. Choose a smaller "
                f"mask patch size (e.g. --mask-patch-size {max(self.model_patch_size, self.mask_patch_size // 4)})"
            )

    @property
    def mask_grid(self) -> tuple[int, int]:
        return self.input_size[0] // self.mask_patch_size, self.input_size[1] // self.mask_patch_size

    @property
    def num_masked(self) -> int:
        gh, gw = self.mask_grid
        return math.ceil(gh * gw * self.mask_ratio)

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        gh, gw = self.mask_grid
        chosen = torch.randperm(gh * gw, generator=generator)[: self.num_masked]
        mask = torch.zeros(gh * gw, dtype=torch.bool)
        mask[chosen] = True
        scale = self.mask_patch_size // self.model_patch_size
        return mask.view(gh, gw).repeat_interleave(scale, 0).repeat_interleave(scale, 1).flatten()


# ---------------------------------------------------------------------------------------------- augmentations
def _interpolation():
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BICUBIC


def eval_processor(image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]):
    """The `Swinv2ImageProcessor` of a run: bicubic resize to `image_size`, rescale to [0, 1], normalise.

    It is exported next to the trained model, and validation and `evaluate` use it too, so that
    `swinv2 predict` and transformers see exactly the numbers the accuracy was measured on.
    """
    from .processing import Swinv2ImageProcessor

    height, width = image_size
    return Swinv2ImageProcessor(
        do_resize=True, size={"height": height, "width": width}, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean), image_std=list(std),
        num_channels=len(mean) if len(mean) != 3 else None,
    )


class _ProcessorTransform:
    """`(C, H, W)` uint8 -> `(C, H', W')` float through an image processor (picklable for the workers)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Tensor) -> Tensor:
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


def eval_transform(image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The evaluation transform: `eval_processor` applied to one `(C, H, W)` uint8 image."""
    return processor_transform(eval_processor(image_size, mean, std))


def processor_transform(processor) -> Callable:
    """An image processor as a dataset transform: one `(C, H, W)` uint8 image -> `(C, H', W')` float."""
    return _ProcessorTransform(processor)


class PadCropFlip:
    """A random `size` crop of the image zero-padded by `padding` pixels on every side (0: the image itself), a
    horizontal flip with probability `hflip` (then RandAugment, when given, on the uint8 crop), then [0, 1] and
    normalisation: `(C, H, W)` uint8 -> `(C, *size)` float. Images of another size are first resized (bicubic).

    The usual augmentation for small images (Fashion-MNIST, CIFAR): it keeps the objects' scale and needs no
    resampling. Written as a few tensor ops because torchvision's v2 pipeline spends ~10x longer per 28x28
    image in Python than the arithmetic takes, and on 2 cores the data is loaded between the model's steps.
    """

    def __init__(self, size: tuple[int, int], padding: int, hflip: float, mean: Sequence[float],
                 std: Sequence[float], randaugment: Callable | None = None) -> None:
        self.size = tuple(size)
        self.padding = padding
        self.hflip = hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255)
        self.randaugment = randaugment

    def __call__(self, image: Tensor) -> Tensor:
        if tuple(image.shape[-2:]) != self.size:
            from torchvision.transforms.v2 import functional as TF

            image = TF.resize(image, list(self.size), interpolation=_interpolation(), antialias=True)
        pad, (height, width) = self.padding, self.size
        if pad > 0:
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = torch.nn.functional.pad(image, (pad, pad, pad, pad))[:, top:top + height, left:left + width]
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            image = image.flip(-1)
        if self.randaugment is not None:
            image = self.randaugment(image)
        return (image.float() - self.mean).mul_(self.scale)


def classification_train_transform(
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    randaugment_magnitude: int = 0,
    crop_padding: int | None = None,
) -> Callable:
    """RandomResizedCrop + horizontal flip (+ RandAugment with 2 ops at `randaugment_magnitude` when > 0);
    with `crop_padding` set, `PadCropFlip` instead of RandomResizedCrop (0: no crop, flips only)."""
    from torchvision.transforms import InterpolationMode, v2

    # bilinear: torchvision's affine ops on tensors do not take bicubic
    randaugment = (v2.RandAugment(num_ops=2, magnitude=randaugment_magnitude, interpolation=InterpolationMode.BILINEAR)
                   if randaugment_magnitude > 0 else None)
    if crop_padding is not None:
        return PadCropFlip(image_size, crop_padding, hflip, mean, std, randaugment)
    steps: list = [
        v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=_interpolation(), antialias=True),
        v2.RandomHorizontalFlip(hflip),
    ]
    if randaugment is not None:
        steps.append(randaugment)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def simmim_transform(
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.67, 1.0),
    hflip: float = 0.5,
    crop_padding: int | None = None,
) -> Callable:
    """SimMIM's pre-training view: RandomResizedCrop(scale 0.67-1, ratio 3/4-4/3) + horizontal flip; with
    `crop_padding` set, `PadCropFlip` instead."""
    from torchvision.transforms import v2

    if crop_padding is not None:
        return PadCropFlip(image_size, crop_padding, hflip, mean, std)

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=(3 / 4, 4 / 3),
                             interpolation=_interpolation(), antialias=True),
        v2.RandomHorizontalFlip(hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def batch_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> Callable | None:
    """Mixup and/or CutMix on a batch `(images, labels) -> (images, soft labels (B, num_classes))`, or None."""
    from torchvision.transforms import v2

    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


# ---------------------------------------------------------------------------------------------- datasets
def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch, independent of process, worker and batch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class AugmentedDataset(Dataset):
    """Base of our datasets: applies `transform` (and the SimMIM `mask_generator`) with per-item seeds.

    An item is `(pixel_values (C, H, W) float, label int)` for classification, or
    `(pixel_values, bool_masked_pos (num_patches,) bool)` when a mask generator is set.
    Set `epoch` before each epoch (the DataLoader copies the dataset into its workers at each iteration).
    """

    def __init__(self, transform: Callable, num_channels: int, seed: int = 0,
                 mask_generator: MaskGenerator | None = None) -> None:
        self.transform = transform
        self.num_channels = num_channels
        self.seed = seed
        self.epoch = 0
        self.mask_generator = mask_generator
        # Evaluation sets leave an unreadable image out (label -1, which the metrics skip) instead of
        # replacing it by the next image, which would count that image and its label twice.
        self.for_evaluation = False

    def load(self, index: int) -> Tensor:
        """The raw image `(C, H, W)` uint8; raises OSError/ValueError for an unreadable one."""
        raise NotImplementedError

    def label(self, index: int) -> int:
        return -1

    def _load_readable(self, index: int) -> tuple[int, Tensor]:
        # A corrupt file is reported and replaced by the next readable item, so batches keep their size
        # (every rank must run the same number of steps under DDP) and the run goes on.
        n = len(self)
        for offset in range(n):
            candidate = (index + offset) % n
            try:
                return candidate, self.load(candidate)
            except (OSError, ValueError, RuntimeError) as err:
                self._report_unreadable(candidate, err)
        raise DataError("no image of the dataset could be read; check the data folder")

    def _report_unreadable(self, index: int, err: Exception) -> None:
        logger.warning("skipping an unreadable image (item %d): %s", index, err)

    def __getitem__(self, index: int) -> tuple[Tensor, int | Tensor]:
        if self.for_evaluation and self.mask_generator is None:
            try:
                image = self.load(index)
            except (OSError, ValueError, RuntimeError) as err:
                self._report_unreadable(index, err)
                # a stand-in of the transform's output size, so that the batch still stacks
                blank = torch.zeros(self.num_channels, 8, 8, dtype=torch.uint8)
                return torch.zeros_like(self.transform(blank)), -1
            return self._item(index, image)
        index, image = self._load_readable(index)
        return self._item(index, image)

    def _item(self, index: int, image: Tensor) -> tuple[Tensor, int | Tensor]:
        if image.shape[0] != self.num_channels:
            image = image[:1].expand(self.num_channels, -1, -1) if image.shape[0] == 1 else image[:1]
        seed = item_seed(self.seed, self.epoch, index)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a seed for every accelerator, formatting
            # a stack trace each time (about 1 ms per item, more than the whole augmentation)
            torch.default_generator.manual_seed(seed)
            pixels = self.transform(image)
        if self.mask_generator is not None:
            generator = torch.Generator().manual_seed(seed ^ 0x5EED)
            return pixels, self.mask_generator(generator)
        return pixels, self.label(index)


class TensorImageDataset(AugmentedDataset):
    """Images held in memory as a uint8 tensor `(N, H, W)` or `(N, C, H, W)`, with optional labels `(N,)`."""

    def __init__(self, images: Tensor, labels: Tensor | None, transform: Callable, num_channels: int,
                 seed: int = 0, mask_generator: MaskGenerator | None = None) -> None:
        super().__init__(transform, num_channels, seed, mask_generator)
        self.images = images if images.dim() == 4 else images.unsqueeze(1)
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int) -> Tensor:
        return self.images[index]

    def label(self, index: int) -> int:
        return -1 if self.labels is None else int(self.labels[index])


class ImageFileDataset(AugmentedDataset):
    """Image files (any format Pillow reads), decoded in the DataLoader workers, with optional labels."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int] | None, transform: Callable,
                 num_channels: int, seed: int = 0, mask_generator: MaskGenerator | None = None) -> None:
        super().__init__(transform, num_channels, seed, mask_generator)
        self.files = [Path(f) for f in files]
        self.labels = None if labels is None else list(labels)
        self._reported: set[int] = set()
        self._class_sizes = collections.Counter(self.labels or ())
        self._unreadable: collections.Counter[int] = collections.Counter()  # reported images, by label

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        from .processing import load_image

        image = load_image(self.files[index]).convert("RGB" if self.num_channels == 3 else "L")
        array = np.asarray(image, dtype=np.uint8)
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)

    def label(self, index: int) -> int:
        return -1 if self.labels is None else self.labels[index]

    def _report_unreadable(self, index: int, err: Exception) -> None:
        if index in self._reported:  # once per worker process
            return
        self._reported.add(index)
        logger.warning("skipping an unreadable image: %s", err)
        if self.labels is not None:
            # A class none of whose images can be read would train (and score) as a class without examples.
            # A training item's replacement search tries the images after it, and a class's images lie
            # together, so the one worker that meets such a class tries all of its images in a row.
            label = self.labels[index]
            self._unreadable[label] += 1
            if self._unreadable[label] == self._class_sizes[label]:
                raise DataError(
                    f"none of the {self._class_sizes[label]} image(s) of the class in {self.files[index].parent} "
                    f"can be read (the last: {err}); replace them, or remove the class folder"
                )


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; delete it so it is fetched again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({len(data) - offset} bytes for shape {shape}); delete it so it "
                        "is fetched again")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_verified(name: str, md5: str, folder: Path) -> Path:
    """Fetch `name` from the official mirrors into `folder`, keeping it only when its MD5 matches."""
    import urllib.request

    target = folder / name
    if target.is_file() and _md5(target) == md5:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in FASHION_MNIST_MIRRORS:
        tmp = folder / f".{name}.part"
        try:
            with urllib.request.urlopen(mirror + name, timeout=60) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            got = _md5(tmp)
            if got != md5:
                raise OSError(f"MD5 {got} differs from the published {md5}")
            os.replace(tmp, target)
            return target
        except OSError as err:
            errors.append(f"{mirror}{name}: {err}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataError(
        "Fashion-MNIST is not installed and could not be downloaded:\n  " + "\n  ".join(errors) + "\n"
        "Install the Debian package (sudo apt-get install dataset-fashion-mnist), or put the four official "
        f"*-ubyte.gz files into {folder}"
    )


def fashion_mnist_cache_dir() -> Path:
    return Path(os.environ.get("SWINV2_DATA", Path.home() / ".cache" / "swinv2")) / FASHION_MNIST


def load_fashion_mnist(split: str = "train", download: bool = True) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as `(images (N, 28, 28) uint8, labels (N,) int64)`; `split` is "train" or "test".

    Read from the Debian package `dataset-fashion-mnist` when it is installed, else from
    `$SWINV2_DATA/fashion-mnist` (default `~/.cache/swinv2/fashion-mnist`), downloading the official files
    there (MD5-verified) when they are missing and `download` is true.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    (images_name, images_md5), (labels_name, labels_md5), count = FASHION_MNIST_FILES[split]
    debian = FASHION_MNIST_DEBIAN_DIR
    if (debian / images_name).is_file() and (debian / labels_name).is_file():
        images_path, labels_path = debian / images_name, debian / labels_name
    else:
        cache = fashion_mnist_cache_dir()
        if not download and not (cache / images_name).is_file():
            raise DataError(
                f"Fashion-MNIST is neither installed ({debian}) nor in {cache}; install the Debian package "
                "dataset-fashion-mnist or allow the download"
            )
        images_path = _download_verified(images_name, images_md5, cache)
        labels_path = _download_verified(labels_name, labels_md5, cache)
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.shape != (count, 28, 28) or labels.shape != (count,) or labels.max() > 9:
        raise DataError(
            f"{images_path} / {labels_path} do not hold the Fashion-MNIST {split} split (images {images.shape}, "
            f"labels {labels.shape}); reinstall dataset-fashion-mnist or delete the cached files"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------------------------- folders
def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """The images under `folder`, recursively and sorted, outside hidden folders (.ipynb_checkpoints, .git:
    copies and tool files, never data), as `swinv2 predict` reads a folder."""
    return sorted(p for p in folder.rglob("*")
                  if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _check_folder(root: Path, flag: str = "--data") -> None:
    if not root.exists():
        raise DataError(f"the data folder {root} does not exist; pass an existing folder with {flag} "
                        f"(or {flag} {FASHION_MNIST} for the packaged dataset)")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; pass the folder that holds the images with {flag}")


def _split_folders(root: Path) -> list[str]:
    """The sub-folders of `root` named and shaped as dataset splits (train/, val/, test/...: folders of
    folders), not as classes (folders of images)."""
    found = []
    for name in ("train", *VAL_FOLDER_NAMES):
        folder = root / name
        if folder.is_dir():
            entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
            if any(p.is_dir() for p in entries) and not any(_is_image(p) for p in entries):
                found.append(name)
    return found


def scan_class_folders(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """`(files, labels, class names)` of a folder with one sub-folder of images per class (sorted by name)."""
    _check_folder(root)
    splits = _split_folders(root)
    if splits:
        raise DataError(
            f"{root} holds the split folder(s) {', '.join(s + '/' for s in splits)} beside class folders: a "
            "dataset is class folders, or train/ and val/ (validation/, valid/, test/) each holding the same "
            f"class folders. Use a split alone with --data {root / splits[0]}, or add the missing split"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p for p in root.iterdir() if _is_image(p)]
        hint = (f"it holds {len(loose)} images directly: move them into one sub-folder per class "
                "(e.g. DATA/cat/1.jpg), or use them without labels with `swinv2 pretrain`") if loose else "it is empty"
        raise DataError(f"no class folders in {root}: {hint}")
    per_class = [_images_under(root / name) for name in classes]
    for name, images in zip(classes, per_class):
        if not images:
            raise DataError(
                f"the class folder {root / name} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
    files: list[Path] = []
    labels: list[int] = []
    for index, (name, images) in enumerate(zip(classes, per_class)):
        unreadable = _none_opens(images)
        if unreadable is not None:
            # found here, not when the sampler happens to draw the class (it may never, with drop_last)
            raise DataError(
                f"none of the {len(images)} image(s) of the class in {root / name} can be read (the last: "
                f"{unreadable}); replace them, or remove the class folder"
            )
        files += images
        labels += [index] * len(images)
    return files, labels, classes


def _none_opens(images: Sequence[Path]) -> Exception | None:
    """None as soon as one of `images` opens as an image (its header only: one file per class in a sound
    dataset), else the last error."""
    import PIL.Image

    error: Exception | None = None
    for path in images:
        try:
            with PIL.Image.open(path):
                return None
        except Exception as err:  # Pillow raises many types for a bad file
            error = err
    return error


def scan_images(root: Path) -> list[Path]:
    """Every image under `root`, recursively (labels, if any folders encode them, are ignored)."""
    _check_folder(root)
    files = _images_under(root)
    if not files:
        raise DataError(f"no images under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                        "point --data at a folder of images")
    return files


def split_by_fraction(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices `(train, val)`: a seeded, per-class split that puts `val_fraction` of each class in val."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; or give DATA/train and DATA/val")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    generator = torch.Generator().manual_seed(seed)
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction))) if len(order) > 1 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A seeded random subset of `limit` indices out of `n` (all of them when limit is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise DataError(f"an image limit must be >= 1, got {limit}")
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)).tolist()[:limit])


@dataclass
class DataSpec:
    """What the datasets are built from; see `build_classification_data` and `build_pretraining_data`."""

    data: str
    image_size: tuple[int, int]
    num_channels: int = 3
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_val: int | None = None
    seed: int = 0


def _find_val_folder(root: Path) -> Path | None:
    for name in VAL_FOLDER_NAMES:
        if (root / name).is_dir():
            return root / name
    return None


def build_classification_data(
    spec: DataSpec, train_transform: Callable
) -> tuple[AugmentedDataset, AugmentedDataset, list[str]]:
    """`(train, val, class names)` for `spec.data`: "fashion-mnist" (val = its 10,000 test images), a folder
    with `train/` and `val/` class folders, or a folder of class folders split by `spec.val_fraction`.
    The validation set is transformed as `Swinv2ImageProcessor` would do it."""
    val_transform = eval_transform(spec.image_size, spec.mean, spec.std)
    if spec.data == FASHION_MNIST:
        train_images, train_labels = load_fashion_mnist("train")
        val_images, val_labels = load_fashion_mnist("test")
        keep = _subset(len(train_labels), spec.limit_train, spec.seed)
        keep_val = _subset(len(val_labels), spec.limit_val, spec.seed)
        train = TensorImageDataset(train_images[keep], train_labels[keep], train_transform, spec.num_channels,
                                   spec.seed)
        val = TensorImageDataset(val_images[keep_val], val_labels[keep_val], val_transform, spec.num_channels,
                                 spec.seed)
        val.for_evaluation = True
        return train, val, list(FASHION_MNIST_CLASSES)
    root = Path(spec.data).expanduser()
    _check_folder(root)
    val_root = _find_val_folder(root)
    if (root / "train").is_dir():
        files, labels, classes = scan_class_folders(root / "train")
        if val_root is None:
            train_idx, val_idx = split_by_fraction(labels, spec.val_fraction, spec.seed)
            val_files, val_labels = [files[i] for i in val_idx], [labels[i] for i in val_idx]
            files, labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
        else:
            val_files, val_labels, val_classes = scan_class_folders(val_root)
            if val_classes != classes:
                raise DataError(
                    f"the class folders of {val_root} ({', '.join(val_classes)}) differ from those of "
                    f"{root / 'train'} ({', '.join(classes)}); give both splits the same class folders"
                )
    else:
        all_files, all_labels, classes = scan_class_folders(root)
        train_idx, val_idx = split_by_fraction(all_labels, spec.val_fraction, spec.seed)
        files, labels = [all_files[i] for i in train_idx], [all_labels[i] for i in train_idx]
        val_files, val_labels = [all_files[i] for i in val_idx], [all_labels[i] for i in val_idx]
    if not val_files:
        raise DataError(
            f"no image of {root} is left for validation: every class has a single image, and val_fraction "
            f"{spec.val_fraction} of one image is none. Add images, or give the validation images as DATA/val"
        )
    keep = _subset(len(files), spec.limit_train, spec.seed)
    keep_val = _subset(len(val_files), spec.limit_val, spec.seed)
    train = ImageFileDataset([files[i] for i in keep], [labels[i] for i in keep], train_transform,
                             spec.num_channels, spec.seed)
    val = ImageFileDataset([val_files[i] for i in keep_val], [val_labels[i] for i in keep_val], val_transform,
                           spec.num_channels, spec.seed)
    val.for_evaluation = True
    return train, val, classes


def build_eval_data(spec: DataSpec, transform: Callable | None = None) -> tuple[AugmentedDataset, list[str]]:
    """The evaluation set of `spec.data`: Fashion-MNIST's test split, `DATA/val` (or `test`), or, for a
    plain folder of class folders, all of it. `transform` (one `(C, H, W)` uint8 image -> pixel values)
    defaults to `eval_transform` of the spec's size and statistics. Unreadable images are left out."""
    transform = transform or eval_transform(spec.image_size, spec.mean, spec.std)
    if spec.data == FASHION_MNIST:
        images, labels = load_fashion_mnist("test")
        keep = _subset(len(labels), spec.limit_val, spec.seed)
        dataset: AugmentedDataset = TensorImageDataset(images[keep], labels[keep], transform, spec.num_channels)
        classes = list(FASHION_MNIST_CLASSES)
    else:
        root = Path(spec.data).expanduser()
        _check_folder(root)
        folder = _find_val_folder(root) or root
        files, labels, classes = scan_class_folders(folder)
        keep = _subset(len(files), spec.limit_val, spec.seed)
        dataset = ImageFileDataset([files[i] for i in keep], [labels[i] for i in keep], transform, spec.num_channels)
    dataset.for_evaluation = True
    return dataset, classes


def build_pretraining_data(spec: DataSpec, transform: Callable, mask_generator: MaskGenerator) -> AugmentedDataset:
    """Unlabelled images for SimMIM: Fashion-MNIST's training images, or every image under the folder (under
    its `train/` when it has one: the `val/` and `test/` images stay unseen, as in fine-tuning)."""
    if spec.data == FASHION_MNIST:
        images, _ = load_fashion_mnist("train")
        keep = _subset(len(images), spec.limit_train, spec.seed)
        return TensorImageDataset(images[keep], None, transform, spec.num_channels, spec.seed, mask_generator)
    root = Path(spec.data).expanduser()
    _check_folder(root)
    held_out = [name for name in _split_folders(root) if name != "train"]
    if held_out and not (root / "train").is_dir():
        raise DataError(
            f"{root} has a {held_out[0]}/ split but no train/: pre-training would see its held-out images. Put "
            "the pre-training images under DATA/train, or pass a folder of images alone"
        )
    files = scan_images(root / "train" if (root / "train").is_dir() else root)
    keep = _subset(len(files), spec.limit_train, spec.seed)
    return ImageFileDataset([files[i] for i in keep], None, transform, spec.num_channels, spec.seed,
                            mask_generator)
