"""Hugging Face interoperability beyond plain folders: transformers' `from_pretrained` and `save_pretrained`
options, config fields under both of transformers' names, `load_state_dict` of another library's state dict,
and the image processor class a saved preprocessor_config.json names. Each is compared with what transformers
itself does on the same files."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import skimage.data
import timm
import torch
import transformers
from conftest import PARITY_CONFIGS, hf_model, perturb_

import swinv2
from swinv2 import checkpoints as ck

CONFIG = {**PARITY_CONFIGS["two_stage"], "num_labels": 3}


@pytest.fixture
def x(rng) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=rng)


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_from_pretrained_honours_transformers_loading_options(tmp_path, x) -> None:
    """subfolder, use_safetensors, variant, output_loading_info and device_map do what they do in
    transformers (its own loads of the same folder are the reference); Hub options are accepted and not
    written into a later save; an unknown keyword or an unsupported option is an error."""
    root, sub = hf_model("Swinv2ForImageClassification", CONFIG, seed=1), hf_model(
        "Swinv2ForImageClassification", CONFIG, seed=2
    )
    root.save_pretrained(tmp_path)
    sub.save_pretrained(tmp_path / "sub")
    pickled = hf_model("Swinv2ForImageClassification", CONFIG, seed=3)
    pickled.save_pretrained(tmp_path, safe_serialization=False)  # beside model.safetensors (transformers keeps it)
    variant = hf_model("Swinv2ForImageClassification", CONFIG, seed=4)
    variant.save_pretrained(tmp_path, variant="fp16")
    cls = swinv2.Swinv2ForImageClassification
    for kwargs, reference in [
        ({}, root),
        ({"subfolder": "sub"}, sub),
        ({"use_safetensors": False}, pickled),
        ({"variant": "fp16"}, variant),
    ]:
        theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path, **kwargs).eval()
        torch.testing.assert_close(_logits(theirs, x), _logits(reference, x))
        ours = cls.from_pretrained(tmp_path, **kwargs)
        torch.testing.assert_close(_logits(ours, x), _logits(reference, x), rtol=1e-5, atol=1e-5)
    model, info = cls.from_pretrained(tmp_path, output_loading_info=True, num_labels=5)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the new head is a mismatch, as there
    assert sorted(info["mismatched_keys"]) == [("classifier.bias", (3,), (5,)), ("classifier.weight", (3, 32), (5, 32))]
    hub = {"token": "hf_secret", "trust_remote_code": True, "low_cpu_mem_usage": True, "force_download": False}
    model = cls.from_pretrained(tmp_path, device_map="auto" if not torch.cuda.is_available() else "cpu", **hub)
    assert next(model.parameters()).device.type == "cpu"
    model.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert not set(hub) & set(saved)
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*'num_label'"):
        cls.from_pretrained(tmp_path, num_label=3)  # a typo is not a silent no-op
    with pytest.raises(ValueError, match="no quantised loading"):
        cls.from_pretrained(tmp_path, quantization_config={"load_in_8bit": True})
    with pytest.raises(ck.CheckpointError, match="no subfolder 'nope'"):
        cls.from_pretrained(tmp_path, subfolder="nope")
    with pytest.raises(ck.CheckpointError, match=r"expected model\.bf16\.safetensors"):
        cls.from_pretrained(tmp_path, variant="bf16", use_safetensors=True)
    with pytest.raises(ValueError, match="splits the model over several devices"):
        cls.from_pretrained(tmp_path, device_map={"swinv2": "cpu", "classifier": "meta"})
    # a config field of transformers' PretrainedConfig, and one the checkpoint's config.json holds, are overrides
    model = cls.from_pretrained(tmp_path, pad_token_id=0, hidden_dropout_prob=0.25)
    assert model.config.extra["pad_token_id"] == 0 and model.config.hidden_dropout_prob == 0.25


def test_save_pretrained_shards_and_replaces_stale_weight_files(tmp_path, x) -> None:
    """max_shard_size writes transformers' shards and index (read by transformers and by us); a save of the
    other format, or unsharded, removes the weight files it did not write, which would be read instead."""
    ours = swinv2.Swinv2ForImageClassification.from_pretrained(
        ck_folder(tmp_path, hf_model("Swinv2ForImageClassification", CONFIG))
    )
    folder = tmp_path / "out"
    ours.save_pretrained(folder, safe_serialization=False)
    ours.save_pretrained(folder, max_shard_size="40KB")
    names = sorted(p.name for p in folder.iterdir())
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in names and "pytorch_model.bin" not in names
    for loaded in (
        transformers.Swinv2ForImageClassification.from_pretrained(folder).eval(),
        swinv2.Swinv2ForImageClassification.from_pretrained(folder),
    ):
        torch.testing.assert_close(_logits(loaded, x), _logits(ours, x), rtol=1e-5, atol=1e-5)
    ours.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="upload the folder with huggingface_hub"):
        ours.save_pretrained(folder, push_to_hub=True)
    with pytest.raises(ValueError, match="max_shard_size '5 apples'"):
        ours.save_pretrained(folder, max_shard_size="5 apples")
    assert ck.parse_size("5GB") == 5 * 10**9 and ck.parse_size("500MiB") == 500 * 2**20


def ck_folder(tmp_path, hf) -> str:
    hf.save_pretrained(tmp_path / "hf")
    return str(tmp_path / "hf")


def test_dtype_under_both_names_and_auto(tmp_path) -> None:
    """transformers 4.56+ writes "dtype" (older ones "torch_dtype"): both are read as one field and both
    written, so a re-saved folder tells transformers its real dtype; "auto" takes config.json's dtype first."""
    folder = ck_folder(tmp_path, hf_model("Swinv2ForImageClassification", CONFIG))
    half = swinv2.Swinv2ForImageClassification.from_pretrained(folder, torch_dtype=torch.float16)
    half.save_pretrained(tmp_path / "half")
    saved = json.loads((tmp_path / "half" / "config.json").read_text())
    assert saved["dtype"] == saved["torch_dtype"] == "float16"
    loaded = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "half", dtype="auto")
    assert next(loaded.parameters()).dtype == torch.float16
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["dtype"] = "bfloat16"  # fp32 weights, a config that asks for bf16
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(folder, dtype="auto")
    ours = swinv2.Swinv2ForImageClassification.from_pretrained(folder, torch_dtype="auto")
    assert next(ours.parameters()).dtype == next(theirs.parameters()).dtype == torch.bfloat16


def test_config_object_of_transformers_and_a_swin_v1_config(tmp_path, x) -> None:
    hf = hf_model("Swinv2ForImageClassification", CONFIG)
    folder = ck_folder(tmp_path, hf)
    ours = swinv2.Swinv2ForImageClassification.from_pretrained(folder, config=hf.config)
    torch.testing.assert_close(_logits(ours, x), _logits(hf, x), rtol=1e-5, atol=1e-5)
    transformers.SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[2, 4]).save_pretrained(tmp_path / "v1")
    with pytest.warns(UserWarning, match=r"Swin \(V1, 'swin'\) model"):
        swinv2.Swinv2Config.from_pretrained(tmp_path / "v1")


def test_load_state_dict_reads_other_libraries_layouts(tmp_path, x) -> None:
    """`model.load_state_dict(hf_model.state_dict())` (or timm's) converts the keys: the same numbers as
    from_pretrained, and strict=False no longer loads nothing without a word."""
    hf = hf_model("Swinv2ForImageClassification", CONFIG)
    ours = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**CONFIG)).eval()
    assert not ours.load_state_dict(hf.state_dict()).missing_keys
    torch.testing.assert_close(_logits(ours, x), _logits(hf, x), rtol=1e-5, atol=1e-5)
    timm_model = perturb_(timm.create_model(
        "swinv2_tiny_window8_256", pretrained=False, img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
        window_size=4, num_classes=3,
    ))
    ours = swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**CONFIG)).eval()
    ours.load_state_dict(timm_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_logits(ours, x), timm_model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="Missing key"):
        ours.load_state_dict({"foo": torch.zeros(1)})  # neither ours nor a layout we know: nn.Module's error


@pytest.mark.parametrize("name", ["Swinv2ForImageClassification", "Swinv2Model"])
def test_load_state_dict_reports_keys_as_given(name, x) -> None:
    """Keys a transformers state dict holds beyond the model's are reported as the caller wrote them, as
    transformers reports them (`foo.bar` was reported as `swinv2.foo.bar`), with strict=False and in
    strict=True's error; the rest still loads."""
    config = CONFIG if name != "Swinv2Model" else PARITY_CONFIGS["two_stage"]
    hf = hf_model(name, config, seed=random.randrange(2**31))
    state = dict(hf.state_dict())
    prefix = "swinv2." if name != "Swinv2Model" else ""
    extra = [f"foo{random.randrange(100)}.bar", f"{prefix}embeddings.extra", "classifier.extra"]
    state.update({key: torch.randn(2) for key in extra})
    reference = getattr(transformers, name)(transformers.Swinv2Config(**config))
    ours = getattr(swinv2, name)(swinv2.Swinv2Config(**config)).eval()
    expected = reference.load_state_dict(state, strict=False)
    got = ours.load_state_dict(state, strict=False)
    assert sorted(got.unexpected_keys) == sorted(expected.unexpected_keys) and not got.missing_keys
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError) as caught:
        ours.load_state_dict(state)
    assert all(f'"{key}"' in str(caught.value) for key in expected.unexpected_keys)


def test_backbone_folder_into_model_and_mim_logits(tmp_path, x) -> None:
    """A backbone checkpoint has no final norm: as in transformers, Swinv2Model loads it with that norm
    initialised afresh and a warning. The SimMIM output answers to transformers' older name `logits`."""
    hf = hf_model("Swinv2Backbone", {**CONFIG, "out_features": ["stage1", "stage2"]})
    folder = ck_folder(tmp_path, hf)
    with pytest.warns(UserWarning, match="newly initialised.*norm"):
        model, info = swinv2.Swinv2Model.from_pretrained(folder, output_loading_info=True)
    theirs, their_info = transformers.Swinv2Model.from_pretrained(folder, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(their_info["missing_keys"]) == ["layernorm.bias", "layernorm.weight"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, output_hidden_states=True).reshaped_hidden_states[1],
            theirs.eval()(x, output_hidden_states=True).reshaped_hidden_states[1],
            rtol=1e-5, atol=1e-5,
        )
    mim = swinv2.Swinv2ForMaskedImageModeling(swinv2.Swinv2Config(**PARITY_CONFIGS["two_stage"])).eval()
    out = mim(x)
    with pytest.warns(FutureWarning, match="use reconstruction"):
        assert out.logits is out.reconstruction
    assert list(out.keys()) == ["reconstruction"]


@pytest.mark.parametrize(
    "settings",
    [
        {"size": {"shortest_edge": 200}, "do_center_crop": True, "crop_size": 160},
        {"size": {"shortest_edge": 150}},
        {"size": {"height": 200, "width": 180}, "do_center_crop": True, "crop_size": {"height": 150, "width": 120}},
        {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 2},
        {"size": 224},
    ],
)
def test_saved_processor_names_a_transformers_class_that_applies_it(tmp_path, settings) -> None:
    """preprocessor_config.json names the transformers processor that gives our pixel values for its settings
    (ViT, Bit for a short-side resize or a centre crop, ConvNeXt for crop_pct): checked on real photos."""
    processor = swinv2.Swinv2ImageProcessor(**settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: a transformers class applies these
        processor.save_pretrained(tmp_path)
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    assert type(theirs).__name__ == json.loads((tmp_path / "preprocessor_config.json").read_text())[
        "image_processor_type"
    ]
    for photo in (skimage.data.astronaut(), skimage.data.coffee()):
        expected = np.asarray(theirs(photo, return_tensors="np").pixel_values)
        np.testing.assert_array_equal(processor(photo, return_tensors="np").pixel_values, expected)


def test_processor_channel_layouts_and_what_transformers_cannot_apply(tmp_path) -> None:
    processor = swinv2.Swinv2ImageProcessor(size=32)
    ambiguous = np.random.default_rng(0).random((3, 50, 4), dtype=np.float32)  # channels-first, or RGBA?
    first = processor(ambiguous, input_data_format="channels_first").pixel_values
    torch.testing.assert_close(first, processor(torch.from_numpy(ambiguous)).pixel_values)
    assert not torch.equal(first, processor(ambiguous, input_data_format="channels_last").pixel_values)
    photo = skimage.data.chelsea()
    last = processor(photo, data_format="channels_last").pixel_values
    torch.testing.assert_close(last, processor(photo).pixel_values.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="input_data_format must be 'channels_first' or 'channels_last'"):
        processor(photo, input_data_format="planar")
    with pytest.warns(UserWarning, match="no transformers image processor applies images of 1 channel"):
        swinv2.Swinv2ImageProcessor(image_mean=[0.5], image_std=[0.5]).save_pretrained(tmp_path)


def test_a_checkpoint_without_one_of_query_key_value_loads_as_in_transformers(tmp_path) -> None:
    """transformers initialises only the missing one of a block's query, key and value weights and keeps the
    other two; ours fuses them into one qkv weight, which used to be reported missing whole (a name the file
    does not have), with the other two as unexpected, and with strict=False re-initialised whole."""
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    folder = Path(ck_folder(tmp_path, hf_model("Swinv2ForImageClassification", CONFIG)))
    state = load_file(folder / "model.safetensors")
    absent = "swinv2.encoder.layers.1.blocks.1.attention.self.query.weight"
    del state[absent], state["swinv2.layernorm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ck.CheckpointError) as caught:
        swinv2.Swinv2ForImageClassification.from_pretrained(folder)
    assert f"1 missing: {absent}." in str(caught.value)  # (the final norm, as a backbone file lacks it, warns)
    assert "unexpected" not in str(caught.value)
    with pytest.warns(UserWarning, match="newly initialised"):
        ours, info = swinv2.Swinv2ForImageClassification.from_pretrained(folder, strict=False, output_loading_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, theirs = transformers.Swinv2ForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert sorted(info["missing_keys"]) == sorted(theirs["missing_keys"]) == sorted([absent, "swinv2.layernorm.weight"])
    assert not info["unexpected_keys"]
    qkv = ours.swinv2.stages[1].blocks[1].attn.qkv.weight.detach()
    key, value = (state[f"swinv2.encoder.layers.1.blocks.1.attention.self.{n}.weight"] for n in ("key", "value"))
    assert torch.equal(qkv[1 * key.shape[0] : 2 * key.shape[0]], key) and torch.equal(qkv[2 * key.shape[0] :], value)
