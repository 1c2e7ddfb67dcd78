"""Training pieces on their own: SimMIM masks and targets, schedules, parameter groups, checkpoint files,
configuration, data folders, Fashion-MNIST files, and the errors for bad requests."""

from __future__ import annotations

import errno
import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from photos import TINY_MODEL, make_photo_folder

from swinv2 import Swinv2Config, Swinv2ForImageClassification, Swinv2ForMaskedImageModeling
from swinv2 import data as data_module
from swinv2.checkpoints import WriteError, atomic_write
from swinv2.data import (
    DataError,
    DataSpec,
    ImageFileDataset,
    MaskGenerator,
    build_classification_data,
    build_pretraining_data,
    classification_train_transform,
    eval_processor,
    eval_transform,
    load_fashion_mnist,
    scan_class_folders,
    split_by_fraction,
)
from swinv2.processing import load_image
from swinv2.training import (
    TrainConfig,
    TrainingError,
    build_optimizer,
    build_scheduler,
    checkpoint_path,
    latest_checkpoint,
    layer_id,
    lr_factor,
    norm_targets,
    param_groups,
    read_metrics,
    resolve_config,
    simmim_loss,
    train,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"), train_per_class=6, val_per_class=3)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    Swinv2Config(**TINY_MODEL).to_json_file(path)
    return path


# ---------------------------------------------------------------------------------------------- SimMIM
def test_mask_generator_masks_whole_squares_at_the_ratio():
    generator = MaskGenerator((192, 192), mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    mask = generator(torch.Generator().manual_seed(0))
    assert mask.shape == (48 * 48,) and mask.dtype == torch.bool
    # 36 squares of 32 px, ceil(0.6 * 36) = 22 of them masked, each 8 x 8 model patches
    assert int(mask.sum()) == 22 * 64
    squares = mask.view(6, 8, 6, 8).permute(0, 2, 1, 3).reshape(36, 64)
    assert bool((squares.all(1) | ~squares.any(1)).all()), "a square is partly masked"
    again = generator(torch.Generator().manual_seed(0))
    other = generator(torch.Generator().manual_seed(1))
    assert torch.equal(mask, again) and not torch.equal(mask, other)


def test_mask_generator_rectangular_and_bad_sizes():
    mask = MaskGenerator((32, 64), mask_patch_size=16, model_patch_size=4, mask_ratio=0.5)()
    assert mask.shape == (8 * 16,) and int(mask.sum()) == 4 * 16
    with pytest.raises(ValueError, match="multiple of mask_patch_size"):
        MaskGenerator((40, 40), mask_patch_size=32, model_patch_size=4)
    with pytest.raises(ValueError, match="multiple of the model's patch size"):
        MaskGenerator((36, 36), mask_patch_size=6, model_patch_size=4)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskGenerator((32, 32), mask_patch_size=8, model_patch_size=4, mask_ratio=1.0)


def test_norm_targets_matches_a_direct_computation(rng):
    pixels = torch.randn(2, 3, 9, 7, generator=rng, dtype=torch.float64)
    window = 5
    got = norm_targets(pixels, window)
    expected = torch.empty_like(pixels)
    r = window // 2
    for i in range(9):
        for j in range(7):
            patch = pixels[:, :, max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].flatten(2)
            mean, var = patch.mean(-1), patch.var(-1, unbiased=True)
            expected[:, :, i, j] = (pixels[:, :, i, j] - mean) / (var + 1e-6).sqrt()
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


def test_simmim_loss_is_the_models_loss_and_differs_with_normalised_targets(rng):
    torch.manual_seed(0)
    model = Swinv2ForMaskedImageModeling(Swinv2Config(**TINY_MODEL)).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=rng)
    mask = torch.stack([MaskGenerator((32, 32), 8, 4)(torch.Generator().manual_seed(i)) for i in range(2)])
    out = model(pixel_values=pixels, bool_masked_pos=mask)
    ours = simmim_loss(pixels, out.reconstruction, mask, (4, 4))
    torch.testing.assert_close(ours, out.loss, atol=1e-6, rtol=1e-6)
    normalised = simmim_loss(pixels, out.reconstruction, mask, (4, 4), norm_window=7)
    assert not torch.isclose(normalised, ours)


# ---------------------------------------------------------------------------------------------- schedules
def test_lr_factor_warmup_then_cosine():
    total, warmup, low = 100, 10, 0.01
    factors = [lr_factor(s, total, warmup, low) for s in range(total + 1)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[warmup + 45] == pytest.approx(low + (1 - low) * 0.5)  # half way down the cosine
    assert factors[total] == pytest.approx(low)
    after = factors[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert lr_factor(0, 5, 0, 0.0) == pytest.approx(1.0)  # no warm-up: the peak at once


def test_scheduler_keeps_each_groups_layer_scale():
    torch.manual_seed(0)
    config = Swinv2Config(**TINY_MODEL, num_labels=3)
    model = Swinv2ForImageClassification(config)
    train_config = TrainConfig(data="x", model="x", output="x", lr=1e-3, layer_decay=0.5, min_lr=0.0)
    optimizer = build_optimizer(model, train_config, config.depths)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4, min_ratio=0.0)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    factor = lr_factor(7, 20, 4, 0.0)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] * factor)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0, 0.5, 0.25, 0.125}


# ---------------------------------------------------------------------------------------------- parameter groups
def test_param_groups_exclude_norms_biases_logit_scale_cpb_from_decay():
    config = Swinv2Config(**{**TINY_MODEL, "depths": [2, 2], "num_heads": [1, 2]}, num_labels=3)
    model = Swinv2ForImageClassification(config)
    groups = param_groups(model, weight_decay=0.05)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    for name in names:
        excluded = ("norm" in name or name.endswith(("bias", "q_bias", "v_bias"))
                    or "logit_scale" in name or "cpb_mlp" in name)
        assert (name in no_decay) == excluded, name
    assert "swinv2.stages.0.blocks.1.attn.cpb_mlp.0.weight" in no_decay
    assert {"classifier.weight", "swinv2.embeddings.proj.weight", "swinv2.stages.0.blocks.0.attn.qkv.weight",
            "swinv2.stages.0.downsample.reduction.weight", "swinv2.stages.1.blocks.1.mlp.fc2.weight"} <= decay
    mim = Swinv2ForMaskedImageModeling(Swinv2Config(**TINY_MODEL))
    mim_no_decay = {n for g in param_groups(mim, 0.05) if g["weight_decay"] == 0 for n in g["names"]}
    assert "swinv2.embeddings.mask_token" in mim_no_decay
    assert "decoder.0.weight" not in mim_no_decay


def test_layer_decay_scales_follow_depth():
    depths = [2, 2]
    assert layer_id("swinv2.embeddings.proj.weight", depths) == 0
    assert layer_id("swinv2.stages.0.blocks.0.attn.qkv.weight", depths) == 1
    assert layer_id("swinv2.stages.0.blocks.1.norm1.weight", depths) == 2
    assert layer_id("swinv2.stages.0.downsample.reduction.weight", depths) == 2  # with its stage's last block
    assert layer_id("swinv2.stages.1.blocks.1.mlp.fc1.weight", depths) == 4
    assert layer_id("swinv2.norm.weight", depths) == 5
    assert layer_id("classifier.weight", depths) == 5
    model = Swinv2ForImageClassification(Swinv2Config(**{**TINY_MODEL, "depths": depths}, num_labels=3))
    scales = {n: g["lr_scale"] for g in param_groups(model, 0.05, 0.8, depths) for n in g["names"]}
    assert scales["classifier.weight"] == 1.0
    assert scales["swinv2.embeddings.proj.weight"] == pytest.approx(0.8**5)
    assert scales["swinv2.stages.1.blocks.0.attn.qkv.weight"] == pytest.approx(0.8**2)


# ---------------------------------------------------------------------------------------------- checkpoint files
def test_atomic_write_writes_through_links_and_refuses_devices(tmp_path):
    """A symlink is written through (the link stays, its file changes); a device or pipe is never replaced
    by a regular file (as root, `swinv2 export ... /dev/full` replaced the device)."""
    import os
    from pathlib import Path

    target = tmp_path / "model.onnx"
    target.write_text("old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    atomic_write(link, lambda tmp: Path(tmp).write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(WriteError, match="not a regular file"):
        atomic_write(pipe, lambda tmp: Path(tmp).write_text("new"))
    assert not pipe.is_file()


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "checkpoints" / "state.pt"
    atomic_write(path, lambda tmp: torch.save({"step": 1}, tmp))

    def crash(tmp, message="killed while writing"):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match="killed while writing"):  # a writer's own error passes unchanged
        atomic_write(path, crash)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temporary left behind
    full = "[enforce fail at inline_container.cc:672] . unexpected pos 529088 vs 528976"  # torch.save, disk full
    with pytest.raises(WriteError, match=r"could not write .*state.pt \(\[enforce .*; \d+ MiB free there\)"):
        atomic_write(path, lambda tmp: crash(tmp, full))
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]

    def full_disk(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"No space left on device; \d+ MiB free there\): free space or write"):
        atomic_write(path, full_disk)  # a WriteError is an OSError (and a Swinv2Error: one line from the CLI)
    assert torch.load(path, weights_only=True) == {"step": 1}

    def denied(tmp):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError, match=r"state.pt \(Permission denied\): write elsewhere\. Nothing"):
        atomic_write(path, denied)  # not a full disk: no advice to free space


def test_latest_checkpoint_skips_a_damaged_one(tmp_path, caplog):
    for step in (2, 4):
        atomic_write(checkpoint_path(tmp_path, step), lambda tmp, s=step: torch.save({"model": {}, "step": s}, tmp))
    newest = checkpoint_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[:50])  # e.g. a disk that filled up
    with caplog.at_level(logging.WARNING, logger="swinv2"):
        path, state = latest_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 2) and state["step"] == 2
    assert "step_00000004.pt" in caplog.text
    assert latest_checkpoint(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_checkpoint_is_called_truncated_or_corrupt(tmp_path, caplog, damage):
    """Not torch's advice to re-run torch.load with weights_only=False, which it gives for any bytes its
    unpickler refuses."""
    path = checkpoint_path(tmp_path, 2)
    atomic_write(path, lambda tmp: torch.save({"model": {"w": torch.zeros(1000)}, "step": 2}, tmp))
    path.write_bytes(b"garbage\n" if damage == "text" else path.read_bytes()[:2000])
    with caplog.at_level(logging.WARNING, logger="swinv2"):
        assert latest_checkpoint(tmp_path) is None
    assert "truncated or corrupt" in caplog.text and "weights_only" not in caplog.text, caplog.text
    assert caplog.text.count("step_00000002.pt") == 1


# ---------------------------------------------------------------------------------------------- configuration
def test_config_file_then_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data: fashion-mnist\nlr: 0.002\nbatch-size: 16\ncrop_scale: [0.5, 1.0]\n")
    config = resolve_config(str(yaml_file), {"lr": 0.01, "epochs": None, "model": "m", "output": "o"})
    assert (config.lr, config.batch_size, config.crop_scale, config.epochs) == (0.01, 16, (0.5, 1.0), 10)
    assert config.config_file == str(yaml_file)
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('data = "d"\nmodel = "m"\noutput = "o"\ntask = "simmim"\nmask_ratio = 0.75\n')
    assert resolve_config(str(toml_file), {}).mask_ratio == 0.75
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: d\nlearning_rate: 1\n")
    with pytest.raises(TrainingError, match=r"(?s)unknown training setting.*learning_rate"):
        resolve_config(str(bad), {"model": "m", "output": "o"})
    with pytest.raises(TrainingError, match="does not exist"):
        resolve_config(str(tmp_path / "missing.yaml"), {})
    with pytest.raises(TrainingError, match="amp must be one of"):
        resolve_config(None, {"data": "d", "model": "m", "output": "o", "amp": "fp8"})


# ---------------------------------------------------------------------------------------------- data
def test_split_by_fraction_is_stratified_and_disjoint():
    labels = [0] * 10 + [1] * 20 + [2] * 3
    train_idx, val_idx = split_by_fraction(labels, 0.2, seed=0)
    assert sorted(train_idx + val_idx) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val_idx) for c in range(3)] == [2, 4, 1]
    assert split_by_fraction(labels, 0.2, seed=0) == (train_idx, val_idx)


def test_pad_crop_flip_is_a_normalised_crop_of_the_padded_image():
    images, _ = load_fashion_mnist("test")
    image = images[7][None]  # (1, 28, 28) uint8, a real photo
    mean, std, pad = (0.2860,), (0.3530,), 3
    padded = torch.nn.functional.pad(image.float(), (pad,) * 4)
    candidates = {}
    for top, left in itertools.product(range(2 * pad + 1), repeat=2):
        crop = (padded[:, top:top + 28, left:left + 28] / 255 - mean[0]) / std[0]
        candidates[(top, left, False)], candidates[(top, left, True)] = crop, crop.flip(-1)
    seen = set()
    for hflip in (0.0, 0.5):
        transform = classification_train_transform((28, 28), mean, std, hflip=hflip, crop_padding=pad)
        for seed in range(300):
            torch.manual_seed(seed)
            out = transform(image)
            found = [key for key, crop in candidates.items() if torch.allclose(out, crop, atol=1e-5, rtol=0)]
            assert found, f"seed {seed}: not a crop of the padded image"
            seen.update((key[0], key[1], key[2] and hflip > 0) for key in found)
    assert {(t, le) for t, le, _ in seen} == {(t, le) for t, le, _ in candidates}  # every offset is drawn
    assert any(flipped for *_, flipped in seen)
    # padding 0: the image itself, flipped half of the time
    flips = classification_train_transform((28, 28), mean, std, crop_padding=0)
    plain = (image.float() / 255 - mean[0]) / std[0]
    outs = [flips(image) for _ in range(40)]
    assert all(torch.allclose(o, plain, atol=1e-5) or torch.allclose(o, plain.flip(-1), atol=1e-5) for o in outs)
    assert 5 < sum(torch.allclose(o, plain, atol=1e-5) for o in outs) < 35
    # another size is resized first; RandAugment runs on the uint8 crop
    transform = classification_train_transform((32, 32), mean, std, crop_padding=2, randaugment_magnitude=9)
    assert transform(image).shape == (1, 32, 32) and transform(image).dtype == torch.float32


def test_image_folder_splits_and_evaluation_matches_the_processor(photos):
    spec = DataSpec(str(photos), (32, 32))
    train_set, val_set, classes = build_classification_data(spec, eval_transform((32, 32), (0.5,) * 3, (0.5,) * 3))
    assert classes == ["cat", "coffee", "rocket"] and len(train_set) == 18 and len(val_set) == 9
    pixels, label = val_set[4]
    assert pixels.shape == (3, 32, 32) and label == 1
    processor = eval_processor((32, 32), spec.mean, spec.std)
    expected = processor(load_image(val_set.files[4]), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, expected, atol=0, rtol=0)


def test_folder_without_val_split_uses_the_fraction(photos, tmp_path):
    spec = DataSpec(str(photos / "train"), (32, 32), val_fraction=0.34)
    train_set, val_set, classes = build_classification_data(spec, eval_transform((32, 32), (0.5,) * 3, (0.5,) * 3))
    assert len(classes) == 3 and len(val_set) == 6 and len(train_set) == 12
    assert not set(train_set.files) & set(val_set.files)


def test_pretraining_on_a_split_dataset_leaves_val_unseen(photos):
    """SimMIM on a folder with train/ and val/ reads train/ only, as fine-tuning will: pre-training on the
    validation images would flatter the fine-tuned model's validation score."""
    mask = MaskGenerator((32, 32), mask_patch_size=8, model_patch_size=4, mask_ratio=0.5)
    transform = eval_transform((32, 32), (0.5,) * 3, (0.5,) * 3)
    data = build_pretraining_data(DataSpec(str(photos), (32, 32)), transform, mask)
    assert len(data) == 18 and all(photos / "train" in f.parents for f in data.files)


def test_a_model_path_that_does_not_exist_is_named_once(tmp_path):
    from swinv2.training import _load_source

    with pytest.raises(TrainingError, match=r"m\.json: no such file or folder\. Give a config\.json") as err:
        _load_source(str(tmp_path / "m.json"))
    assert str(err.value).count("Give") == 1


def test_bad_data_folders_name_the_problem(tmp_path):
    with pytest.raises(DataError, match=r"(?s)does not exist.*fashion-mnist"):
        scan_class_folders(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"(?s)no class folders.*empty"):
        scan_class_folders(empty)
    (empty / "cat").mkdir()
    (empty / "dog").mkdir()
    (empty / "cat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"class folder .*dog holds no images.*add images"):
        scan_class_folders(empty)
    loose = tmp_path / "loose"
    loose.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(loose / "x.png")
    with pytest.raises(DataError, match=r"(?s)one sub-folder per class.*swinv2 pretrain"):
        scan_class_folders(loose)


def test_a_corrupt_image_is_reported_and_skipped(photos, tmp_path, caplog):
    files = sorted((photos / "train" / "cat").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(files[0].read_bytes()[:100])  # a truncated PNG
    transform = eval_transform((32, 32), (0.5,) * 3, (0.5,) * 3)
    dataset = ImageFileDataset([files[0], broken, files[2]], [0, 0, 2], transform, 3)
    with caplog.at_level(logging.WARNING, logger="swinv2"):
        pixels, label = dataset[1]
    assert label == 2  # the next readable item stands in
    torch.testing.assert_close(pixels, dataset[2][0])
    assert "broken.png" in caplog.text
    # a class none of whose images can be read would train as a class without examples: an error naming it
    (tmp_path / "dog").mkdir()
    dogs = [tmp_path / "dog" / f"{i}.png" for i in range(2)]
    for dog in dogs:
        dog.write_bytes(files[1].read_bytes()[:100])
    dataset = ImageFileDataset([files[0], *dogs, files[2]], [0, 1, 1, 2], transform, 3)
    with pytest.raises(DataError, match=r"none of the 2 image\(s\) of the class in .*dog can be read"):
        dataset[1]


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_fashion_mnist_reader_debian_copy_and_verified_download(tmp_path, monkeypatch):
    from skimage import data as skdata

    images = np.stack([skdata.camera()[i * 28: i * 28 + 28, :28] for i in range(6)])
    labels = np.array([0, 9, 3, 3, 1, 2], dtype=np.uint8)
    debian = tmp_path / "debian"
    debian.mkdir()
    (debian / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (debian / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN_DIR", debian)
    monkeypatch.setattr(data_module, "FASHION_MNIST_FILES", {**data_module.FASHION_MNIST_FILES, "test": (
        ("t10k-images-idx3-ubyte.gz", "0" * 32), ("t10k-labels-idx1-ubyte.gz", "0" * 32), 6)})
    got_images, got_labels = load_fashion_mnist("test")
    assert torch.equal(got_images, torch.from_numpy(images)) and got_labels.tolist() == labels.tolist()

    # Without the Debian copy: fetched from a mirror and kept only when the MD5 matches.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mirror / name).write_bytes((debian / name).read_bytes())
    md5 = {n: hashlib.md5((mirror / n).read_bytes()).hexdigest() for n in ("t10k-images-idx3-ubyte.gz",
                                                                            "t10k-labels-idx1-ubyte.gz")}
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(data_module, "FASHION_MNIST_MIRRORS", (mirror.as_uri() + "/",))
    monkeypatch.setenv("SWINV2_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "FASHION_MNIST_FILES", {**data_module.FASHION_MNIST_FILES, "test": (
        ("t10k-images-idx3-ubyte.gz", md5["t10k-images-idx3-ubyte.gz"]),
        ("t10k-labels-idx1-ubyte.gz", "f" * 32), 6)})
    with pytest.raises(DataError, match=r"(?s)MD5.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")
    assert not (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    monkeypatch.setattr(data_module, "FASHION_MNIST_FILES", {**data_module.FASHION_MNIST_FILES, "test": (
        ("t10k-images-idx3-ubyte.gz", md5["t10k-images-idx3-ubyte.gz"]),
        ("t10k-labels-idx1-ubyte.gz", md5["t10k-labels-idx1-ubyte.gz"]), 6)})
    assert load_fashion_mnist("test")[1].tolist() == labels.tolist()
    assert (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


# ---------------------------------------------------------------------------------------------- bad requests
def _config(tiny_config, photos, output, **changes) -> TrainConfig:
    values = dict(data=str(photos), model=str(tiny_config), output=str(output), batch_size=6, max_steps=2,
                  num_workers=0, progress=False, tensorboard=False)
    return TrainConfig(**{**values, **changes})


def test_config_file_values_are_converted_or_named(tmp_path):
    """YAML reads `lr: 1e-3` as a string: it is converted; a value of another kind names the setting."""
    from swinv2.training import resolve_config

    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nepochs: 3.0\ncrop_scale: [0.5, 1]\nimage_mean: [0.5]\nimage_std: [0.5]\n")
    config = resolve_config(str(path), {"data": "d", "output": "o", "model": "m"})
    assert (config.lr, config.epochs, config.crop_scale, config.image_mean) == (1e-3, 3, (0.5, 1.0), (0.5,))
    for text, message in [("epochs: three", "setting epochs needs an int, got 'three'"),
                          ("betas: [0.9]", "setting betas needs 2 values"),
                          ("crop_scale: [1, 0.5]", r"crop_scale must be .* 0 < min <= max <= 1"),
                          ("hflip: 2", r"hflip is a probability in \[0, 1\]"),
                          ("weight_decay: -1", "weight_decay must be >= 0")]:
        path.write_text(text + "\n")
        with pytest.raises(TrainingError, match=message):
            resolve_config(str(path), {"data": "d", "output": "o", "model": "m"})


def test_one_class_and_a_mask_that_hides_everything_are_refused(tiny_config, photos, tmp_path):
    import shutil

    one = tmp_path / "one"
    shutil.copytree(photos / "train" / "cat", one / "cat")
    with pytest.raises(TrainingError, match=r"one class \(cat\): a classifier needs at least two class folders"):
        train(_config(tiny_config, one, tmp_path / "a"))
    with pytest.raises(TrainingError, match=r"leaves 1x1 mask squares.*masks all of them.*--mask-patch-size 8"):
        train(_config(tiny_config, photos, tmp_path / "b", task="simmim", mask_patch_size=32))


def test_compile_without_a_cpp_compiler_says_so(tiny_config, photos, tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TrainingError, match=r"(?s)--compile: .*C\+\+ compiler.*without --compile"):
        train(_config(tiny_config, photos, tmp_path / "run", compile=True))
    assert not list((tmp_path / "run").glob("checkpoints/*"))  # refused before the first step


def test_bad_requests_stop_early_with_the_fix(tiny_config, photos, tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        train(_config(tiny_config, tmp_path / "no-data", tmp_path / "a"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrainingError, match=r"(?s)cannot write to the output folder.*choose another --output"):
        train(_config(tiny_config, photos, blocker / "run"))
    with pytest.raises(TrainingError, match=r"the output .*a-file is a file, not a folder; choose another --output"):
        train(_config(tiny_config, photos, blocker))
    with pytest.raises(TrainingError, match=r"(?s)no readable checkpoint.*run without --resume"):
        train(_config(tiny_config, photos, tmp_path / "b", resume="latest"))
    with pytest.raises(TrainingError, match="fewer than one step"):
        train(_config(tiny_config, photos, tmp_path / "c", batch_size=64))
    # a classifier with other classes than the data's
    two = tmp_path / "two-classes"
    Swinv2ForImageClassification(Swinv2Config(**TINY_MODEL, num_labels=2)).save_pretrained(two)
    with pytest.raises(TrainingError, match=r"(?s)3 classes but the classifier .* has 2.*--new-head"):
        train(_config(tiny_config, photos, tmp_path / "d", model=str(two)))
    with pytest.raises(TrainingError, match=r"cannot be loaded as a Swin V2 model|not a config\.json"):
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "config.json").write_text(json.dumps({**TINY_MODEL, "model_type": "swinv2"}))
        torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign" / "pytorch_model.bin")
        train(_config(tiny_config, photos, tmp_path / "e", model=str(tmp_path / "foreign")))


def test_resume_checks_the_architecture_and_fresh_runs_do_not_overwrite(tiny_config, photos, tmp_path):
    run = tmp_path / "run"
    result = train(_config(tiny_config, photos, run, new_head=True))
    assert result.steps == 2 and (run / "last" / "model.safetensors").is_file()
    with pytest.raises(TrainingError, match=r"(?s)already holds a run.*--resume"):
        train(_config(tiny_config, photos, run))
    wider = tmp_path / "wider.json"
    Swinv2Config(**{**TINY_MODEL, "embed_dim": 32}).to_json_file(wider)
    with pytest.raises(TrainingError, match=r"(?s)another architecture.*embed_dim: 16 there, 32 in --model"):
        train(_config(tiny_config, photos, run, model=str(wider), resume="latest", max_steps=3))
    timm_layout = tmp_path / "timm-layout.json"  # the same tensors, other numbers
    Swinv2Config(**TINY_MODEL, window_layout="timm").to_json_file(timm_layout)
    with pytest.raises(TrainingError, match=r"(?s)another architecture.*window_layout: transformers there, timm"):
        train(_config(tiny_config, photos, run, model=str(timm_layout), resume="latest", max_steps=3))
    with pytest.raises(TrainingError, match=r"(?s)classification checkpoint, not simmim.*swinv2 train"):
        train(_config(tiny_config, photos, run, task="simmim", resume="latest", mask_patch_size=8))
    # settings that shape the optimisation cannot change on resume (they would be recorded but not used)
    with pytest.raises(TrainingError, match=r"(?s)differ: batch_size: 6 there, 3 now; lr: 0.0005 there, 0.001 now"):
        train(_config(tiny_config, photos, run, resume="latest", batch_size=3, lr=1e-3))
    with pytest.raises(TrainingError, match=r"at step 2, past the 1 steps of this run"):
        train(_config(tiny_config, photos, run, resume="latest", max_steps=1))
    finished = train(_config(tiny_config, photos, run, resume="latest"))  # nothing left to do
    assert finished.steps == 2
    assert math.isfinite(finished.metrics.get("img_per_s", 0.0))


def test_a_run_removes_the_temporaries_an_interrupted_checkpoint_write_left(tiny_config, photos, tmp_path, caplog):
    """A SIGKILL between atomic_write's write and its rename leaves `.step_XXXXXXXX.pt.<8 chars>.tmp`; resuming
    (and a fresh run in a folder whose first checkpoint was cut short) removes such files, and only those."""
    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, max_steps=2, checkpoint_every=1, keep_checkpoints=5))
    checkpoints = run / "checkpoints"
    half = (checkpoints / "step_00000002.pt").read_bytes()[:4096]  # what a kill mid-write leaves
    stale = [checkpoints / ".step_00000003.pt.r8bvxpyr.tmp", run / ".metrics.jsonl.k_3x9q0a.tmp",
             run / "last" / ".model.safetensors.0abcdefg.tmp"]
    kept = [checkpoints / ".step_00000003.pt.tmp", checkpoints / "notes.tmp", checkpoints / "step.r8bvxpyr.tmp",
            checkpoints / ".step_00000003.pt.r8bvxpyr.tmp.bak", run / "tensorboard" / ".x.abcdefgh.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(half)
    staging = run / ".last.k2l3m4n5.staging"  # staged_folder's, for an export cut short
    (staging / "model.safetensors").parent.mkdir()
    (staging / "model.safetensors").write_bytes(half)
    stale.append(staging)
    with caplog.at_level(logging.INFO, logger="swinv2"):
        resumed = train(_config(tiny_config, photos, run, max_steps=2, checkpoint_every=1, keep_checkpoints=5,
                                resume="latest"))
    assert resumed.steps == 2
    assert [p for p in stale if p.exists()] == [] and all(p.read_bytes() == half for p in kept)
    assert "removed 4 temporary file(s) left by an interrupted write" in caplog.text
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == ["step_00000001.pt", "step_00000002.pt"]

    # killed while writing its first checkpoint: no checkpoint, one temporary; a new run starts and cleans up
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / ".step_00000001.pt.q1w2e3r4.tmp").write_bytes(half)
    train(_config(tiny_config, photos, fresh, max_steps=1))
    assert [p.name for p in (fresh / "checkpoints").iterdir()] == ["step_00000001.pt"]


def _processor_stats(folder) -> tuple[list[float], list[float]]:
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    return saved["image_mean"], saved["image_std"]


def test_fine_tuning_keeps_the_checkpoints_normalisation_unless_flags_say_otherwise(tiny_config, photos, tmp_path):
    """A SimMIM checkpoint pre-trained with mean 0.5 / std 0.25 is fine-tuned, exported and resumed with them
    (not ImageNet's); --image-mean/--image-std given win; a new model still gets ImageNet's."""
    pre = train(_config(tiny_config, photos, tmp_path / "pre", task="simmim", mask_patch_size=8, max_steps=1,
                        image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)))
    assert _processor_stats(pre.last) == ([0.5] * 3, [0.25] * 3)
    tuned = train(_config(tiny_config, photos, tmp_path / "tuned", model=str(pre.last), max_steps=1))
    for folder in (tuned.last, tuned.best):
        assert _processor_stats(folder) == ([0.5] * 3, [0.25] * 3)
    recorded = json.loads((tmp_path / "tuned" / "train_config.json").read_text())
    assert (recorded["image_mean"], recorded["image_std"]) == ([0.5] * 3, [0.25] * 3)
    # resuming through the library with nothing given keeps the run's own values (no "settings differ" error)
    resumed = train(_config(tiny_config, photos, tmp_path / "tuned", model=str(pre.last), max_steps=2,
                            resume="latest"))
    assert resumed.steps == 2 and _processor_stats(resumed.last) == ([0.5] * 3, [0.25] * 3)

    mine = ((0.4, 0.45, 0.5), (0.2, 0.21, 0.22))
    given = train(_config(tiny_config, photos, tmp_path / "given", model=str(pre.last), max_steps=1,
                          image_mean=mine[0], image_std=mine[1]))
    assert _processor_stats(given.last) == tuple(list(v) for v in mine)
    fresh = train(_config(tiny_config, photos, tmp_path / "fresh", max_steps=1))  # config.json: new weights
    assert _processor_stats(fresh.last) == (list(data_module.IMAGENET_MEAN), list(data_module.IMAGENET_STD))


def test_readme_fine_tune_command_on_a_one_channel_simmim_checkpoint(photos, tmp_path, capsys):
    """`swinv2 train --data DIR --model runs/simmim/last --output runs/ft --layer-decay 0.9 --new-head` for a
    1-channel checkpoint pre-trained with one mean and std: it failed with "image_mean/image_std have 3 values
    but the model reads 1 channels"; it now fine-tunes with the checkpoint's statistics."""
    from swinv2 import cli

    gray = tmp_path / "gray.json"
    Swinv2Config(**{**TINY_MODEL, "num_channels": 1}).to_json_file(gray)
    common = ["--data", str(photos), "--batch-size", "6", "--max-steps", "1", "--num-workers", "0",
              "--no-progress", "--no-tensorboard"]
    assert cli.main(["pretrain", *common, "--model", str(gray), "--output", str(tmp_path / "simmim"),
                     "--mask-patch-size", "8", "--image-mean", "0.286", "--image-std", "0.353"]) == 0
    assert cli.main(["train", *common, "--model", str(tmp_path / "simmim" / "last"), "--output",
                     str(tmp_path / "ft"), "--layer-decay", "0.9", "--new-head"]) == 0, capsys.readouterr().err
    assert _processor_stats(tmp_path / "ft" / "best") == ([0.286], [0.353])
    model = Swinv2ForImageClassification.from_pretrained(tmp_path / "ft" / "best")
    assert model.config.num_channels == 1 and model.config.id2label == {0: "cat", 1: "coffee", 2: "rocket"}


# ---------------------------------------------------------------------------------------------- options
def _last_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "last" / "model.safetensors")


def test_gradient_accumulation_equals_the_large_batch(tiny_config, photos, tmp_path):
    # Adam's first steps move each weight by about lr * g / (|g| + eps): for a gradient within rounding
    # noise of zero that is any value in [-lr, lr], whatever the summation order. A larger eps keeps such
    # weights from hiding the comparison of the accumulated gradients themselves.
    big = train(_config(tiny_config, photos, tmp_path / "big", batch_size=8, max_steps=2, lr=2e-3, eps=1e-6))
    small = train(_config(tiny_config, photos, tmp_path / "small", batch_size=4, grad_accum_steps=2, max_steps=2,
                          lr=2e-3, eps=1e-6))
    assert big.steps == small.steps == 2
    a, b = _last_weights(tmp_path / "big"), _last_weights(tmp_path / "small")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_ema_checkpointing_mixup_randaugment_and_tensorboard(tiny_config, photos, tmp_path, amp):
    run = tmp_path / "run"
    result = train(_config(tiny_config, photos, run, amp=amp, ema_decay=0.5, gradient_checkpointing=True,
                           mixup=0.8, cutmix=1.0, randaugment=9, max_steps=3, tensorboard=True, log_every=1))
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    assert "top1" not in records[0]  # no training accuracy against mixed labels
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # the export holds the EMA weights, not the raw ones
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    exported = Swinv2ForImageClassification.from_pretrained(result.last).state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    key = "swinv2.stages.0.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(exported[key], ema[key])
    assert not torch.allclose(state["model"][key], ema[key])


def test_command_errors_are_one_line_with_status_2(tiny_config, tmp_path, capsys):
    """train and evaluate report data and checkpoint problems in one line on stderr (no traceback), exit 2."""
    from swinv2 import cli

    missing = tmp_path / "no-such-folder"
    args = ["--data", str(missing), "--model", str(tiny_config), "--output", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("swinv2 train: error:") and str(missing) in err and len(err.splitlines()) == 1
    assert cli.main(["evaluate", str(missing), "--data", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("swinv2 evaluate: error:") and str(missing) in err and len(err.splitlines()) == 1


def test_cpu_compile_does_not_print_the_cuda_home_warning(tmp_path):
    """A CUDA build of PyTorch on a machine without a GPU logs "No CUDA runtime is found" when inductor first
    imports its C++ builder; compiling for the CPU through compile_model does not show it (the control, a
    plain import in a fresh process, does)."""
    import os
    import subprocess
    import sys

    # a CUDA_HOME that exists, as on these machines, and no visible GPU
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    plain = "import torch.utils.cpp_extension"
    ours = "import torch; from swinv2.training import compile_model; compile_model(torch.nn.Linear(2, 2), 'cpu')"
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for code in (plain, ours)]
    assert "No CUDA runtime is found" in runs[0].stderr
    assert "No CUDA runtime is found" not in runs[1].stderr, runs[1].stderr


# ---------------------------------------------------------------------------------------------- evaluate
def _reference_metrics(model_dir, files_by_class, class_index):
    """Loss, top-1 and image count of a classifier on these files, one image at a time through its own processor."""
    from swinv2 import AutoImageProcessor

    model = Swinv2ForImageClassification.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    losses, hits = [], 0
    for name, files in files_by_class.items():
        for f in files:
            try:
                image = load_image(f)
            except Exception:
                continue
            with torch.no_grad():
                logits = model(processor(image).pixel_values).logits
            target = torch.tensor([class_index[name]])
            losses.append(float(torch.nn.functional.cross_entropy(logits, target)))
            hits += int(logits.argmax(-1).item() == class_index[name])
    return sum(losses) / len(losses), hits / len(losses), len(losses)


def _saved_classifier(folder, seed=0, **config):
    torch.manual_seed(seed)
    labels = ["cat", "coffee", "rocket"]
    model = Swinv2ForImageClassification(Swinv2Config(
        **{**TINY_MODEL, **config}, num_labels=3, id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}))
    from conftest import perturb_

    perturb_(model, torch.Generator().manual_seed(seed), scale=0.5)
    model.save_pretrained(folder)
    return folder


def test_evaluate_uses_the_models_processor_leaves_unreadable_images_out_and_matches_labels_by_name(
        photos, tmp_path):
    """The model's preprocessor_config.json (another size, bilinear, 0.5 statistics) as `swinv2 predict` uses
    it; a truncated file is left out (not replaced by another image, which would count twice); folders that
    are a subset of the model's labels, in another order, are matched by name."""
    import shutil

    from swinv2 import Swinv2ImageProcessor
    from swinv2.training import evaluate

    model = _saved_classifier(tmp_path / "model")
    Swinv2ImageProcessor(size={"height": 40, "width": 24}, resample=2, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(model)
    data = tmp_path / "data"
    for name in ("coffee", "rocket"):  # no "cat": the labels 0, 1 of the data are the model's 1, 2
        shutil.copytree(photos / "val" / name, data / name)
    broken = sorted((data / "coffee").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:200])
    files = {name: sorted((data / name).iterdir()) for name in ("coffee", "rocket")}
    loss, top1, count = _reference_metrics(model, files, {"cat": 0, "coffee": 1, "rocket": 2})
    result = evaluate(str(model), str(data), num_workers=0, progress=False)
    assert count == sum(len(f) for f in files.values()) - 1 == result.num_images
    assert result.class_names == ["cat", "coffee", "rocket"]
    assert [sum(row) for row in result.confusion] == [0, len(files["coffee"]) - 1, len(files["rocket"])]
    assert result.loss == pytest.approx(loss, abs=1e-5) and result.top1 == pytest.approx(top1)


def test_evaluate_a_subset_of_classes_gives_the_absent_ones_no_accuracy(photos, tmp_path, capsys):
    """A data folder without "cat" images: cat's accuracy is null in the JSON and n/a in the table (not 0.0,
    which would say all its images were missed); the present classes' accuracies are their confusion rows'."""
    import shutil

    from swinv2 import cli

    model = _saved_classifier(tmp_path / "model")
    data = tmp_path / "data"
    for name in ("coffee", "rocket"):
        shutil.copytree(photos / "val" / name, data / name)
    argv = ["evaluate", str(model), "--data", str(data), "--num-workers", "0"]
    assert cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    confusion = result["confusion"]
    assert result["per_class"]["cat"] is None and result["images_per_class"] == {"cat": 0, "coffee": 3, "rocket": 3}
    for i, name in ((1, "coffee"), (2, "rocket")):
        assert result["per_class"][name] == pytest.approx(confusion[i][i] / sum(confusion[i]))
    assert cli.main(argv) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["cat"] == "n/a" and float(rows["coffee"]) == pytest.approx(result["per_class"]["coffee"], abs=1e-4)


def test_evaluate_a_one_channel_model_without_processor_file(photos, tmp_path):
    from swinv2.training import evaluate

    model = _saved_classifier(tmp_path / "gray", num_channels=1)
    files = {name: sorted((photos / "val" / name).iterdir()) for name in ("cat", "coffee", "rocket")}
    loss, top1, count = _reference_metrics(model, files, {"cat": 0, "coffee": 1, "rocket": 2})
    result = evaluate(str(model), str(photos), num_workers=0, progress=False)
    assert result.num_images == count and result.loss == pytest.approx(loss, abs=1e-5)
    assert result.top1 == pytest.approx(top1)


def test_evaluate_option_and_settings_errors_are_one_line(photos, tmp_path, capsys):
    from swinv2 import cli

    model = _saved_classifier(tmp_path / "model")
    good = ["evaluate", str(model), "--data", str(photos), "--num-workers", "0"]
    usage = [  # argparse: exit status 2 through SystemExit
        ([*good, "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        ([*good, "--num-workers", "-1"], "argument --num-workers: expected an integer >= 0, got -1"),
    ]
    for argv, message in usage:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert cli.main([*good, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'bogus'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "a-file").write_text("")
    assert cli.main([*good, "--output", str(tmp_path / "a-file")]) == 2  # refused before the evaluation
    err = capsys.readouterr().err
    assert "a-file is a file, not a folder; choose another --output" in err and len(err.strip().splitlines()) == 1
    (model / "preprocessor_config.json").write_text('{"image_mean": [0.5], "image_std": [0.5]}')
    assert cli.main(good) == 2
    err = capsys.readouterr().err
    assert "make 1-channel images" in err and "the model takes 3" in err and len(err.strip().splitlines()) == 1


def test_under_torchrun_one_process_reports(photos, tmp_path, capsys, monkeypatch):
    """Every torchrun process evaluates; rank 0 alone prints the result (two JSON documents on stdout were
    unparseable). An error every process meets is said once per machine, in one line: by rank 0, and by the
    first process of another node (LOCAL_RANK 0), which names its rank."""
    from swinv2 import cli

    model = _saved_classifier(tmp_path / "model")
    good = ["evaluate", str(model), "--data", str(photos), "--num-workers", "0", "--json"]
    monkeypatch.setenv("RANK", "1")  # (WORLD_SIZE unset: no process group to join)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli.main(good) == 0
    assert capsys.readouterr().out == ""
    assert cli.main([*good, "--device", "bogus"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main([*good, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swinv2 evaluate (rank 2): error: unknown device 'bogus'") and err.count("\n") == 1
    monkeypatch.setenv("RANK", "0")
    assert cli.main(good) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] > 0


def test_training_checkpoints_load_with_their_config_and_labels(tiny_config, photos, tmp_path):
    """A `step_*.pt` checkpoint of `swinv2 train` keeps the model's config beside the weights: from_pretrained
    reads it (window, image size, class names) and gives the exported model's logits at that step."""
    from swinv2 import Swinv2ForImageClassification

    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, max_steps=2, checkpoint_every=1, new_head=True))
    exported = Swinv2ForImageClassification.from_pretrained(run / "last")
    loaded = Swinv2ForImageClassification.from_pretrained(run / "checkpoints" / "step_00000002.pt")
    assert loaded.config.id2label == exported.config.id2label
    assert sorted(loaded.config.id2label.values()) == sorted(p.name for p in (photos / "train").iterdir())
    assert (loaded.config.window_size, loaded.config.image_size) == (exported.config.window_size,
                                                                      exported.config.image_size)
    x = torch.randn(2, 3, *loaded.config.image_hw)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, exported(x).logits, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- labels and layouts
def _relabel(folder, labels):
    config = Swinv2Config.from_pretrained(folder)
    config.id2label, config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    config.to_json_file(folder / "config.json")


def test_evaluate_pairs_folders_with_labels_by_name_or_refuses(photos, tmp_path):
    """A label that no folder can spell ("coffee/cup") is matched by its folder spelling (coffee_cup), in the
    model's order; a folder that no label names is refused, never paired by position; a train/ split alone
    is named as such."""
    import shutil

    from swinv2.training import evaluate

    model = _saved_classifier(tmp_path / "model")
    _relabel(model, ["rocket", "cat", "Coffee/cup"])
    data = tmp_path / "data"
    for name, folder, count in (("cat", "cat", 3), ("coffee", "coffee_cup", 2), ("rocket", "rocket", 1)):
        (data / folder).mkdir(parents=True)
        for f in sorted((photos / "val" / name).iterdir())[:count]:
            shutil.copy(f, data / folder / f.name)
    result = evaluate(str(model), str(data), num_workers=0, progress=False)
    assert result.class_names == ["rocket", "cat", "Coffee/cup"]
    assert [sum(row) for row in result.confusion] == [1, 3, 2]  # by position it would be [3, 2, 1]
    (data / "cat").rename(data / "dog")
    with pytest.raises(TrainingError, match=r"the data's classes dog are not labels of .*Name the class folders"):
        evaluate(str(model), str(data), num_workers=0, progress=False)
    shutil.copytree(data / "dog", data / "cat")  # one class more than the head: the extra one is named too
    with pytest.raises(TrainingError, match=r"has 3 \(the data's dog is none of its labels\): labels would be"):
        evaluate(str(model), str(data), num_workers=0, progress=False)
    only_train = tmp_path / "only_train"
    shutil.copytree(photos / "train", only_train / "train")
    with pytest.raises(TrainingError, match=r"split folder\(s\) train/ beside class folders.*only_train/train"):
        evaluate(str(model), str(only_train), num_workers=0, progress=False)


def test_fine_tuning_keeps_each_classes_classifier_row_by_name(photos, tmp_path):
    """A classifier of the data's classes in another order keeps each class's row; one of other classes
    needs --new-head."""
    from safetensors.torch import load_file

    from swinv2.training import build_model

    model = _saved_classifier(tmp_path / "model")
    _relabel(model, ["rocket", "cat", "coffee"])
    before = load_file(model / "model.safetensors")
    config = TrainConfig(data=str(photos), model=str(model), output=str(tmp_path / "run"))
    tuned, described = build_model(config, ["cat", "coffee", "rocket"])
    assert "rows reordered" in described
    assert tuned.config.id2label == {0: "cat", 1: "coffee", 2: "rocket"}
    for key in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(tuned.state_dict()[key], before[key][[1, 2, 0]], rtol=0, atol=0)
    with pytest.raises(TrainingError, match=r"knows rocket, cat, coffee, the data's classes are a, b, c.*--new-head"):
        build_model(config, ["a", "b", "c"])
    fresh, described = build_model(TrainConfig(data="d", model=str(model), output="o", new_head=True), ["a", "b", "c"])
    assert "new classifier" in described and fresh.config.id2label == {0: "a", 1: "b", 2: "c"}
    # some of its classes: the head keeps their rows (it was refused: "its labels would be out of range")
    subset, described = build_model(config, ["coffee", "rocket"])
    assert "the rows of the data's 2 of its 3 classes" in described
    assert subset.config.id2label == {0: "coffee", 1: "rocket"} and subset.num_labels == 2
    for key in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(subset.state_dict()[key], before[key][[2, 0]], rtol=0, atol=0)
    with torch.no_grad():
        assert subset(torch.randn(2, 3, 32, 32)).logits.shape == (2, 2)


def test_resume_and_fine_tuning_from_a_training_checkpoint_know_its_classes(tiny_config, photos, tmp_path):
    """A resumed run trains the rows of the classes it started on: data whose class folders have other names
    (as many of them) is refused, not trained by position. `--model checkpoints/step_N.pt` has a classifier
    (its config records the class, as save_pretrained's does): some of its classes keep their rows by name,
    and other classes need --new-head, as from an exported folder."""
    import shutil

    from swinv2.training import build_model

    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, max_steps=1, checkpoint_every=1, new_head=True))
    renamed = tmp_path / "renamed"
    shutil.copytree(photos, renamed)
    classes = sorted(p.name for p in (photos / "train").iterdir())
    for split in ("train", "val"):
        (renamed / split / classes[0]).rename(renamed / split / "zebra")
    with pytest.raises(TrainingError, match=r"the data's classes are .*zebra.*, the run was started on "
                       rf"{classes[0]}, .*resume with the data the run was started with"):
        train(_config(tiny_config, renamed, run, resume="latest", max_steps=2))
    (checkpoint,) = sorted((run / "checkpoints").glob("step_*.pt"))
    config = TrainConfig(data=str(photos), model=str(checkpoint), output=str(tmp_path / "tuned"))
    tuned, described = build_model(config, classes[1:])
    assert "new classifier" not in described and tuned.config.id2label == dict(enumerate(classes[1:]))
    state = torch.load(checkpoint, weights_only=True)["model"]
    torch.testing.assert_close(tuned.classifier.weight, state["classifier.weight"][1:], rtol=0, atol=0)
    with pytest.raises(TrainingError, match=r"knows .*the data's classes are .*zebra.*--new-head"):
        build_model(config, ["zebra", *classes[1:]])


def test_data_layouts_that_would_mislead_are_refused(photos, tmp_path):
    """A val/ split beside class folders (it would become a class, and pre-training would see it), and a
    split that leaves nothing for validation."""
    import shutil

    from swinv2.data import DataError, DataSpec, MaskGenerator, build_classification_data, build_pretraining_data

    mixed = tmp_path / "mixed"
    for name in ("cat", "coffee"):
        shutil.copytree(photos / "train" / name, mixed / name)
        shutil.copytree(photos / "val" / name, mixed / "val" / name)
    spec = DataSpec(str(mixed), (32, 32))
    with pytest.raises(DataError, match=r"split folder\(s\) val/ beside class folders"):
        build_classification_data(spec, lambda image: image)
    with pytest.raises(DataError, match=r"a val/ split but no train/: pre-training would see"):
        build_pretraining_data(spec, lambda image: image, MaskGenerator((32, 32), 8, 4, 0.5))
    single = tmp_path / "single"
    for name in ("cat", "coffee"):
        (single / name).mkdir(parents=True)
        shutil.copy(sorted((photos / "train" / name).iterdir())[0], single / name / "0.png")
    with pytest.raises(DataError, match=r"no image of .*single is left for validation"):
        build_classification_data(DataSpec(str(single), (32, 32)), lambda image: image)


def test_resume_with_another_number_of_processes_is_refused(tiny_config, photos, tmp_path):
    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, new_head=True))
    path, state = latest_checkpoint(run)
    assert state["world_size"] == 1
    state["world_size"] = 2  # as torchrun --nproc-per-node 2 would have written it
    torch.save(state, path)
    with pytest.raises(TrainingError, match=r"made by 2 process\(es\) and this run has 1.*torchrun --nproc-per-node 2"):
        train(_config(tiny_config, photos, run, resume="latest", max_steps=3))


def test_resume_without_a_run_says_so(tmp_path):
    with pytest.raises(TrainingError, match=r"--resume: .*nothing holds no run to continue.*check --output"):
        TrainConfig(data="", model="m", output=str(tmp_path / "nothing"), resume="latest").validate()
    with pytest.raises(TrainingError, match=r"--resume .*step.pt: pass --data too"):
        TrainConfig(data="", model="m", output=str(tmp_path / "new"), resume=str(tmp_path / "step.pt")).validate()
    with pytest.raises(TrainingError, match=r"no data given: pass --data DIR"):
        TrainConfig(data="", model="m", output=str(tmp_path / "new")).validate()


def test_images_in_hidden_folders_are_not_data(photos, tmp_path):
    import shutil

    from swinv2.data import scan_class_folders, scan_images

    root = tmp_path / "data"
    shutil.copytree(photos / "train", root)
    copy = root / "cat" / ".ipynb_checkpoints"
    copy.mkdir()
    shutil.copy(next((root / "cat").glob("*.png")), copy / "x-checkpoint.png")
    files, _, _ = scan_class_folders(root)
    assert files == sorted(p for p in root.rglob("*.png") if ".ipynb_checkpoints" not in p.parts)
    assert ".ipynb_checkpoints" not in {part for f in scan_images(root) for part in f.parts}


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("pretrain", "--mixup", "0.8"), ("pretrain", "--new-head", None),
    ("train", "--mask-ratio", "0.5"), ("train", "--norm-targets", None),
])
def test_each_command_offers_only_its_tasks_flags(command, flag, value, capsys):
    """pretrain has no classification flags and train no SimMIM flags: they would be accepted and ignored."""
    from swinv2 import cli

    with pytest.raises(SystemExit) as info:
        cli.main([command, flag, *([value] if value else [])])
    assert info.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err
    help_text = cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
    assert flag not in help_text


def test_resuming_a_longer_run_says_the_schedule_changes(tiny_config, photos, tmp_path, caplog):
    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, new_head=True, max_steps=1))
    with caplog.at_level(logging.WARNING, logger="swinv2"):
        result = train(_config(tiny_config, photos, run, resume="latest", max_steps=2))
    assert result.steps == 2
    assert "the run's length changed (epochs 10, max_steps 1 there; 10, 2 now)" in caplog.text


@pytest.mark.parametrize(("flags", "message"), [
    (["--clip-grad", "-1"], r"clip_grad is a gradient norm and must be >= 0 \(0: off\), got -1.0"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--weight-decay", "inf"], "weight_decay must be a finite number, got inf"),
    (["--drop-path-rate", "1.5"], r"drop_path_rate must be in \[0, 1\), got 1.5"),
    (["--num-workers", "-1"], r"num_workers must be >= 0 \(0: load in this process\), got -1"),
    (["--randaugment", "100"], r"randaugment is a magnitude in \[0, 30\] \(0: off\), got 100"),
    (["--randaugment", "-2"], r"randaugment is a magnitude in \[0, 30\] \(0: off\), got -2"),
    (["--image-mean", "nan", "0", "0"], r"image_mean must be a finite number, got \[nan, 0.0, 0.0\]"),
    (["--image-std", "0", "1", "1"], r"image_std must be > 0 for every channel"),
    (["--image-std", "1e-50", "1", "1"], r"image_std must be at least 1e-6"),  # 0 or inf in fp32
    (["--image-mean", "1e300", "0", "0"], r"image_mean must lie within \+-1e6"),
])
def test_out_of_range_training_flags_are_argument_errors(tiny_config, photos, tmp_path, capsys, flags, message):
    """Each is refused before any work, in one line with status 2 (not a traceback from torch, nor a run)."""
    from swinv2 import cli

    run = tmp_path / "run"
    status = cli.main(["train", "--data", str(photos), "--model", str(tiny_config), "--output", str(run),
                       "--max-steps", "1", "--batch-size", "6", "--num-workers", "0", "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not run.exists()


def test_clip_grad_zero_turns_clipping_off(monkeypatch):
    """--clip-grad 0 reaches the run as 0 (off), not as "not given", which was the default of 5."""
    from swinv2 import cli
    from swinv2 import training as training_module

    seen = []

    def fake_train(config):
        seen.append(config)
        raise TrainingError("stop")

    monkeypatch.setattr(training_module, "train", fake_train)
    assert cli.main(["train", "--data", "d", "--model", "m", "--output", "o", "--clip-grad", "0"]) == 2
    assert seen[0].clip_grad == 0


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_a_diverging_run_stops_before_saving_nan_weights(tiny_config, photos, tmp_path, amp):
    """An lr of 1e9 turns the weights into NaN (fp32) or into weights that give NaN, whose fp16 steps the loss
    scaler skips: the run stops with the step and the fixes, and writes no checkpoint and no model."""
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"training diverged (at|by) step \d+: .*stopped without saving the "
                                            r"weights.*a lower --lr \(this run's is 1e\+09\),? (or )?--clip-grad 1"):
        train(_config(tiny_config, photos, run, lr=1e9, epochs=1, max_steps=None, amp=amp))
    assert not (run / "best").exists() and not (run / "last").exists() and not list(run.glob("checkpoints/*"))
    if (run / "metrics.jsonl").exists():  # strict JSON: no bare NaN or Infinity
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in metrics.jsonl"))


def test_an_update_that_overflows_the_weights_stops_the_run(tiny_config, photos, tmp_path):
    """Finite gradients times an lr of 3e38 overflow the weights in one step: the run stops before writing
    them, though no gradient was ever non-finite."""
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="an update made the weights NaN or infinite"):
        train(_config(tiny_config, photos, run, lr=3e38, max_steps=1, warmup_steps=0))
    assert not (run / "last").exists() and not list(run.glob("checkpoints/*"))


def test_json_files_write_nan_and_infinity_as_null():
    from swinv2.training import json_text

    text = json_text({"loss": float("nan"), "lr": [float("inf"), 1.0], "n": 2})
    assert text == '{"loss": null, "lr": [null, 1.0], "n": 2}'


def test_evaluate_refuses_a_model_that_gives_nan(photos, tmp_path, capsys):
    from swinv2 import cli

    folder = _saved_classifier(tmp_path / "model")
    model = Swinv2ForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    assert cli.main(["evaluate", str(folder), "--data", str(photos / "val"), "--num-workers", "0", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "gives NaN or infinite outputs: its weights hold NaN or infinite values" in captured.err


def test_labels_in_other_scripts_are_matched_by_their_own_letters(photos, tmp_path):
    """"犬" and "猫" once both spelled "" and were paired; case still does not matter, in any script."""
    import shutil

    from swinv2.training import evaluate, match_labels

    assert match_labels(["猫", "sneaker", "trouser"], ["犬", "sneaker"]) is None
    assert match_labels(["Straße", "Кот", "?"], ["кот", "STRASSE", "!"]) is None  # "!" and "?" spell nothing
    assert match_labels(["Straße", "Кот"], ["кот", "STRASSE"]) == [1, 0]
    assert match_labels(["काल", "x"], ["किल"]) is None  # the vowel sign is a mark, not punctuation
    assert match_labels(["Cafe", "Caf\u00e9"], ["Cafe\u0301"]) == [1]  # NFD, as macOS writes folder names
    model = _saved_classifier(tmp_path / "model")
    _relabel(model, ["猫", "coffee", "rocket"])
    data = tmp_path / "data"
    for folder, name in (("犬", "cat"), ("coffee", "coffee")):
        shutil.copytree(photos / "val" / name, data / folder)
    with pytest.raises(TrainingError, match=r"the data's classes 犬 are not labels of"):
        evaluate(str(model), str(data), num_workers=0, progress=False)


def test_a_data_error_in_a_dataloader_worker_is_one_line(tiny_config, tmp_path, capsys):
    """torch re-raises a worker's error with the worker's whole traceback in its message: only ours is shown."""
    import io

    import PIL.Image
    import skimage.data

    from swinv2 import cli

    png = io.BytesIO()
    PIL.Image.fromarray(skimage.data.chelsea()).save(png, "PNG")
    for split, name, i in itertools.product(("train", "val"), ("a", "b"), range(4)):
        (tmp_path / "data" / split / name).mkdir(parents=True, exist_ok=True)
        # (truncated: its header opens, so the classes pass the scan and the worker meets the error)
        (tmp_path / "data" / split / name / f"{i}.png").write_bytes(png.getvalue()[:200])
    status = cli.main(["train", "--data", str(tmp_path / "data"), "--model", str(tiny_config), "--output",
                       str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4", "--num-workers", "2",
                       "--no-progress", "--no-tensorboard"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and "DataLoader worker" not in err, err
    # (the first class whose images all fail is named; it used to be "no image of the dataset could be read")
    assert re.fullmatch(r"swinv2 train: error: none of the 4 image\(s\) of the class in \S+/train/[ab] can be read "
                        r"\(the last: .*\); replace them, or remove the class folder", err.splitlines()[-1]), err


def test_a_class_of_unreadable_files_is_refused_before_training(photos, tiny_config, tmp_path, capsys):
    """A class folder whose only files are no images is named when the data is read, not when (if ever) the
    sampler draws it: with drop_last it may never, and a class without examples would train silently."""
    import shutil

    from swinv2 import cli

    data = tmp_path / "data"
    for split in ("train", "val"):
        shutil.copytree(photos / "val" / "cat", data / split / "a")
        (data / split / "b").mkdir()
    (data / "train" / "b" / "x.png").write_text("a text file, named like a PNG")
    shutil.copy(next((photos / "val" / "coffee").iterdir()), data / "val" / "b" / "y.png")
    status = cli.main(["train", "--data", str(data), "--model", str(tiny_config), "--output", str(tmp_path / "run"),
                       "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--no-progress",
                       "--no-tensorboard"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert re.fullmatch(r"swinv2 train: error: none of the 1 image\(s\) of the class in \S+/train/b can be read "
                        r"\(the last: .*x\.png.*\); replace them, or remove the class folder", err.splitlines()[-1])
    assert not (tmp_path / "run" / "best").exists()


def test_evaluate_with_workers_reports_each_unreadable_image_once(photos, tmp_path):
    """tqdm.auto iterated the DataLoader twice, so its workers started twice and each said so again."""
    import os
    import shutil
    import subprocess
    import sys

    import swinv2

    model = _saved_classifier(tmp_path / "model")
    data = tmp_path / "data"
    shutil.copytree(photos / "val", data)
    (data / "cat" / "broken.png").write_text("not a PNG")
    src = os.path.dirname(os.path.dirname(swinv2.__file__))
    proc = subprocess.run([sys.executable, "-m", "swinv2", "evaluate", str(model), "--data", str(data),
                           "--num-workers", "1", "--batch-size", "4"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipping an unreadable image") == 1, proc.stderr


def test_resuming_another_run_into_a_new_output_takes_that_runs_settings(tiny_config, photos, tmp_path, capsys):
    """`--output NEW --resume RUN`: the flags not given are RUN's (its batch size, lr, data), as when resuming
    in place; before, the built-in defaults were compared with them and the resume refused."""
    import shutil

    from swinv2 import cli

    run = tmp_path / "run"
    train(_config(tiny_config, photos, run, new_head=True, max_steps=2, lr=1e-3))
    new = tmp_path / "new"
    for resume in (run, sorted((run / "checkpoints").glob("*.pt"))[-1]):
        status = cli.main(["train", "--output", str(new), "--resume", str(resume), "--max-steps", "3",
                           "--no-progress", "--keep-checkpoints", "1"])
        captured = capsys.readouterr()
        assert status == 0, captured.err
        assert "done: 3 steps" in captured.out
        saved = json.loads((new / "train_config.json").read_text())
        assert (saved["batch_size"], saved["lr"], saved["output"]) == (6, 1e-3, str(new))
        assert not list((run / "checkpoints").glob("step_00000003.pt"))  # RUN itself is left as it was
        history, records = read_metrics(run), read_metrics(new)  # NEW's plots start at RUN's step 1, not at 3
        assert history and records[: len(history)] == history and records[-1]["step"] == 3
        shutil.rmtree(new)
    other = tmp_path / "other"  # a folder that holds a run of its own is never written over
    train(_config(tiny_config, photos, other, new_head=True, max_steps=1, lr=1e-3))
    before = sorted(p.name for p in (other / "checkpoints").iterdir())
    assert cli.main(["train", "--output", str(other), "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == before


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_config, photos, tmp_path):
    """Two runs with one --output used to both train, interleaving their metrics (steps 10, 15, 20, 10, ...) and
    overwriting each other's checkpoints. The folder is locked while a run writes; the lock ends with the run."""
    from swinv2.training import _run_lock

    run = tmp_path / "run"
    run.mkdir()
    with _run_lock(run):  # another process's run, as far as flock is concerned (a second open file)
        with pytest.raises(TrainingError, match=rf"in use by another training run \(process {os.getpid()}\)"):
            train(_config(tiny_config, photos, run, new_head=True))
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert train(_config(tiny_config, photos, run, new_head=True)).steps == 2  # free again


def test_pretraining_sets_the_decoders_stride_from_the_model(tmp_path):
    """A config.json without encoder_stride gets transformers' default 32, which only four stages of patch 4
    give; pre-training such a two-stage model used to stop asking for "encoder_stride": 8."""
    from swinv2.training import build_model

    path = tmp_path / "two_stages.json"
    Swinv2Config(image_size=32, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4).to_json_file(path)
    model, _ = build_model(TrainConfig(data="d", model=str(path), output="o", task="simmim"), None)
    assert model.config.encoder_stride == 8
    x, mask = torch.randn(2, 3, 32, 32), torch.rand(2, 64) < 0.5
    assert model(x, bool_masked_pos=mask).reconstruction.shape == x.shape


def test_a_config_file_for_the_other_command_is_refused(tmp_path, capsys):
    """`swinv2 pretrain --config run.yaml` with `task: classification` trained a classifier: the command
    says the task, and a file that says the other one is named with the fix."""
    from swinv2 import cli

    path = tmp_path / "run.yaml"
    path.write_text("task: classification\n")
    output = tmp_path / "run"
    assert cli.main(["pretrain", "--config", str(path), "--data", "d", "--model", "m", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "sets task: classification, which is `swinv2 train`'s, not this command's (simmim)" in err
    assert not output.exists()


def test_a_new_one_channel_model_normalises_with_imagenets_average(photos, tmp_path, monkeypatch):
    """A config.json of 1 channel and no --image-mean/--image-std: ImageNet's values averaged over the channels
    (as the image processor takes them for such a model), not a refusal of its 3 values; the export records them.
    Its warning (no transformers processor takes 1-channel images) is said once, not at every export."""
    import swinv2.training as training

    monkeypatch.setattr(training, "_EXPORT_WARNINGS_SAID", set())
    config_path = tmp_path / "gray.json"
    Swinv2Config(**{**TINY_MODEL, "num_channels": 1}).to_json_file(config_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = train(_config(config_path, photos, tmp_path / "run", new_head=True, max_steps=6))
    assert result.steps == 6
    said = [w for w in caught if "no transformers image processor applies images of 1 channel" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    saved = json.loads((tmp_path / "run" / "last" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx([0.449]) and saved["image_std"] == pytest.approx([0.226])


def test_adamw_settings_are_flags_and_the_other_commands_file_settings_are_named(tiny_config, photos, tmp_path,
                                                                              capsys):
    """--betas and --eps were file-only settings; a shared config file's SimMIM settings, which `swinv2 train`
    ignores, are said in a warning (not refused: one file may serve both commands)."""
    from swinv2 import cli

    settings = tmp_path / "shared.yaml"
    settings.write_text("mask_ratio: 0.5\nnorm_targets: true\n")
    run = tmp_path / "run"
    argv = ["train", "--config", str(settings), "--data", str(photos), "--model", str(tiny_config), "--output",
            str(run), "--max-steps", "1", "--batch-size", "6", "--num-workers", "0", "--betas", "0.8", "0.99",
            "--eps", "1e-6", "--new-head"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "swinv2 train: warning: " in err
    assert "sets mask_ratio, norm_targets, which only `swinv2 pretrain` uses: ignored here" in err
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["betas"] == [0.8, 0.99] and saved["eps"] == 1e-6
