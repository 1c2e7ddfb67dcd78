"""The image processor against transformers' processors on real photos, its files, and image loading."""

from __future__ import annotations

import json
import warnings

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers
from sklearn.datasets import load_sample_images

from swinv2 import AutoImageProcessor, Swinv2Config, Swinv2ForImageClassification, Swinv2ImageProcessor
from swinv2.processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PREPROCESSOR_CONFIG_NAME,
    BatchFeature,
    ImageLoadError,
    imagenet_id2label,
    load_image,
    resolve_id2label,
)

TOL = 1e-5  # the bound; with the same Pillow resize the outputs agree far below it


@pytest.fixture(scope="module")
def photos() -> list[PIL.Image.Image]:
    """Real photographs that ship inside scikit-image and scikit-learn (no download), of different sizes."""
    arrays = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), *load_sample_images().images]
    return [PIL.Image.fromarray(a) for a in arrays]


def hf_vit(**kwargs) -> transformers.ViTImageProcessor:
    settings = dict(
        size={"height": 256, "width": 256},
        resample=3,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    return transformers.ViTImageProcessor(**{**settings, **kwargs})


def max_diff(a, b) -> float:
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


# ---------------------------------------------------------------------------------------------- parity
def test_defaults_are_the_swinv2_checkpoints_processor(photos):
    ours = Swinv2ImageProcessor()
    out = ours(photos)
    assert isinstance(out, BatchFeature)
    assert out.pixel_values.shape == (len(photos), 3, 256, 256)
    assert out.pixel_values.dtype == torch.float32
    assert max_diff(out.pixel_values, hf_vit()(photos, return_tensors="pt").pixel_values) <= TOL


@pytest.mark.parametrize("size", [{"height": 64, "width": 48}, 37, (40, 72)])
@pytest.mark.parametrize("resample", [2, 3])
def test_matches_vit_processor_on_photos(photos, size, resample):
    ours = Swinv2ImageProcessor(size=size, resample=resample)
    ref = hf_vit(size=size, resample=resample)(photos, return_tensors="pt").pixel_values
    got = ours(photos, return_tensors="pt").pixel_values
    assert got.shape == ref.shape
    assert max_diff(got, ref) <= TOL


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_other_modes_are_converted_as_transformers_converts_them(photos, mode):
    images = [p.convert(mode) for p in photos]
    ref = hf_vit(size=64, do_convert_rgb=True)(images, return_tensors="pt").pixel_values
    got = Swinv2ImageProcessor(size=64)(images).pixel_values
    assert got.shape == (len(photos), 3, 64, 64)
    assert max_diff(got, ref) <= TOL
    if mode in ("L", "LA"):  # grayscale is replicated into three equal channels (before normalisation)
        mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        raw = got * std[:, None, None] + mean[:, None, None]
        assert max_diff(raw[:, 0], raw[:, 1]) < 1e-5 and max_diff(raw[:, 0], raw[:, 2]) < 1e-5


def test_sixteen_bit_files_are_scaled_to_eight_bits(tmp_path, photos):
    gray = np.asarray(photos[1].convert("L"))
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit PNG
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "L" and np.array_equal(np.asarray(image), gray)


@pytest.mark.parametrize("channels", [1, 3])
def test_wide_pil_images_given_to_the_processor_are_scaled_as_files_are(photos, channels):
    """16-bit, 32-bit integer and float PIL images handed to the processor itself (not through `load_image`)
    give the pixel values of their 8-bit image; Pillow's own conversion would clip them to white."""
    gray = np.array(photos[1].convert("L"))
    gray[0, 0] = 255  # the 32-bit integer image is scaled by its maximum
    half = [0.5] * channels
    processor = Swinv2ImageProcessor(size=32, num_channels=channels, image_mean=half, image_std=half)
    expected = processor(PIL.Image.fromarray(gray)).pixel_values
    wide = {
        "I;16": PIL.Image.fromarray(gray.astype(np.uint16) * 257),
        "I": PIL.Image.fromarray(gray.astype(np.int32) * 1000),
        "F": PIL.Image.fromarray(gray.astype(np.float32) / 255, mode="F"),
    }
    for mode, image in wide.items():
        assert image.mode.startswith(mode)
        assert max_diff(processor(image).pixel_values, expected) <= 2 / 255 / 0.5, mode  # a level at most


@pytest.mark.parametrize("scale", [1 / 255, 1.0, 4.0], ids=["fractions", "levels", "larger"])
def test_float_tiffs_are_scaled_to_eight_bits(tmp_path, photos, scale):
    """A 32-bit float TIFF (mode F) of fractions in [0, 1], of 8-bit levels, or of larger values by their max."""
    gray = np.asarray(photos[1].convert("L"))
    PIL.Image.fromarray(gray.astype(np.float32) * np.float32(scale), mode="F").save(tmp_path / "float.tif")
    image = load_image(tmp_path / "float.tif")
    expected = gray if scale <= 1 else np.round(gray * (255 / gray.max())).astype(np.uint8)
    assert image.mode == "L" and np.abs(np.asarray(image).astype(int) - expected).max() <= 1


def test_rgba_alpha_is_dropped_not_composited(photos):
    rgba = photos[0].convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colours must survive, as with PIL's convert("RGB")
    got = Swinv2ImageProcessor(size=32)([rgba]).pixel_values
    assert max_diff(got, Swinv2ImageProcessor(size=32)([photos[0]]).pixel_values) == 0


def test_one_channel_model_gets_luma(photos):
    ours = Swinv2ImageProcessor(size={"height": 48, "width": 40}, image_mean=[0.449], image_std=[0.226])
    assert ours.channels == 1
    gray = [np.asarray(p.convert("L"))[..., None] for p in photos]
    ref = transformers.ViTImageProcessor(
        size={"height": 48, "width": 40}, resample=3, image_mean=[0.449], image_std=[0.226]
    )(gray, return_tensors="pt", input_data_format="channels_last").pixel_values
    got = ours(photos).pixel_values  # RGB photos in, one luma channel out
    assert got.shape == (len(photos), 1, 48, 40)
    assert max_diff(got, ref) <= TOL


def test_numpy_float_and_tensor_inputs(photos):
    ours = Swinv2ImageProcessor(size=64)
    hf = hf_vit(size=64)
    arrays = [np.asarray(p) for p in photos]
    ref = hf(photos, return_tensors="pt").pixel_values
    assert max_diff(ours(arrays).pixel_values, ref) <= TOL  # HWC uint8
    assert max_diff(ours([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays]).pixel_values, ref) <= TOL
    floats = [a.astype(np.float32) / 255 for a in arrays]  # floats in [0, 1], as transformers takes them
    ref_f = hf(floats, do_rescale=False, return_tensors="pt").pixel_values
    assert max_diff(ours(floats, do_rescale=False).pixel_values, ref_f) <= TOL
    ref_255 = hf([a.astype(np.float64) for a in arrays], return_tensors="pt").pixel_values  # whole-valued floats
    assert max_diff(ours([a.astype(np.float64) for a in arrays]).pixel_values, ref_255) <= TOL


def test_floats_that_look_rescaled_warn_as_transformers_does(photos):
    """Floats in [0, 1] with do_rescale=True are rescaled again (as transformers does, which warns): a warning
    names the fix; 8-bit values, whole-valued floats and do_rescale=False give none."""
    array = np.asarray(photos[0])
    for images in (array.astype(np.float32) / 255, torch.from_numpy(array).permute(2, 0, 1).float() / 255):
        with pytest.warns(UserWarning, match=r"floats in \[0, 1\].* pass do_rescale=False"):
            Swinv2ImageProcessor(size=32)(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Swinv2ImageProcessor(size=32)([array, array.astype(np.float64), photos[1]])
        Swinv2ImageProcessor(size=32, do_rescale=False)(array.astype(np.float32) / 255)


@pytest.mark.parametrize(
    "mean, std",
    [(np.float32(0.5), np.float32(0.25)), (np.array(0.4), np.float64(0.3)),
     (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225]))],
    ids=["float32-scalars", "0-d-array", "arrays"],
)
def test_numpy_scalars_and_arrays_as_mean_and_std(photos, mean, std):
    """transformers takes numpy scalars and arrays for image_mean / image_std: so do we (and a 0-d array, which
    transformers fails on, as its number)."""
    settings = dict(size={"height": 32, "width": 32}, resample=3, image_mean=mean, image_std=std)
    theirs = {k: v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v for k, v in settings.items()}
    ref = transformers.ViTImageProcessor(**theirs)(photos[:2], return_tensors="pt").pixel_values
    assert max_diff(Swinv2ImageProcessor(**settings)(photos[:2]).pixel_values, ref) <= TOL


def test_float_images_from_img_as_float_round_as_transformers(photos):
    """skimage's img_as_float gives k * (1 / 255) in float64; times 255 that can fall just below k, and transformers
    rounds it to float32 (back to k) before truncating to 8 bits for the resize: so do we."""
    import skimage.util

    ours, hf = Swinv2ImageProcessor(size=64, do_rescale=False), hf_vit(size=64, do_rescale=False)
    floats = [skimage.util.img_as_float(np.asarray(p)) for p in photos]
    levels = skimage.util.img_as_float(np.arange(256, dtype=np.uint8))
    assert np.any((levels * 255).astype(np.uint8) != np.arange(256))  # the case: float64 truncation loses a level
    assert max_diff(ours(floats).pixel_values, hf(floats, return_tensors="pt").pixel_values) <= TOL


def test_unknown_settings_for_one_call_are_refused(photos):
    with pytest.raises(TypeError, match=r"unknown image processor setting\(s\) do_normalise; the settings are"):
        Swinv2ImageProcessor()(photos[0], do_normalise=False)


def test_float_arrays_with_alpha_or_one_channel(photos):
    rgb = [np.asarray(p).astype(np.float32) / 255 for p in photos[:3]]
    rgba = [np.concatenate([a, np.full((*a.shape[:2], 1), 0.5, np.float32)], -1) for a in rgb]
    gray = [a[..., 1] for a in rgb]  # (H, W) floats
    ours, hf = Swinv2ImageProcessor(size=40), hf_vit(size=40)
    ref = hf(rgb, do_rescale=False, return_tensors="pt").pixel_values
    assert max_diff(ours(rgba, do_rescale=False).pixel_values, ref) <= TOL  # alpha dropped
    ref_gray = hf([np.repeat(g[..., None], 3, -1) for g in gray], do_rescale=False, return_tensors="pt").pixel_values
    assert max_diff(ours(gray, do_rescale=False).pixel_values, ref_gray) <= TOL  # replicated
    unresized = Swinv2ImageProcessor(do_resize=False, do_normalize=False, do_rescale=False)(rgba[0]).pixel_values
    assert torch.equal(unresized[0], torch.from_numpy(rgb[0]).permute(2, 0, 1))  # floats kept exactly
    half = torch.from_numpy(rgb[0]).permute(2, 0, 1).to(torch.bfloat16)  # (C, H, W) bfloat16 tensor
    got = ours(half, do_rescale=False).pixel_values
    ref_half = hf([half.float().permute(1, 2, 0).numpy()], do_rescale=False, return_tensors="pt").pixel_values
    assert max_diff(got, ref_half) <= TOL


def test_single_image_and_batched_tensor(photos):
    crops = [np.asarray(p)[:300, :300] for p in photos]  # one size, so they stack into a batch
    ours = Swinv2ImageProcessor(size=32)
    ref = hf_vit(size=32)(crops, return_tensors="pt").pixel_values
    assert max_diff(ours(np.stack(crops)).pixel_values, ref) <= TOL  # (N, H, W, C) array
    assert max_diff(ours(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)).pixel_values, ref) <= TOL
    single = ours(photos[2]).pixel_values
    assert single.shape == (1, 3, 32, 32)
    assert max_diff(single, hf_vit(size=32)(photos[2], return_tensors="pt").pixel_values) <= TOL


@pytest.mark.parametrize(
    "shape, warns",
    [((3, 11, 4), False), ((3, 9, 2), False), ((1, 7, 5), False), ((3, 6, 3), True), ((4, 10, 3), False),
     ((10, 4, 3), False)],
    ids=["chw-narrow", "chw-two-wide", "chw-gray", "both-could-be", "hwc-four-rows", "hwc"],
)
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_channel_layout_of_arrays_is_transformers(shape, warns, kind):
    """A 3-D array is read as transformers reads it: a first dimension of 1 or 3 is channels, checked before
    the last (a channels-first image 1-4 pixels wide was taken for an RGBA one); a tensor likewise."""
    rng = np.random.default_rng()
    image = rng.integers(0, 256, shape).astype(np.uint8) if kind == "uint8" else rng.random(shape)
    settings = dict(size={"height": 8, "width": 8}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if shape[0] == 1:  # transformers keeps one channel; ours makes three of it, as from a grayscale photo
        settings.update(image_mean=0.5, image_std=0.5)
    for call in (dict(), dict(do_resize=False)):
        ref = transformers.ViTImageProcessor(**settings)(image, return_tensors="pt", **call).pixel_values
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = Swinv2ImageProcessor(**settings)(image, **call).pixel_values
            from_tensor = Swinv2ImageProcessor(**settings)(torch.from_numpy(image), **call).pixel_values
        assert any("channel dimension" in str(w.message) for w in caught) == warns
        assert got.shape[-2:] == ref.shape[-2:]
        assert max_diff(got, ref.expand_as(got)) <= TOL
        assert torch.equal(from_tensor, got)


@pytest.mark.parametrize("resize", [False, True])
def test_boolean_images_are_the_numbers_0_and_1(resize):
    """transformers takes a boolean image as the integers 0/1 (then rescaled to 0 and 1/255), not as white."""
    image = np.random.default_rng().random((12, 10, 3)) > 0.5
    settings = dict(do_resize=resize, size={"height": 8, "width": 8}, resample=2, image_mean=[0.5] * 3,
                    image_std=[0.5] * 3)
    ref = transformers.ViTImageProcessor(**settings)(image, return_tensors="pt").pixel_values
    assert max_diff(Swinv2ImageProcessor(**settings)(image).pixel_values, ref) <= TOL


def test_four_channel_arrays_stay_readable_at_either_end():
    """RGBA (and LA) arrays, which transformers does not read, where only one end can hold the channels."""
    rgba = np.random.default_rng().integers(0, 256, (10, 12, 4)).astype(np.uint8)
    processor = Swinv2ImageProcessor(size=8)
    expected = processor(PIL.Image.fromarray(rgba)).pixel_values
    assert torch.equal(processor(rgba).pixel_values, expected)
    assert torch.equal(processor(rgba.transpose(2, 0, 1)).pixel_values, expected)
    assert torch.equal(processor(torch.from_numpy(rgba).permute(2, 0, 1)).pixel_values, expected)


def test_shortest_edge_with_crop_pct_matches_convnext_processor(photos):
    ours = Swinv2ImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    ref = transformers.ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )(photos, return_tensors="pt").pixel_values
    got = ours(photos).pixel_values
    assert got.shape == (len(photos), 3, 224, 224)
    assert max_diff(got, ref) <= TOL


@pytest.mark.parametrize("short", [224, 384, 400])
def test_convnext_files_are_read_as_convnext_applies_them(tmp_path, short):
    """ConvNeXt's processor crops by crop_pct below 384 only; from 384 up it warps the image to N x N, though
    its file still holds crop_pct. Reading the file gives its pixels, and so does the file we write back."""
    image = PIL.Image.fromarray(np.random.default_rng().integers(0, 256, (300, 500, 3)).astype(np.uint8))
    theirs = transformers.ConvNextImageProcessor(size={"shortest_edge": short})
    theirs.save_pretrained(tmp_path / "convnext")
    ours = AutoImageProcessor.from_pretrained(tmp_path / "convnext")
    ref = theirs(image, return_tensors="pt").pixel_values
    assert ref.shape == (1, 3, short, short)
    assert max_diff(ours(image).pixel_values, ref) <= TOL
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours", use_fast=False)
    assert max_diff(again(image, return_tensors="pt").pixel_values, ref) <= TOL


@pytest.mark.parametrize("short", [224, 383, 384, 448])
def test_crop_pct_survives_its_own_save_at_every_size(tmp_path, photos, short):
    """A short-side resize cropped by crop_pct is written so that swinv2 and transformers read back its
    pixels: as ConvNeXt's below 384, as Bit's resize to int(N / crop_pct) and N x N crop from 384 up (where
    ConvNeXt's processor would warp instead)."""
    import warnings

    processor = Swinv2ImageProcessor(size={"shortest_edge": short}, crop_pct=0.875)
    expected = processor(photos).pixel_values
    assert expected.shape[-2:] == (short, short)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor.save_pretrained(tmp_path)
    assert max_diff(AutoImageProcessor.from_pretrained(tmp_path)(photos).pixel_values, expected) == 0
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert max_diff(theirs(photos, return_tensors="pt").pixel_values, expected) <= TOL


def test_shortest_edge_with_center_crop_matches_clip_processor(photos):
    settings = dict(size={"shortest_edge": 200}, crop_size={"height": 180, "width": 190}, do_center_crop=True)
    ref = transformers.CLIPImageProcessor(
        **settings, resample=3, image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)
    )(photos, return_tensors="pt").pixel_values
    got = Swinv2ImageProcessor(**settings)(photos).pixel_values
    assert got.shape == (len(photos), 3, 180, 190)
    assert max_diff(got, ref) <= TOL


def test_shortest_edge_alone_keeps_aspect_and_needs_a_list_for_mixed_sizes(photos):
    ours = Swinv2ImageProcessor(size={"shortest_edge": 50})
    with pytest.raises(ValueError, match="different sizes"):
        ours(photos[:2])  # 512x512 and 300x451 keep their aspect ratios: no common batch shape
    listed = ours(photos[:2], return_tensors=None).pixel_values
    assert [a.shape for a in listed] == [(3, 50, 50), (3, 50, 75)]


def test_no_resize_no_rescale_no_normalize_is_identity(photos):
    array = np.asarray(photos[1])
    out = Swinv2ImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)(array).pixel_values
    assert torch.equal(out[0], torch.from_numpy(array.copy()).permute(2, 0, 1).float())


def test_outputs_unpack_into_the_model(photos):
    model = Swinv2ForImageClassification(
        Swinv2Config(image_size=32, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)
    ).eval()
    inputs = Swinv2ImageProcessor(size=32)(photos[:2], return_tensors="pt")
    assert set(inputs) == {"pixel_values"} and inputs["pixel_values"] is inputs.pixel_values
    assert model(**inputs).logits.shape == (2, 3)
    assert inputs.to(dtype=torch.float64).pixel_values.dtype == torch.float64
    as_np = Swinv2ImageProcessor(size=32)(photos[:2], return_tensors="np").pixel_values
    assert isinstance(as_np, np.ndarray) and np.array_equal(as_np, inputs.pixel_values.numpy())


# ---------------------------------------------------------------------------------------------- files
def test_save_pretrained_writes_transformers_file_byte_for_byte(tmp_path, photos):
    Swinv2ImageProcessor().save_pretrained(tmp_path / "ours")
    hf_vit(size={"height": 256, "width": 256}).save_pretrained(tmp_path / "hf")
    ours_text = (tmp_path / "ours" / PREPROCESSOR_CONFIG_NAME).read_text()
    assert ours_text == (tmp_path / "hf" / PREPROCESSOR_CONFIG_NAME).read_text()
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert type(loaded).__name__ == "ViTImageProcessor"
    assert (
        max_diff(loaded(photos, return_tensors="pt").pixel_values, Swinv2ImageProcessor()(photos).pixel_values) <= TOL
    )


def test_reads_transformers_and_legacy_files(tmp_path, photos):
    hf = hf_vit(size={"height": 40, "width": 56}, resample=2, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4])
    hf.save_pretrained(tmp_path)
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 40, "width": 56} and ours.resample == 2
    assert max_diff(ours(photos).pixel_values, hf(photos, return_tensors="pt").pixel_values) <= TOL
    # The file published with microsoft/swinv2-tiny-patch4-window8-256 (old feature-extractor layout, int size).
    legacy = {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "size": 256,
    }
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(legacy))
    ours = Swinv2ImageProcessor.from_pretrained(tmp_path / PREPROCESSOR_CONFIG_NAME)
    ref = transformers.ViTImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 256, "width": 256} and ours.do_rescale
    assert max_diff(ours(photos).pixel_values, ref(photos, return_tensors="pt").pixel_values) <= TOL
    assert "feature_extractor_type" not in ours.to_dict()


@pytest.mark.parametrize(
    "partial",
    [
        {},
        {"size": {"height": 48, "width": 40}},
        {"resample": 3, "do_normalize": False},
        {"image_mean": [0.4, 0.5, 0.6]},
    ],
)
def test_keys_a_file_leaves_out_take_the_vit_processors_defaults(tmp_path, photos, partial):
    """A hand-written preprocessor_config.json means to us what it means to transformers (224 px, bilinear,
    mean and std 0.5 where it says nothing), not our constructor's defaults."""
    partial = {"image_processor_type": "ViTImageProcessor", **partial}
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(partial))
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    ref = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    a, b = ours(photos[:2]).pixel_values, ref(photos[:2], return_tensors="pt").pixel_values
    assert a.shape == b.shape and max_diff(a, b) <= TOL


@pytest.mark.parametrize(
    "config",
    [
        {"image_processor_type": "BitImageProcessor"},
        {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256}},
        {"image_processor_type": "BitImageProcessor", "size": 256, "crop_size": 200},
        {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}, "do_center_crop": False},
        {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 160}, "crop_pct": 0.5},
        {"image_processor_type": "ConvNextImageProcessor"},
        {"image_processor_type": "ConvNextImageProcessor", "size": 384, "do_center_crop": True, "crop_size": 100},
        {"image_processor_type": "DeiTImageProcessor"},
        {"image_processor_type": "BeitImageProcessor", "size": {"height": 240, "width": 300}, "crop_size": None},
    ],
    ids=["bit-empty", "bit-short-side", "bit-int-size", "clip-no-crop", "clip-crop-pct", "convnext-empty",
         "convnext-crop-keys", "deit-empty", "beit-null-crop"],
)
def test_files_of_bit_clip_and_convnext_take_their_classes_defaults(tmp_path, photos, config):
    """A Bit, CLIP, ConvNeXt, DeiT or BEiT file that leaves keys out means that class's defaults (Bit and CLIP:
    short side 224, 224 crop, CLIP's mean and std, bicubic; ConvNeXt: 384, mean and std 0.5, bilinear; DeiT and
    BEiT: 256 x 256, 224 crop, bicubic, 0.5), not ViT's, and settings the class does not have (CLIP's
    crop_pct, ConvNeXt's crop_size) are not applied."""
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(config))
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    ref = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert type(ref).__name__ == config["image_processor_type"]
    for photo in photos[:2]:
        a, b = ours(photo).pixel_values, ref(photo, return_tensors="pt").pixel_values
        assert a.shape == b.shape and max_diff(a, b) <= TOL


@pytest.mark.parametrize(
    "config",
    [
        {"size": 64, "image_mean": None, "image_std": None},
        {"size": None},
        {"size": None, "crop_size": None, "do_center_crop": True},
        {"size": 192, "do_center_crop": True, "crop_size": 100},
        {"size": 48, "do_rescale": None, "do_normalize": None, "rescale_factor": None},
    ],
    ids=["null-mean-std", "null-size", "null-crop-size", "crop-keys", "null-flags"],
)
def test_null_values_and_crop_keys_in_a_vit_file_mean_what_they_mean_to_transformers(tmp_path, photos, config):
    """In a ViTImageProcessor file a null size, image_mean or image_std is ViT's default (224 x 224, 0.5), a null
    flag is off, and do_center_crop / crop_size are not ViT's settings: it keeps them but never crops."""
    config = {"image_processor_type": "ViTImageProcessor", **config}
    (tmp_path / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(config))
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    ref = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    a, b = ours(photos[:2]).pixel_values, ref(photos[:2], return_tensors="pt").pixel_values
    assert a.shape == b.shape and max_diff(a, b) <= TOL
    ours.save_pretrained(tmp_path / "again")  # and what we write back is read by transformers as we apply it
    again = transformers.AutoImageProcessor.from_pretrained(tmp_path / "again", use_fast=False)
    assert max_diff(again(photos[:2], return_tensors="pt").pixel_values, a) <= TOL


def test_a_null_resample_is_explained_where_transformers_refuses_it(tmp_path, photos):
    """transformers refuses to resize with a null resample (and to rescale with a null rescale_factor), and
    takes them where they are not used."""
    path = tmp_path / PREPROCESSOR_CONFIG_NAME
    for key, flag in (("resample", "do_resize"), ("rescale_factor", "do_rescale")):
        path.write_text(json.dumps({"image_processor_type": "ViTImageProcessor", "size": 64, key: None}))
        with pytest.raises(ValueError, match=f"sets {key} to null while {flag} is on; give {key} .* or set {flag}"):
            AutoImageProcessor.from_pretrained(tmp_path)
        path.write_text(json.dumps({"image_processor_type": "ViTImageProcessor", key: None, flag: False}))
        ours = AutoImageProcessor.from_pretrained(tmp_path)
        ref = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
        a, b = ours(photos[1]).pixel_values, ref(photos[1], return_tensors="pt").pixel_values
        assert a.shape == b.shape and max_diff(a, b) <= TOL


def test_center_crop_without_crop_size_crops_224_as_transformers(tmp_path, photos):
    """do_center_crop=True with no crop_size crops 224 x 224, as Bit and CLIP do; it cropped nothing, while the
    BitImageProcessor file it wrote was applied by transformers with that crop."""
    ours = Swinv2ImageProcessor(size={"shortest_edge": 240}, do_center_crop=True)
    expected = transformers.BitImageProcessor(
        size={"shortest_edge": 240}, resample=3, image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )(photos, return_tensors="pt").pixel_values
    got = ours(photos).pixel_values
    assert got.shape == (len(photos), 3, 224, 224) and max_diff(got, expected) <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.save_pretrained(tmp_path)
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert max_diff(theirs(photos, return_tensors="pt").pixel_values, got) <= TOL
    assert max_diff(AutoImageProcessor.from_pretrained(tmp_path)(photos).pixel_values, got) <= TOL


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_bit_files_we_write_convert_images_in_transformers_too(tmp_path, photos, mode):
    """We convert every image to RGB: the BitImageProcessor file says do_convert_rgb true (a null turns
    transformers' conversion off, and it then fails on grayscale, RGBA and palette images)."""
    ours = Swinv2ImageProcessor(size={"shortest_edge": 100}, do_center_crop=True, crop_size=96)
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert type(theirs).__name__ == "BitImageProcessor"
    images = [p.convert(mode) for p in photos[:3]]
    assert max_diff(theirs(images, return_tensors="pt").pixel_values, ours(images).pixel_values) <= TOL


def test_unknown_keys_survive_a_round_trip(tmp_path):
    Swinv2ImageProcessor(size=64, crop_pct=0.9, size_divisor=7).save_pretrained(tmp_path)
    data = json.loads((tmp_path / PREPROCESSOR_CONFIG_NAME).read_text())
    assert data["size_divisor"] == 7 and data["crop_pct"] == 0.9
    again = Swinv2ImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == data


def test_falls_back_to_the_model_config(tmp_path, photos):
    config = Swinv2Config(image_size=48, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    Swinv2ForImageClassification(config).save_pretrained(tmp_path)
    assert not (tmp_path / PREPROCESSOR_CONFIG_NAME).exists()
    for source in (tmp_path, tmp_path / "model.safetensors", tmp_path / "config.json"):
        processor = AutoImageProcessor.from_pretrained(source)
        assert processor.size == {"height": 48, "width": 48} and processor.resample == 3
        assert processor.image_mean == list(IMAGENET_DEFAULT_MEAN)
        assert (
            max_diff(processor(photos).pixel_values, hf_vit(size=48)(photos, return_tensors="pt").pixel_values) <= TOL
        )
    gray = Swinv2ImageProcessor.from_model_config(Swinv2Config(image_size=32, num_channels=1, window_size=4))
    assert gray.channels == 1 and gray(photos[0]).pixel_values.shape == (1, 1, 32, 32)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"no preprocessor_config\.json for .*no model config"):
        AutoImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        AutoImageProcessor.from_pretrained(tmp_path / "missing" / "folder")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size={"height": 32}), "keys 'height' and 'width'"),
        (dict(size=0), "positive int"),
        (dict(resample="fancy"), "resample must be one of"),
        (dict(image_mean=[0.5, 0.5], num_channels=3), "image_mean has 2 values but the images have 3 channels"),
        (dict(image_std=[0.0, 1.0, 1.0]), "must not contain 0"),
        (dict(crop_pct=1.5), r"crop_pct must be in \(0, 1\]"),
        # as a hand-edited preprocessor_config.json may hold them: the message names the setting
        (dict(rescale_factor="a"), "rescale_factor must be a number, got 'a'"),
        (dict(crop_pct="a"), "crop_pct must be a number, got 'a'"),
        (dict(num_channels="three"), "num_channels must be a number, got 'three'"),
        (dict(num_channels=2.5), "num_channels must be a whole number, got 2.5"),
    ],
)
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Swinv2ImageProcessor(**kwargs)


def test_bad_images_are_explained():
    ours = Swinv2ImageProcessor(size=16)
    with pytest.raises(TypeError, match="PIL image, a numpy array"):
        ours("photo.jpg")
    with pytest.raises(ValueError, match="no images"):
        ours([])
    with pytest.raises(ValueError, match="got shape"):
        ours(np.zeros((4, 5, 6, 7, 8), dtype=np.uint8)[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ours(np.full((8, 8, 3), 3.5, dtype=np.float32))
    with pytest.raises(ValueError, match="return_tensors"):
        ours(np.zeros((8, 8, 3), dtype=np.uint8), return_tensors="tf")


@pytest.mark.parametrize("image", [np.zeros((0, 0, 3), np.float32), torch.zeros(3, 0, 0), np.zeros((0, 5, 3), np.uint8),
                                   torch.zeros(3, 4, 0)], ids=["float-array", "tensor", "uint8-array", "no-width"])
def test_an_empty_image_is_refused_with_its_shape(image):
    with pytest.raises(ValueError, match=r"an image is empty: \d+x\d+ pixels .*at least 1x1 pixel"):
        Swinv2ImageProcessor(size=16)(image)


# ---------------------------------------------------------------------------------------------- load_image
@pytest.fixture
def image_files(tmp_path, photos):
    good = tmp_path / "cat.jpg"
    photos[1].save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return tmp_path


def test_load_image_reads_a_photo(image_files, photos):
    image = load_image(image_files / "cat.jpg")
    assert image.size == photos[1].size and image.mode == "RGB"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("truncated.jpg", "truncated or corrupt"),
        ("corrupt.png", "truncated or corrupt|not an image"),
        ("empty.png", "empty file"),
        ("notes.txt", "not an image file"),
        ("missing.jpg", "no such file"),
        (".", "is a folder"),
    ],
)
def test_load_image_names_the_problem(image_files, name, message):
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(image_files / name)
    assert str(image_files / name).rstrip("/.") in str(info.value)


def test_load_image_keeps_the_decompression_bomb_limit(image_files, monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # the photo has 300*451 pixels > 2 * 1000
    with pytest.raises(ImageLoadError, match=r"too many pixels.*MAX_IMAGE_PIXELS"):
        load_image(image_files / "cat.jpg")


def test_load_image_applies_exif_rotation(tmp_path, photos):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photos[1].save(tmp_path / "rotated.jpg", exif=exif)
    width, height = photos[1].size
    assert load_image(tmp_path / "rotated.jpg").size == (height, width)


# ---------------------------------------------------------------------------------------------- class names
def test_imagenet_class_names():
    names = imagenet_id2label(1000)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[999].startswith("toilet tissue")
    # torchvision's independent list of ImageNet-1k names: its short name is one of our names, class by class.
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    agree = sum(
        short.lower() in [n.strip().lower() for n in ours.split(",")]
        for short, ours in zip(_IMAGENET_CATEGORIES, names.values())
    )
    assert agree >= 950, agree
    names22k = imagenet_id2label(21841)
    assert len(names22k) == 21841 and names22k[0] == "organism, being"
    assert len(set(names.values()) & set(names22k.values())) >= 990  # the 1k classes are a subset of 22k
    with pytest.raises(ValueError, match=r"1000 .* 21841"):
        imagenet_id2label(10)


def test_resolve_id2label():
    assert resolve_id2label(Swinv2Config(num_labels=1000))[1] == "imagenet-1k"
    id2label, source = resolve_id2label(Swinv2Config(num_labels=21841))
    assert source == "imagenet-22k" and id2label[1] == "benthos"
    named = Swinv2Config(id2label={i: f"class {i}" for i in range(1000)})
    assert resolve_id2label(named) == ({i: f"class {i}" for i in range(1000)}, "config")
    assert resolve_id2label(Swinv2Config(num_labels=10))[0][3] == "LABEL_3"


def test_timm_and_microsoft_checkpoints_without_preprocessor_config(tmp_path, photos):
    import timm
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf

    from swinv2.checkpoints import write_checkpoint

    model = timm.create_model(
        "swinv2_tiny_window8_256", embed_dim=16, depths=(1, 1), num_heads=(2, 2), img_size=64, window_size=4
    )
    save_for_hf(model, tmp_path / "timm")  # config.json with timm's pretrained_cfg, no preprocessor_config.json
    pretrained_cfg = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    processor = AutoImageProcessor.from_pretrained(tmp_path / "timm")
    assert processor.size == {"height": 64, "width": 64} and processor.resample == 3
    # timm's transform without its crop, on square photos (so resizing the short side is the whole resize)
    transform = create_transform(**resolve_data_config(pretrained_cfg={**pretrained_cfg, "crop_pct": 1.0}))
    squares = [p.crop((0, 0, min(p.size), min(p.size))) for p in photos]
    reference = torch.stack([transform(p) for p in squares])
    assert max_diff(processor(squares).pixel_values, reference) <= TOL

    config = Swinv2Config(image_size=48, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=7)
    write_checkpoint(Swinv2ForImageClassification(config), tmp_path / "ms.pth", "microsoft")  # no config.json
    processor = AutoImageProcessor.from_pretrained(tmp_path / "ms.pth")
    assert processor.size == {"height": 48, "width": 48} and processor.image_std == list(IMAGENET_DEFAULT_STD)


def test_a_transformers_pipeline_runs_our_model_and_processor(photos, tmp_path):
    """`transformers.pipeline` with swinv2's model and processor gives transformers' own scores (it reads the
    config's `_commit_hash` and casts the features with `.to(dtype)`)."""
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = transformers.Swinv2Config(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    transformers.Swinv2ForImageClassification(config).save_pretrained(tmp_path)
    hf_vit(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    theirs = transformers.pipeline("image-classification", model=str(tmp_path), device="cpu")
    ours = transformers.pipeline(
        "image-classification",
        model=Swinv2ForImageClassification.from_pretrained(tmp_path),
        image_processor=AutoImageProcessor.from_pretrained(tmp_path),
        device="cpu",
    )
    for photo in photos[:2]:
        expected, got = theirs(photo), ours(photo)
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected)) < 1e-5


def test_a_batch_is_read_in_its_first_images_layout_as_transformers():
    """transformers infers the channel layout once, from the first image: a (1, 37, 3) strip after a
    (24, 22, 3) photo is RGB, not a 37x3 grey image read on its own."""
    photo = load_sample_images().images[0]
    first, strip = np.ascontiguousarray(photo[:24, :22]), np.ascontiguousarray(photo[100:101, :37])
    settings = dict(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = transformers.ViTImageProcessor(**settings)([first, strip], return_tensors="np").pixel_values
    ours = Swinv2ImageProcessor(**settings)([first, strip], return_tensors="np")["pixel_values"]
    # (a 1-pixel-high strip resized 16x: a few pixels round one 8-bit step apart; read as grey it was ~1 off)
    np.testing.assert_allclose(ours, expected, atol=2.5 / 255)


@pytest.mark.parametrize("size, crop_pct", [(224, 0.875), ({"shortest_edge": 224}, None), (224, None)])
def test_convnext_files_with_an_int_size_or_no_crop_pct(tmp_path, size, crop_pct):
    """ConvNeXt's older files give an int size (its short side), and a null crop_pct means its 224/256."""
    config = {"feature_extractor_type": "ConvNextFeatureExtractor", "crop_pct": crop_pct, "size": size, "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    image = load_sample_images().images[1]
    expected = transformers.ConvNextImageProcessor.from_pretrained(tmp_path)(image, return_tensors="np").pixel_values
    ours = Swinv2ImageProcessor.from_pretrained(tmp_path)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, expected, atol=1e-5)
