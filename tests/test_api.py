"""The documented API: output objects, return_dict, any input size, stochastic depth, loading options, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import PARITY_CONFIGS, hf_model, perturb_

import swinv2
from swinv2 import Swinv2Config, Swinv2ForImageClassification, Swinv2Model
from swinv2.checkpoints import CheckpointError

SMALL = PARITY_CONFIGS["two_stage"]


@pytest.fixture
def classifier() -> Swinv2ForImageClassification:
    torch.manual_seed(0)
    model = Swinv2ForImageClassification(Swinv2Config(**SMALL, num_labels=3)).eval()
    perturb_(model, torch.Generator().manual_seed(1))
    return model


def test_output_access_by_attribute_key_index_and_tuple(classifier, rng):
    x = torch.randn(2, 3, 32, 32, generator=rng)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        out = classifier(x, labels=labels, output_hidden_states=True)
    assert isinstance(out, swinv2.Swinv2ImageClassifierOutput)
    assert list(out.keys()) == ["loss", "logits", "hidden_states", "reshaped_hidden_states"]
    assert out["logits"] is out.logits and out[0] is out.loss and out[1] is out.logits
    assert out.to_tuple()[2] is out.hidden_states and len(out) == 4 and "attentions" not in out
    with pytest.raises(KeyError, match="attentions"):
        out["attentions"]
    assert dict(**out)["logits"] is out.logits


def test_outputs_are_dicts_as_transformers_code_expects(classifier, rng):
    """transformers' Trainer keeps the predictions of `isinstance(out, dict)` outputs by key (else it drops
    index 0 as the loss, which emptied them when the loss was computed outside the model); accelerate
    rebuilds outputs as `type(out)(mapping)`; pytree-based code (compile, export, DDP) sees the tensors."""
    with torch.no_grad():
        out = classifier(torch.randn(2, 3, 32, 32, generator=rng), output_hidden_states=True)
    assert isinstance(out, dict) and out.get("loss") is None and out.get("logits") is out.logits
    rebuilt = type(out)({k: v.clone() if torch.is_tensor(v) else v for k, v in out.items()})
    assert list(rebuilt.keys()) == list(out.keys()) and torch.equal(rebuilt.logits, out.logits)
    leaves, spec = torch.utils._pytree.tree_flatten(out)
    assert len(leaves) == 1 + 2 * len(out.hidden_states)  # logits, hidden and reshaped hidden states
    again = torch.utils._pytree.tree_unflatten([t * 2 for t in leaves], spec)
    assert type(again) is type(out) and torch.equal(again.logits, 2 * out.logits)
    out["loss"] = torch.tensor(1.0)  # a key set is an attribute set, and the other way round
    assert out.loss is out["loss"] and out[0] is out.loss
    out.loss = None
    assert "loss" not in out and out[0] is out.logits


def test_return_dict_false_gives_the_tuple(classifier, rng):
    x = torch.randn(1, 3, 32, 32, generator=rng)
    with torch.no_grad():
        as_dict = classifier(x, output_attentions=True)
        as_tuple = classifier(x, output_attentions=True, return_dict=False)
        classifier.config.return_dict = False
        from_config = classifier(x)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    assert isinstance(from_config, tuple) and len(from_config) == 1


def test_config_output_switches(rng):
    config = Swinv2Config(**SMALL, output_hidden_states=True, output_attentions=True)
    model = Swinv2Model(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32, generator=rng))
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2 and len(out.reshaped_hidden_states) == 3
    assert out.reshaped_hidden_states[1].shape == (1, 32, 4, 4)


def test_documented_example_shapes():
    """The documentation's example: swinv2-tiny at 256 gives (1, 64, 768) and a (1, 3, 256, 256) reconstruction."""
    config = Swinv2Config(image_size=256, window_size=8)
    model = Swinv2Model(config).eval()
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, 256, 256)).last_hidden_state.shape) == [1, 64, 768]
    reference = transformers.Swinv2Model(transformers.Swinv2Config(image_size=256, window_size=8))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (17, 33), (40, 24)])
def test_any_input_size_runs_finite(size, classifier, rng):
    x = torch.randn(2, 3, *size, generator=rng)
    with torch.no_grad():
        out = classifier(x, output_hidden_states=True)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.logits).all()
    assert out.reshaped_hidden_states[0].shape[-2:] == (-(-size[0] // 4), -(-size[1] // 4))


def test_window_one_has_no_nan(rng):
    config = Swinv2Config(image_size=16, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=1,
                          pretrained_window_sizes=[1, 1])
    model = Swinv2Model(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16, generator=rng), output_attentions=True)
    assert torch.isfinite(out.last_hidden_state).all()
    assert all(torch.allclose(a, torch.ones_like(a)) for a in out.attentions)  # one token per window


def test_window_one_matches_transformers(tmp_path, rng):
    config = dict(image_size=16, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=1)
    hf = hf_model("Swinv2Model", config)
    hf.save_pretrained(tmp_path)
    ours = Swinv2Model.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 16, 16, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, hf(x).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_stochastic_depth_grows_linearly():
    config = Swinv2Config(**SMALL, drop_path_rate=0.3)
    model = Swinv2Model(config)
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 4))


def test_training_step_has_gradients_everywhere(rng):
    config = Swinv2Config(**SMALL, num_labels=3, drop_path_rate=0.2, hidden_dropout_prob=0.1,
                          attention_probs_dropout_prob=0.1)
    model = Swinv2ForImageClassification(config).train()
    out = model(torch.randn(4, 3, 32, 32, generator=rng), labels=torch.tensor([0, 1, 2, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    cpb = model.swinv2.stages[0].blocks[0].attn.cpb_mlp[0].weight.grad
    assert cpb.abs().sum() > 0  # the position bias learns


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}])
def test_gradient_checkpointing_gives_the_same_gradients(rng, kwargs):
    """Also with transformers' `gradient_checkpointing_kwargs` (its Trainer passes them)."""
    config = Swinv2Config(**SMALL, num_labels=3, drop_path_rate=0.0)
    torch.manual_seed(0)
    plain = Swinv2ForImageClassification(config).train()
    checkpointed = Swinv2ForImageClassification(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert not checkpointed.is_gradient_checkpointing
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    assert checkpointed.is_gradient_checkpointing
    x, y = torch.randn(2, 3, 32, 32, generator=rng), torch.tensor([0, 2])
    plain(x, labels=y).loss.backward()
    checkpointed(x, labels=y).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_attention_cache_follows_weight_changes(classifier, rng):
    """The folded bias/mask is cached in inference; changing the CPB weights must invalidate it."""
    x = torch.randn(1, 3, 32, 32, generator=rng)
    with torch.no_grad():
        before = classifier.swinv2(x).last_hidden_state
        classifier.swinv2.stages[0].blocks[1].attn.cpb_mlp[2].weight.normal_(0.0, 2.0, generator=rng)
        after = classifier.swinv2(x).last_hidden_state
        classifier.clear_attention_cache()
        fresh = classifier.swinv2(x).last_hidden_state
    assert (before - after).abs().max() > 1e-4  # a stale cache would give exactly the same output
    torch.testing.assert_close(after, fresh)


# ---------------------------------------------------------------------------------------------- loading options
def test_from_pretrained_bin_folder_dtype_and_device(tmp_path, rng):
    hf = hf_model("Swinv2ForImageClassification", SMALL, num_labels=3)
    hf.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").exists()
    model = Swinv2ForImageClassification.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, map_location="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    model = Swinv2ForImageClassification.from_pretrained(tmp_path, torch_dtype="float64")
    x = torch.randn(1, 3, 32, 32, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()).logits.float(), hf(x).logits, atol=1e-5, rtol=1e-5)


def test_save_pretrained_round_trip_is_exact(classifier, tmp_path):
    classifier.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Swinv2ForImageClassification"]
    again = Swinv2ForImageClassification.from_pretrained(tmp_path)
    for (name, a), b in zip(classifier.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_hub_id_from_offline_cache(tmp_path):
    """A hub id resolves through huggingface_hub's cache; with HF_HUB_OFFLINE=1 nothing is fetched."""
    hf = hf_model("Swinv2ForImageClassification", SMALL, num_labels=3)
    snapshot = tmp_path / "hub" / "models--acme--tiny-swinv2" / "snapshots" / "0123456789abcdef"
    hf.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--acme--tiny-swinv2" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-swinv2" / "refs" / "main").write_text("0123456789abcdef")
    code = (
        "import torch, swinv2\n"
        "m = swinv2.Swinv2ForImageClassification.from_pretrained('acme/tiny-swinv2')\n"
        "print(m.config.num_labels, sum(p.numel() for p in m.parameters()))\n"
        "try:\n"
        "    swinv2.Swinv2ForImageClassification.from_pretrained('acme/not-cached')\n"
        "except Exception as e:\n"
        "    print('ERROR', type(e).__name__, e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"3 {sum(p.numel() for p in hf.parameters())}"
    assert lines[1].startswith("ERROR CheckpointError") and "acme/not-cached" in lines[1]


# ---------------------------------------------------------------------------------------------- bad input
def test_wrong_channel_count(classifier):
    with pytest.raises(ValueError, match="4 channels but the model expects num_channels=3"):
        classifier(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="channels-last"):
        classifier(torch.randn(1, 32, 32, 3))


def test_three_dimensional_input(classifier):
    with pytest.raises(ValueError, match=r"4 dimensions.*unsqueeze\(0\)"):
        classifier(torch.randn(3, 32, 32))


def test_integer_input(classifier):
    with pytest.raises(TypeError, match="floating-point"):
        classifier(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))


def test_labels_out_of_range(classifier):
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        classifier(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 3]))


def test_bool_masked_pos_wrong_shape():
    model = swinv2.Swinv2ForMaskedImageModeling(Swinv2Config(**SMALL, encoder_stride=8))
    with pytest.raises(ValueError, match=r"\(batch, num_patches\) = \(1, 64\)"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="use_mask_token=True"):
        Swinv2Model(Swinv2Config(**SMALL))(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 64).bool())


def test_head_mask_wrong_shape(classifier):
    with pytest.raises(ValueError, match=r"head_mask has shape \(2,\); .*num_heads \[2, 4\] differ between stages"):
        classifier(torch.randn(1, 3, 32, 32), head_mask=torch.ones(2))


def test_folder_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no weights found"):
        Swinv2Model.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="neither a file nor a folder"):
        Swinv2Model.from_pretrained(tmp_path / "missing" / "model")


def test_a_folder_of_several_weight_files_names_them(tmp_path, classifier):
    """No file of transformers' names and more than one other: the error lists them, for the user to choose."""
    for name in ("epoch1.pth", "epoch2.pth"):
        torch.save(classifier.state_dict(), tmp_path / name)
    with pytest.raises(CheckpointError, match=r"holds several weight files \(epoch1\.pth, epoch2\.pth\)"):
        Swinv2ForImageClassification.from_pretrained(tmp_path)
    loaded = Swinv2ForImageClassification.from_pretrained(tmp_path / "epoch2.pth", config=classifier.config)
    assert torch.equal(loaded.classifier.weight, classifier.classifier.weight)


def test_missing_and_unexpected_keys_are_listed(classifier, tmp_path):
    from safetensors.torch import load_file, save_file

    classifier.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["swinv2.encoder.layers.1.blocks.0.layernorm_after.weight"]
    state["swinv2.encoder.layers.0.blocks.0.extra_thing.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        Swinv2ForImageClassification.from_pretrained(tmp_path)
    message = str(err.value)
    assert "1 missing: swinv2.encoder.layers.1.blocks.0.layernorm_after.weight" in message  # the file's names
    assert "1 unexpected: swinv2.encoder.layers.0.blocks.0.extra_thing.weight" in message
    assert "detected format: hf" in message


def test_mismatched_config_and_weights(classifier, tmp_path):
    classifier.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embed_dim"], config["num_heads"] = 32, [2, 4]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the weights"):
        Swinv2ForImageClassification.from_pretrained(tmp_path)


def test_dtype_is_torch_dtypes_new_name(tmp_path, classifier):
    classifier.save_pretrained(tmp_path)
    assert Swinv2ForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert Swinv2ForImageClassification.from_pretrained(tmp_path, dtype="float64").dtype == torch.float64
    with pytest.raises(ValueError, match="disagree"):
        Swinv2ForImageClassification.from_pretrained(tmp_path, dtype=torch.float16, torch_dtype=torch.bfloat16)


@pytest.mark.parametrize("override", [{"out_features": ["stem", "stage1"]}, {"out_indices": [1]}])
def test_backbone_stage_override_replaces_the_stored_stages(tmp_path, rng, override):
    """A classifier's config.json stores out_features and out_indices for the last stage; naming other stages
    through one of them replaces both, as in transformers."""
    hf = hf_model("Swinv2ForImageClassification", SMALL, num_labels=3)
    hf.save_pretrained(tmp_path)
    theirs = transformers.Swinv2Backbone.from_pretrained(tmp_path, **override).eval()
    ours = swinv2.Swinv2Backbone.from_pretrained(tmp_path, **override)
    assert (ours.out_features, ours.out_indices) == (theirs.out_features, theirs.out_indices)
    assert ours.channels == theirs.channels
    x = torch.randn(2, 3, 32, 32, generator=rng)
    with torch.no_grad():
        for a, b in zip(ours(x).feature_maps, theirs(x).feature_maps, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_backbone_out_feature_channels_are_transformers(rng):
    """`out_feature_channels`: every stage's channels, selected or not, as transformers' BackboneMixin; the
    maps have them. On a random architecture and a random choice of stages."""
    stages = random.randint(1, 4)
    names = ["stem"] + [f"stage{i}" for i in range(1, stages + 1)]
    settings = dict(image_size=32, embed_dim=random.choice([8, 12]), depths=[1] * stages, num_heads=[2] * stages,
                    window_size=2, out_features=sorted(random.sample(names, random.randint(1, len(names))),
                                                       key=names.index))
    theirs = transformers.Swinv2Backbone(transformers.Swinv2Config(**settings))
    ours = swinv2.Swinv2Backbone(swinv2.Swinv2Config(**settings)).eval()
    assert ours.out_feature_channels == theirs.out_feature_channels
    assert ours.channels == theirs.channels
    with torch.no_grad():
        maps = ours(torch.randn(1, 3, 32, 32, generator=rng)).feature_maps
    assert [m.shape[1] for m in maps] == [ours.out_feature_channels[name] for name in ours.out_features]


def test_input_embeddings_are_the_patch_projection(classifier):
    assert classifier.base_model is classifier.swinv2 and classifier.swinv2.base_model is classifier.swinv2
    keys = list(classifier.state_dict())
    for model in (classifier, classifier.swinv2):
        embeddings = model.get_input_embeddings()
        assert type(embeddings).__name__ == "Swinv2PatchEmbeddings"  # transformers' class, with its .projection
        assert embeddings.projection is classifier.swinv2.embeddings.proj
        projection_parameters = classifier.swinv2.embeddings.proj.parameters()
        assert [id(p) for p in embeddings.parameters()] == [id(p) for p in projection_parameters]
    assert list(classifier.state_dict()) == keys and not any("patch_embeddings" in k for k in keys)


def test_input_embeddings_compute_transformers_patch_embeddings(tmp_path, rng):
    """The returned module is transformers' `Swinv2PatchEmbeddings` in use: the same (B, L, C) patch vectors and
    grid (padded sizes too, tolerance 1e-6); freezing it freezes the projection only; a forward hook on it
    sees the model's calls."""
    hf = hf_model("Swinv2ForImageClassification", SMALL, num_labels=3)
    hf.save_pretrained(tmp_path)
    ours = Swinv2ForImageClassification.from_pretrained(tmp_path).eval()
    theirs_module, ours_module = hf.get_input_embeddings(), ours.get_input_embeddings()
    assert type(ours_module).__name__ == type(theirs_module).__name__
    assert ours.get_input_embeddings() is ours_module  # one object, as transformers' submodule is
    for name in ("image_size", "patch_size", "num_channels", "num_patches", "grid_size"):
        mine, theirs = getattr(ours_module, name), getattr(theirs_module, name)
        assert mine == (tuple(theirs) if isinstance(theirs, list) else theirs), name
    for size in ((32, 32), (30, 29)):
        x = torch.randn(2, 3, *size, generator=rng)
        with torch.no_grad():
            (mine, grid), (theirs, their_grid) = ours_module(x), theirs_module(x)
        assert grid == tuple(their_grid)
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-6)
    ours_module.requires_grad_(False)
    frozen = {n for n, p in ours.named_parameters() if not p.requires_grad}
    assert frozen == {"swinv2.embeddings.proj.weight", "swinv2.embeddings.proj.bias"}
    seen = []
    handle = ours.get_input_embeddings().register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        ours(torch.randn(1, 3, 32, 32, generator=rng))
    handle.remove()
    assert seen == [torch.Size([1, 16, 8, 8])]


def test_frozen_input_embeddings_with_reentrant_checkpointing_still_train_the_blocks(rng):
    """transformers' recipe: `enable_input_require_grads()` before reentrant checkpointing with frozen
    embeddings; without it, reentrant checkpointing sees no input that needs a gradient."""
    config = Swinv2Config(**SMALL, num_labels=3, drop_path_rate=0.0)
    model = Swinv2ForImageClassification(config).train()
    model.swinv2.embeddings.requires_grad_(False)  # the projection and its norm
    model.enable_input_require_grads()
    model.enable_input_require_grads()
    assert len(model.get_input_embeddings().projection._forward_hooks) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(torch.randn(2, 3, 32, 32, generator=rng), labels=torch.tensor([0, 2])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    model.disable_input_require_grads()
    assert not model.get_input_embeddings().projection._forward_hooks


def test_new_head_warning_names_each_weight_once(classifier, tmp_path):
    classifier.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="newly initialised") as caught:
        Swinv2ForImageClassification.from_pretrained(tmp_path, num_labels=5)
    message = str(caught[0].message)
    assert message.count("classifier.weight") == 1 and message.count("classifier.bias") == 1
    assert "classifier.weight (checkpoint (3, 32), model (5, 32))" in message


def test_selu_is_torchs_selu(tmp_path):
    """hidden_act="selu", which the documentation lists; transformers 4.57 has no such name (KeyError), so
    the reference is its model built with relu, its activations then swapped for torch's SELU."""
    settings = dict(PARITY_CONFIGS["two_stage"], num_labels=3)
    hf = hf_model("Swinv2ForImageClassification", {**settings, "hidden_act": "relu"}, seed=random.randrange(2**31))
    hf.save_pretrained(tmp_path / "relu")
    relu = Swinv2ForImageClassification.from_pretrained(tmp_path / "relu").eval()
    acts = [m for m in hf.modules() if hasattr(m, "intermediate_act_fn")]
    assert len(acts) == sum(settings["depths"])
    for module in acts:
        module.intermediate_act_fn = torch.nn.SELU()
    ours = Swinv2ForImageClassification.from_pretrained(tmp_path / "relu", hidden_act="selu").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(x).logits
        torch.testing.assert_close(ours(x).logits, expected, atol=1e-5, rtol=1e-5)
        assert (relu(x).logits - expected).abs().max() > 1e-3  # the activation matters here
        ours.save_pretrained(tmp_path / "selu")
        again = Swinv2ForImageClassification.from_pretrained(tmp_path / "selu").eval()
        assert again.config.hidden_act == "selu" and torch.equal(again(x).logits, ours(x).logits)


@pytest.mark.parametrize(
    "cls, positional",
    [
        (Swinv2Model, ["pixel_values", "bool_masked_pos", "head_mask", "output_attentions", "output_hidden_states",
                       "return_dict"]),
        (Swinv2ForImageClassification, ["pixel_values", "head_mask", "labels", "output_attentions",
                                         "output_hidden_states", "return_dict"]),
        (swinv2.Swinv2ForMaskedImageModeling, ["pixel_values", "bool_masked_pos", "head_mask", "output_attentions",
                                               "output_hidden_states", "return_dict"]),
    ],
)
def test_positional_arguments_are_the_documented_ones(cls, positional):
    """The documentation's order (transformers 4.37); `interpolate_pos_encoding`, which transformers 4.57 put
    before `return_dict`, comes after it. Not keyword-only: torch.onnx's TorchScript exporter passes every
    parameter positionally (`torch.onnx.export(model, (x,), dynamo=False)` failed: 8 arguments for 7)."""
    import inspect

    params = inspect.signature(cls.forward).parameters
    kinds = inspect.Parameter
    named = [n for n, p in params.items() if p.kind == kinds.POSITIONAL_OR_KEYWORD][1:]
    assert named[: len(positional)] == positional and named[len(positional)] == "interpolate_pos_encoding"
    assert all(p.kind == kinds.POSITIONAL_OR_KEYWORD for n, p in params.items() if n != "self")


def test_config_may_be_a_path_or_a_preset(classifier, tmp_path):
    from safetensors.torch import load_file, save_file

    classifier.save_pretrained(tmp_path / "hf")
    ck = swinv2.checkpoints
    save_file(ck.export_state_dict(classifier, "timm"), tmp_path / "timm.safetensors")
    for config in (tmp_path / "hf" / "config.json", str(tmp_path / "hf")):
        model = Swinv2ForImageClassification.from_pretrained(tmp_path / "timm.safetensors", config=config)
        for key, value in load_file(tmp_path / "hf" / "model.safetensors").items():
            assert torch.equal(ck.export_state_dict(model, "hf")[key], value), key
    with pytest.raises(TypeError, match=r"config must be a Swinv2Config \(swinv2.s or transformers.\), a path"):
        Swinv2ForImageClassification.from_pretrained(tmp_path / "hf", config={"embed_dim": 16})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dtypes_are_transformers(tmp_path, rng, dtype, monkeypatch):
    """A half-precision model returns half-precision attentions and an fp32 SimMIM loss; under autocast the
    masked embeddings are fp32 (the mask token unrounded): the dtypes transformers gives."""
    monkeypatch.setattr(swinv2.modeling, "CPU_NATIVE_BF16", True)  # bf16 autocast kept on any CPU
    hf = hf_model("Swinv2ForMaskedImageModeling", SMALL, encoder_stride=8)
    hf.save_pretrained(tmp_path)
    ours = swinv2.Swinv2ForMaskedImageModeling.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=rng)
    mask = torch.rand(2, 64, generator=rng) < 0.5
    with torch.no_grad():
        for model in (ours, hf):
            model.to(dtype)
        a = ours(x.to(dtype), bool_masked_pos=mask, output_attentions=True)
        b = hf(x.to(dtype), bool_masked_pos=mask, output_attentions=True)
        assert [t.dtype for t in a.attentions] == [t.dtype for t in b.attentions] == [dtype] * 2
        assert a.loss.dtype == b.loss.dtype == torch.float32
        for model in (ours, hf):
            model.float()
        with torch.autocast("cpu", dtype=dtype):
            a = ours(x, bool_masked_pos=mask, output_hidden_states=True)
            b = hf(x, bool_masked_pos=mask, output_hidden_states=True)
        assert [t.dtype for t in a.hidden_states] == [t.dtype for t in b.hidden_states]


def test_half_precision_training_with_the_exact_attention_on_padded_input(rng):
    """output_attentions / head_mask take the step-by-step attention: padded keys (0) get no 1 / eps
    gradient, which overflows fp16 (transformers' own gradients are NaN here). Each path's fp16 gradients
    stay within 5% (relative norm; measured 1.9-2.4%) of the fp32 ones."""
    torch.manual_seed(0)
    model = Swinv2ForImageClassification(Swinv2Config(**SMALL, num_labels=3, drop_path_rate=0.0))
    x = torch.randn(3, 3, 27, 35, generator=rng)
    labels = torch.tensor([0, 1, 2])

    def gradients(fp16: bool, **kwargs) -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            model(x, labels=labels, **kwargs).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    reference = gradients(False)
    for kwargs in ({}, {"output_attentions": True}, {"head_mask": [torch.ones(2), torch.ones(4)]}):
        grad = gradients(True, **kwargs)
        assert torch.isfinite(grad).all(), kwargs
        assert (grad - reference).norm() / reference.norm() < 0.05, kwargs


def test_import_leaves_pillow_to_the_image_processor():
    """`import swinv2` (a backbone, a job fed tensors) does not load Pillow; the processors still import."""
    code = (
        "import sys, swinv2\n"
        "assert 'PIL' not in sys.modules, 'import swinv2 loaded Pillow'\n"
        "from swinv2 import *\n"
        "assert AutoImageProcessor is swinv2.processing.AutoImageProcessor and 'PIL' in sys.modules\n"
        "assert 'Swinv2ImageProcessor' in dir(swinv2)\n"
        "try:\n    swinv2.not_a_name\nexcept AttributeError as err:\n    assert 'not_a_name' in str(err)\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_output_embeddings_and_backbone_type_are_transformers():
    """`get_output_embeddings()` is None for every head, as transformers' (nothing to tie); the backbone's
    `backbone_type` has the name and value of transformers' `BackboneType.TRANSFORMERS`."""
    config = Swinv2Config(**SMALL, encoder_stride=8)
    their_config = transformers.Swinv2Config(**SMALL, encoder_stride=8)
    for kind in ("Swinv2Model", "Swinv2ForImageClassification", "Swinv2ForMaskedImageModeling", "Swinv2Backbone"):
        assert getattr(transformers, kind)(their_config).get_output_embeddings() is None, kind
        assert getattr(swinv2, kind)(config).get_output_embeddings() is None, kind
    theirs = transformers.Swinv2Backbone(their_config).backbone_type
    ours = swinv2.Swinv2Backbone(config).backbone_type
    assert (ours.name, ours.value) == (theirs.name, theirs.value) == ("TRANSFORMERS", "transformers")
    assert [(m.name, m.value) for m in type(ours)] == [(m.name, m.value) for m in type(theirs)]


def test_chunk_size_feed_forward_is_transformers(tmp_path):
    """transformers' default 0, in `to_dict()` and left out of config.json at its default, as there; another
    value goes through config.json both ways."""
    ours, theirs = Swinv2Config(**SMALL), transformers.Swinv2Config(**SMALL)
    assert ours.chunk_size_feed_forward == theirs.chunk_size_feed_forward == 0
    assert ours.to_dict()["chunk_size_feed_forward"] == theirs.to_dict()["chunk_size_feed_forward"] == 0
    assert "chunk_size_feed_forward" not in ours.to_diff_dict()
    assert "chunk_size_feed_forward" not in theirs.to_diff_dict()
    ours.save_pretrained(tmp_path / "default")
    assert "chunk_size_feed_forward" not in json.loads((tmp_path / "default" / "config.json").read_text())
    Swinv2Config(**SMALL, chunk_size_feed_forward=4).save_pretrained(tmp_path / "ours")
    assert transformers.Swinv2Config.from_pretrained(tmp_path / "ours").chunk_size_feed_forward == 4
    transformers.Swinv2Config(**SMALL, chunk_size_feed_forward=3).save_pretrained(tmp_path / "theirs")
    loaded = Swinv2Config.from_pretrained(tmp_path / "theirs")
    assert loaded.chunk_size_feed_forward == 3
    loaded.save_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["chunk_size_feed_forward"] == 3


@pytest.mark.parametrize("kind", ["Swinv2Model", "Swinv2ForImageClassification", "Swinv2ForMaskedImageModeling",
                                  "Swinv2Backbone"])
def test_constructor_takes_transformers_config(kind, tmp_path, rng):
    """transformers' own Swinv2Config builds our model: converted to the config transformers' config.json gives,
    and the model built from it computes what transformers' does on the same weights (tolerance 1e-5)."""
    their_config = transformers.Swinv2Config(
        **SMALL, encoder_stride=8, id2label={0: "cat", 1: "dog", 2: "bird"}, hidden_act="gelu_new",
        out_features=["stage1", "stage2"],
    )
    their_config.save_pretrained(tmp_path)
    ours = getattr(swinv2, kind)(their_config).eval()
    assert isinstance(ours.config, Swinv2Config) and ours.config == Swinv2Config.from_pretrained(tmp_path)
    assert ours.config.id2label == their_config.id2label and ours.config.hidden_act == "gelu_new"
    for module in ours.modules():  # one config for the head and its encoder, as in transformers
        assert getattr(module, "config", ours.config) is ours.config
    torch.manual_seed(0)
    theirs = perturb_(getattr(transformers, kind)(their_config), torch.Generator().manual_seed(1))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=rng)
    with torch.no_grad():
        mine, reference = ours(x, return_dict=False), theirs(x, return_dict=False)
    for a, b in zip(torch.utils._pytree.tree_leaves(mine), torch.utils._pytree.tree_leaves(reference), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_constructor_refuses_other_configs_naming_them():
    with pytest.raises(TypeError, match=r"got transformers\.models\.swin\.configuration_swin\.SwinConfig; build one "
                       r"with swinv2\.Swinv2Config\(\.\.\.\)"):
        Swinv2Model(transformers.SwinConfig())
    with pytest.raises(TypeError, match=r"must be a swinv2\.Swinv2Config \(or transformers' Swinv2Config, which is "
                       r"converted\), got builtins\.dict"):
        Swinv2Model(dict(SMALL))


def test_transformers_model_helpers_answer_as_there(tmp_path):
    """Tools written for transformers models call these: the parameter footprint is transformers' own (buffers
    may differ: ours keep other tables), and tie_weights is a no-op that leaves the weights as they were."""
    hf = hf_model("Swinv2ForImageClassification", SMALL, num_labels=3)
    hf.save_pretrained(tmp_path)
    ours = Swinv2ForImageClassification.from_pretrained(tmp_path)
    assert ours.get_memory_footprint(return_buffers=False) == hf.get_memory_footprint(return_buffers=False)
    assert ours.get_memory_footprint() == ours.get_memory_footprint(False) + sum(
        b.nelement() * b.element_size() for b in ours.buffers()
    )
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.tie_weights()
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
