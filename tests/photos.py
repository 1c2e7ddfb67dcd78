"""A small real labelled image-folder dataset for the training tests: crops of scikit-image's sample photos.

Three classes, each cut from one photograph at random places and scales (seeded), saved as PNG files in
`train/<class>/` and `val/<class>/`, the layout `swinv2 train --data` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

PHOTOS = {"cat": skdata.chelsea, "coffee": skdata.coffee, "rocket": skdata.rocket}


def make_photo_folder(root: Path, train_per_class: int = 20, val_per_class: int = 8, size: int = 40,
                      seed: int = 0) -> Path:
    """Write the dataset under `root` and return it."""
    rng = np.random.default_rng(seed)
    for name, load in PHOTOS.items():
        photo = load()
        h, w = photo.shape[:2]
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(min(h, w) // 3, min(h, w)))
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                crop = Image.fromarray(photo[top: top + side, left: left + side])
                crop.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")
    return root


TINY_MODEL = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                  encoder_stride=8, drop_path_rate=0.0)
