"""Same weights, same numbers: our models against transformers (4.57) as the oracle, fp32, eval mode."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from conftest import PARITY_CONFIGS, hf_model, ours_from_hf, perturb_

import swinv2
from swinv2 import Swinv2Backbone, Swinv2Config

ATOL = 1e-5
RTOL = 1e-5


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def input_for(config: dict, generator: torch.Generator, batch: int = 2, size=None) -> torch.Tensor:
    h, w = size or (config["image_size"], config["image_size"])
    return torch.randn(batch, config.get("num_channels", 3), h, w, generator=generator)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_model_outputs_match(name, tmp_path, rng):
    config = PARITY_CONFIGS[name]
    hf = hf_model("Swinv2Model", config)
    ours = ours_from_hf("Swinv2Model", hf, tmp_path)
    x = input_for(config, rng)
    with torch.no_grad():
        theirs = hf(x, output_hidden_states=True, output_attentions=True)
        mine = ours(x, output_hidden_states=True, output_attentions=True)
        fast = ours(x)
    close(mine.last_hidden_state, theirs.last_hidden_state, "last_hidden_state")
    close(mine.pooler_output, theirs.pooler_output, "pooler_output")
    close(fast.last_hidden_state, theirs.last_hidden_state, "last_hidden_state (fast path)")
    assert len(mine.hidden_states) == len(theirs.hidden_states) == len(config["depths"]) + 1
    for i, (a, b) in enumerate(zip(mine.hidden_states, theirs.hidden_states)):
        close(a, b, f"hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(mine.reshaped_hidden_states, theirs.reshaped_hidden_states)):
        close(a, b, f"reshaped_hidden_states[{i}]")
    assert len(mine.attentions) == len(theirs.attentions) == len(config["depths"])
    for i, (a, b) in enumerate(zip(mine.attentions, theirs.attentions)):
        close(a, b, f"attentions[{i}]")


@pytest.mark.parametrize("size", [(32, 48), (27, 19), (64, 64), (8, 8), (3, 5)])
def test_other_input_sizes_match(size, tmp_path, rng):
    """Inputs of another size than config.image_size: non-square, odd, larger, smaller than a window."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2Model", config)
    ours = ours_from_hf("Swinv2Model", hf, tmp_path)
    x = input_for(config, rng, size=size)
    with torch.no_grad():
        theirs = hf(x, output_hidden_states=True)
        mine = ours(x, output_hidden_states=True)
    close(mine.last_hidden_state, theirs.last_hidden_state, f"last_hidden_state at {size}")
    for i, (a, b) in enumerate(zip(mine.reshaped_hidden_states, theirs.reshaped_hidden_states)):
        close(a, b, f"reshaped_hidden_states[{i}] at {size}")


def test_every_activation_transformers_names(tmp_path, rng):
    """Each `hidden_act` transformers builds without parameters gives its numbers; the two with learnable
    parameters are refused with the list of the others. "selu", which the documentation lists and
    transformers lacks, is the one name a config written here does not load there (tested in test_api)."""
    x = input_for(PARITY_CONFIGS["two_stage"], rng)
    assert set(swinv2.config.ACTIVATIONS) - set(transformers.activations.ACT2CLS) == {"selu"}
    for act in [a for a in swinv2.config.ACTIVATIONS if a != "selu"]:
        hf = hf_model("Swinv2Model", PARITY_CONFIGS["two_stage"], hidden_act=act)
        ours = ours_from_hf("Swinv2Model", hf, tmp_path / act)
        with torch.no_grad():
            close(ours(x).last_hidden_state, hf(x).last_hidden_state, f"hidden_act={act}")
    for act in ("prelu", "xielu"):
        assert act in transformers.activations.ACT2CLS
        with pytest.raises(ValueError, match="learnable parameters"):
            swinv2.Swinv2Config(**PARITY_CONFIGS["two_stage"], hidden_act=act)


@pytest.mark.parametrize("name", ["two_stage", "four_stage_small_last", "one_channel"])
def test_classification_logits_and_losses(name, tmp_path, rng):
    config = PARITY_CONFIGS[name]
    for problem, labels in [
        ("single_label_classification", torch.randint(0, 5, (2,), generator=rng)),
        ("multi_label_classification", torch.randint(0, 2, (2, 5), generator=rng).float()),
        ("regression", torch.randn(2, 5, generator=rng)),
    ]:
        hf = hf_model("Swinv2ForImageClassification", config, num_labels=5, problem_type=problem)
        ours = ours_from_hf("Swinv2ForImageClassification", hf, tmp_path / problem)
        assert ours.config.problem_type == problem
        x = input_for(config, rng)
        with torch.no_grad():
            theirs = hf(x, labels=labels)
            mine = ours(x, labels=labels)
        close(mine.logits, theirs.logits, f"logits ({problem})")
        close(mine.loss, theirs.loss, f"loss ({problem})")
        if labels.is_floating_point():  # float64 targets: a float64 loss, as transformers' promotion gives
            with torch.no_grad():
                theirs, mine = hf(x, labels=labels.double()), ours(x, labels=labels.double())
            assert mine.loss.dtype == theirs.loss.dtype == torch.float64
            close(mine.loss, theirs.loss, f"float64 loss ({problem})")


def test_problem_type_inferred_like_transformers(tmp_path, rng):
    config = PARITY_CONFIGS["two_stage"]
    cases = [
        (1, torch.randn(3, generator=rng), "regression"),
        (4, torch.randint(0, 4, (3,), generator=rng), "single_label_classification"),
        (4, torch.randint(0, 2, (3, 4), generator=rng).float(), "multi_label_classification"),
    ]
    for num_labels, labels, expected in cases:
        hf = hf_model("Swinv2ForImageClassification", config, num_labels=num_labels)
        ours = ours_from_hf("Swinv2ForImageClassification", hf, tmp_path / expected)
        x = input_for(config, rng, batch=3)
        with torch.no_grad():
            theirs, mine = hf(x, labels=labels), ours(x, labels=labels)
        assert ours.config.problem_type == hf.config.problem_type == expected
        close(mine.loss, theirs.loss, f"loss ({expected})")


@pytest.mark.parametrize("name", ["two_stage", "four_stage_small_last", "pretrained_windows", "one_channel"])
def test_masked_image_modeling(name, tmp_path, rng):
    config = dict(PARITY_CONFIGS[name])
    config["encoder_stride"] = config["patch_size"] * 2 ** (len(config["depths"]) - 1)
    hf = hf_model("Swinv2ForMaskedImageModeling", config)
    ours = ours_from_hf("Swinv2ForMaskedImageModeling", hf, tmp_path)
    x = input_for(config, rng)
    num_patches = (config["image_size"] // config["patch_size"]) ** 2
    mask = torch.rand(2, num_patches, generator=rng) < 0.5
    with torch.no_grad():
        theirs = hf(x, bool_masked_pos=mask, output_hidden_states=True)
        mine = ours(x, bool_masked_pos=mask, output_hidden_states=True)
        unmasked_theirs, unmasked_mine = hf(x), ours(x)
    close(mine.reconstruction, theirs.reconstruction, "reconstruction")
    close(mine.loss, theirs.loss, "MIM loss")
    close(mine.hidden_states[0], theirs.hidden_states[0], "embeddings with mask tokens")
    close(unmasked_mine.reconstruction, unmasked_theirs.reconstruction, "reconstruction without mask")
    assert unmasked_mine.loss is None
    # One mask for every image, (num_patches,) or (1, num_patches), broadcast as transformers does; its loss
    # divides the whole batch's masked error by that one mask's count (B times the expanded mask's loss).
    shared = torch.rand(num_patches, generator=rng) < 0.5
    for given in (shared, shared[None]):
        with torch.no_grad():
            theirs, mine = hf(x, bool_masked_pos=given), ours(x, bool_masked_pos=given)
        close(mine.reconstruction, theirs.reconstruction, f"reconstruction with one mask {tuple(given.shape)}")
        close(mine.loss, theirs.loss, f"MIM loss with one mask {tuple(given.shape)}")


@pytest.mark.parametrize("name", ["two_stage", "four_stage_small_last", "not_divisible_by_window"])
def test_backbone_feature_maps(name, tmp_path, rng):
    config = PARITY_CONFIGS[name]
    stages = ["stem"] + [f"stage{i + 1}" for i in range(len(config["depths"]))]
    hf = hf_model("Swinv2Backbone", config, out_features=stages)
    ours = ours_from_hf("Swinv2Backbone", hf, tmp_path)
    assert ours.out_features == hf.out_features and ours.channels == hf.channels
    x = input_for(config, rng)
    with torch.no_grad():
        theirs = hf(x, output_hidden_states=True, output_attentions=True)
        mine = ours(x, output_hidden_states=True, output_attentions=True)
    assert len(mine.feature_maps) == len(theirs.feature_maps) == len(stages)
    for i, (a, b) in enumerate(zip(mine.feature_maps, theirs.feature_maps)):
        close(a, b, f"feature_maps[{i}]")
    for i, (a, b) in enumerate(zip(mine.hidden_states, theirs.hidden_states)):
        close(a, b, f"backbone hidden_states[{i}]")
    for i, (a, b) in enumerate(zip(mine.attentions, theirs.attentions)):
        close(a, b, f"backbone attentions[{i}]")


def test_backbone_out_indices(tmp_path, rng):
    config = PARITY_CONFIGS["four_stage_small_last"]
    hf = hf_model("Swinv2Backbone", config, out_indices=[1, 3])
    ours = ours_from_hf("Swinv2Backbone", hf, tmp_path)
    assert ours.out_features == ["stage1", "stage3"] and ours.channels == hf.channels == [16, 64]
    x = input_for(config, rng)
    with torch.no_grad():
        theirs, mine = hf(x), ours(x)
    for a, b in zip(mine.feature_maps, theirs.feature_maps):
        close(a, b, "feature map")
    # other stages chosen on the built backbone, as transformers' BackboneMixin allows
    for attribute, value in (("out_features", ["stem", "stage2", "stage4"]), ("out_indices", [2])):
        setattr(hf, attribute, value)
        setattr(ours, attribute, value)
        assert (ours.out_features, ours.out_indices, ours.channels) == (hf.out_features, hf.out_indices, hf.channels)
        with torch.no_grad():
            theirs, mine = hf(x), ours(x)
        assert len(mine.feature_maps) == len(theirs.feature_maps) == len(value)
        for a, b in zip(mine.feature_maps, theirs.feature_maps):
            close(a, b, f"feature map after setting {attribute}")
    with pytest.raises(ValueError, match="unknown stage"):
        ours.out_features = ["stage9"]


def test_backbone_stage_choice_is_its_own(tmp_path) -> None:
    """Setting out_features on one backbone leaves another built from the same config alone (as in
    transformers, where the choice is the module's), and save_pretrained keeps the choice."""
    config = Swinv2Config(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
    first, second = Swinv2Backbone(config), Swinv2Backbone(config)
    first.out_features = ["stem", "stage1"]
    assert first.out_indices == [0, 1]
    assert second.out_features == config.out_features == ["stage2"]
    second.out_indices = [1]
    assert second.out_features == ["stage1"] and config.out_indices == [2]
    assert first.out_features == ["stem", "stage1"]
    first.save_pretrained(tmp_path)
    assert Swinv2Backbone.from_pretrained(tmp_path).out_features == ["stem", "stage1"]


def test_head_mask_matches_transformers(tmp_path, rng):
    """transformers applies a stage's row of head_mask to the stage's first block; with one block per stage
    its semantics and ours coincide."""
    config = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    hf = hf_model("Swinv2Model", config)
    ours = ours_from_hf("Swinv2Model", hf, tmp_path)
    x = input_for(config, rng)
    for head_mask in (torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0], [0.5, 0.25]])):
        with torch.no_grad():
            theirs = hf(x, head_mask=head_mask, output_attentions=True)
            mine = ours(x, head_mask=head_mask, output_attentions=True)
        close(mine.last_hidden_state, theirs.last_hidden_state, f"last_hidden_state with head_mask {head_mask}")
        for a, b in zip(mine.attentions, theirs.attentions):
            close(a, b, "attentions with head_mask")


def test_head_mask_per_block_as_transformers_broadcasts_it(tmp_path, rng):
    """transformers' only head mask for stages deeper than one block: `(num_stages, depth, heads, 1, 1)`, one
    row per block (its 1-D and 2-D masks fail there). The same as our `(num_stages, depth, heads)`."""
    config = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)
    hf = hf_model("Swinv2Model", config)
    ours = ours_from_hf("Swinv2Model", hf, tmp_path)
    x = input_for(config, rng)
    head_mask = torch.rand(2, 2, 2, generator=rng)
    with torch.no_grad():
        theirs = hf(x, head_mask=head_mask[..., None, None], output_attentions=True)
        for mask in (head_mask[..., None, None], head_mask):
            mine = ours(x, head_mask=mask, output_attentions=True)
            close(mine.last_hidden_state, theirs.last_hidden_state, f"last_hidden_state, head_mask {mask.shape}")
            for a, b in zip(mine.attentions, theirs.attentions):
                close(a, b, "attentions with a per-block head_mask")


def test_head_mask_broadcast_forms_as_transformers_multiplies_them(tmp_path, rng):
    """transformers multiplies block j of stage i's probabilities `(B * windows, heads, N, N)` by
    `head_mask[i, j]` as it broadcasts: one value per block, or one per head and token pair. Stages of
    different depths index a mask as deep as the deepest."""
    config = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=4)
    hf = hf_model("Swinv2Model", config)
    ours = ours_from_hf("Swinv2Model", hf, tmp_path)
    x = input_for(config, rng)
    for shape in ((2, 2, 1, 1, 1), (2, 2, 2, 16, 16), (2, 2, 1, 16, 1)):
        head_mask = torch.rand(shape, generator=rng)
        with torch.no_grad():
            theirs = hf(x, head_mask=head_mask, output_attentions=True)
            mine = ours(x, head_mask=head_mask, output_attentions=True)
        close(mine.last_hidden_state, theirs.last_hidden_state, f"last_hidden_state, head_mask {shape}")
        for a, b in zip(mine.attentions, theirs.attentions):
            close(a, b, f"attentions, head_mask {shape}")


def test_head_mask_per_stage_list_against_explicit_reference(rng):
    """A per-stage head mask with different head counts: zeroing a head equals zeroing its slice of the
    attention output before the projection (computed here by hand on one block)."""
    config = swinv2.Swinv2Config(image_size=16, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[2, 4],
                                 window_size=4)
    model = swinv2.Swinv2Model(config).eval()
    x = torch.randn(1, 3, 16, 16, generator=rng)
    head_mask = [torch.tensor([1.0, 0.0]), None]
    block = model.stages[0].blocks[0]
    with torch.no_grad():
        tokens = model.embeddings(x)
        windows = tokens.reshape(-1, 16, 8)  # grid 4x4 = one window of 16 tokens
        mask = block.attention_mask(4, 4, torch.float32, windows.device)
        _, probs = block.attn.forward_explicit(windows, mask)
        _, _, v = block.attn._project(windows)
        per_head = probs @ v  # (1, heads, N, d)
        per_head[:, 1] = 0
        expected = block.attn.proj(per_head.transpose(1, 2).reshape(1, 16, 8))
        got, masked_probs = block.attn.forward_explicit(windows, mask, head_mask[0])
        out = model(x, head_mask=head_mask, output_attentions=True)
    close(got, expected, "attention output with a masked head")
    assert torch.all(masked_probs[:, 1] == 0) and torch.all(out.attentions[0][:, 1] == 0)
    assert not torch.all(out.attentions[0][:, 0] == 0)


@pytest.mark.parametrize("image_size", [32, [32, 48]], ids=["square", "non-square"])
def test_absolute_position_embeddings(image_size, tmp_path, rng, monkeypatch):
    """transformers 4.57 allocates N+1 absolute positions and then fails to add them to N tokens; the oracle
    here is its embedding code with the unused first row skipped (the Microsoft code's `x + absolute_pos_embed`).
    A non-square grid (8x12 patches: 97 rows in transformers' file) too."""
    from transformers.models.swinv2 import modeling_swinv2 as hf_swinv2

    def fixed_forward(self, pixel_values, bool_masked_pos=None, interpolate_pos_encoding=False):
        embeddings, output_dimensions = self.patch_embeddings(pixel_values)
        embeddings = self.norm(embeddings)
        if bool_masked_pos is not None:
            mask = bool_masked_pos.unsqueeze(-1).type_as(embeddings)
            embeddings = embeddings * (1.0 - mask) + self.mask_token.expand_as(embeddings) * mask
        embeddings = embeddings + self.position_embeddings[:, 1:]
        return self.dropout(embeddings), output_dimensions

    monkeypatch.setattr(hf_swinv2.Swinv2Embeddings, "forward", fixed_forward)
    config = dict(PARITY_CONFIGS["two_stage"], use_absolute_embeddings=True, image_size=image_size)
    hf = hf_model("Swinv2ForImageClassification", config, num_labels=3)
    ours = ours_from_hf("Swinv2ForImageClassification", hf, tmp_path)
    patches = 64 if image_size == 32 else 96
    assert ours.swinv2.embeddings.position_embeddings.shape == (1, patches, 16)
    x = input_for(config, rng, size=(32, 32) if image_size == 32 else tuple(image_size))
    with torch.no_grad():
        close(ours(x).logits, hf(x).logits, "logits with absolute position embeddings")
    # and our folder loads back into transformers with the same (N+1)-row layout
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(
        back.swinv2.embeddings.position_embeddings[:, 1:], hf.swinv2.embeddings.position_embeddings[:, 1:]
    )


def test_return_dict_false_tuples_match_transformers(tmp_path, rng):
    """The tuples index like transformers': the pooler's slot stays (None) in a model without pooling."""
    config = PARITY_CONFIGS["two_stage"]
    x = input_for(config, rng)
    for pooling in (True, False):
        torch.manual_seed(0)
        hf = transformers.Swinv2Model(transformers.Swinv2Config(**config), add_pooling_layer=pooling)
        perturb_(hf, torch.Generator().manual_seed(1))
        hf.save_pretrained(tmp_path / str(pooling))
        ours = swinv2.Swinv2Model.from_pretrained(tmp_path / str(pooling), add_pooling_layer=pooling).eval()
        for extra in ({}, {"output_hidden_states": True}, {"output_attentions": True, "output_hidden_states": True}):
            with torch.no_grad():
                theirs, mine = hf(x, return_dict=False, **extra), ours(x, return_dict=False, **extra)
            assert len(mine) == len(theirs), (pooling, extra)
            for i, (a, b) in enumerate(zip(mine, theirs)):
                assert (a is None) == (b is None), (pooling, extra, i)
                if isinstance(a, torch.Tensor):
                    close(a, b, f"tuple[{i}] (pooling={pooling}, {extra})")
                elif a is not None:
                    assert len(a) == len(b)
                    for u, v in zip(a, b):
                        close(u, v, f"tuple[{i}] (pooling={pooling}, {extra})")


@pytest.mark.parametrize("kind", ["Swinv2Model", "Swinv2ForImageClassification", "Swinv2ForMaskedImageModeling",
                                  "Swinv2Backbone"])
def test_our_folder_loads_into_transformers(kind, tmp_path, rng):
    """save_pretrained writes transformers' key names: no missing or unexpected keys, same outputs."""
    config = swinv2.Swinv2Config(**PARITY_CONFIGS["four_stage_small_last"], num_labels=4, encoder_stride=32)
    torch.manual_seed(3)
    ours = getattr(swinv2, kind)(config).eval()

    perturb_(ours, torch.Generator().manual_seed(4))
    ours.save_pretrained(tmp_path)
    theirs, info = getattr(transformers, kind).from_pretrained(tmp_path, output_loading_info=True)
    theirs.eval()
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    x = input_for(PARITY_CONFIGS["four_stage_small_last"], rng)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    for field in a:
        if isinstance(a[field], torch.Tensor):
            close(a[field], b[field], f"{kind}.{field}")
        else:
            for i, (u, v) in enumerate(zip(a[field], b[field])):
                close(u, v, f"{kind}.{field}[{i}]")


def test_heads_load_from_each_other(tmp_path, rng):
    """A classifier checkpoint into the bare model drops the head; a bare checkpoint into a classifier gives a
    fresh head with a warning naming it."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2ForImageClassification", config, num_labels=3)
    hf.save_pretrained(tmp_path / "cls")
    base = swinv2.Swinv2Model.from_pretrained(tmp_path / "cls")
    x = input_for(config, rng)
    with torch.no_grad():
        close(base(x).pooler_output, hf.swinv2(x).pooler_output, "pooler from a classifier checkpoint")
    hf.swinv2.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning, match="classifier"):
        swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "base", num_labels=7)


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_training_gradients_match(name, tmp_path, rng):
    """Training mode, through the fast path's training attention: the loss and every parameter's gradient."""
    from swinv2.checkpoints import hf_to_ours, to_canonical

    config = {**PARITY_CONFIGS[name], "num_labels": 4}
    hf = hf_model("Swinv2ForImageClassification", config, drop_path_rate=0.0)
    ours = ours_from_hf("Swinv2ForImageClassification", hf, tmp_path)
    hf.train()
    ours.train()
    x = input_for(config, rng)
    labels = torch.randint(0, 4, (x.shape[0],), generator=rng)
    theirs, mine = hf(x, labels=labels), ours(x, labels=labels)
    theirs.loss.backward()
    mine.loss.backward()
    close(mine.loss, theirs.loss, "loss")
    expected = hf_to_ours({n: p.grad for n, p in hf.named_parameters()})
    actual, _ = to_canonical({n: p.grad for n, p in ours.named_parameters()}, "swinv2")
    assert actual.keys() == expected.keys()
    for param_name, grad in actual.items():
        close(grad, expected[param_name], f"gradient of {param_name}")


def test_masked_image_modeling_training_gradients_match(tmp_path, rng):
    """SimMIM pre-training: mask tokens, the reconstruction loss and every gradient, in training mode (the
    CPU training step's hand-written backward passes), padding the second stage's grid to the window."""
    from swinv2.checkpoints import hf_to_ours, to_canonical

    config = {**PARITY_CONFIGS["not_divisible_by_window"], "image_size": 48, "encoder_stride": 8}
    hf = hf_model("Swinv2ForMaskedImageModeling", config, drop_path_rate=0.0)
    ours = ours_from_hf("Swinv2ForMaskedImageModeling", hf, tmp_path)
    hf.train()
    ours.train()
    x = input_for(config, rng)
    mask = torch.rand(2, (48 // 4) ** 2, generator=rng) < 0.6
    theirs, mine = hf(x, bool_masked_pos=mask), ours(x, bool_masked_pos=mask)
    theirs.loss.backward()
    mine.loss.backward()
    close(mine.loss, theirs.loss, "MIM loss")
    expected = hf_to_ours({n: p.grad for n, p in hf.named_parameters() if p.grad is not None})
    actual, _ = to_canonical({n: p.grad for n, p in ours.named_parameters() if p.grad is not None}, "swinv2")
    assert actual.keys() == expected.keys() and any("mask_token" in k for k in actual)
    for param_name, grad in actual.items():
        close(grad, expected[param_name], f"gradient of {param_name}")


def test_bf16_training_gradients_are_as_accurate_as_transformers(tmp_path, rng, monkeypatch):
    """bf16 autocast training on a CPU with native bf16 (forced here): each gradient's distance from the fp32
    gradients is no larger than transformers' own bf16 gradients'. The position bias and the logit scale
    are the sensitive ones: their gradients sum the scores' gradients over every window, which transformers
    computes in fp32 (its scores are widened by the fp32 logit scale); half-precision ones were 3-10x off."""
    from swinv2.checkpoints import hf_to_ours, to_canonical

    monkeypatch.setattr(swinv2.modeling, "CPU_NATIVE_BF16", True)  # else bf16 falls back to fp32 here
    config = dict(image_size=38, patch_size=7, embed_dim=24, depths=[1, 2, 1], num_heads=[4, 3, 1], window_size=3,
                  num_labels=3)  # a 6x6 grid padded to windows of 3 in stage 2
    errors = {"transformers": {}, "swinv2": {}}
    for seed in range(3):
        hf = hf_model("Swinv2ForImageClassification", config, seed=seed, drop_path_rate=0.0).train()
        ours = ours_from_hf("Swinv2ForImageClassification", hf, tmp_path / str(seed)).train()
        x = input_for(config, rng, batch=4)
        labels = torch.randint(0, 3, (4,), generator=rng)

        def gradients(model, bf16: bool, canonical, x=x, labels=labels) -> dict[str, torch.Tensor]:
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x, labels=labels).loss
            loss.backward()
            return canonical({n: p.grad.double() for n, p in model.named_parameters()})

        exact = gradients(hf, False, hf_to_ours)
        for name, model, canonical in (
            ("transformers", hf, hf_to_ours), ("swinv2", ours, lambda g: to_canonical(g, "swinv2")[0])
        ):
            for key, grad in gradients(model, True, canonical).items():
                if exact[key].norm() > 0:  # (the 1x1 last stage's position bias has no gradient)
                    error = ((grad - exact[key]).norm() / exact[key].norm()).item()
                    errors[name][key] = errors[name].get(key, 0.0) + error / 3
    ratios = {k: errors["swinv2"][k] / errors["transformers"][k] for k in errors["swinv2"]}
    sensitive = [ratios[k] for k in ratios if "cpb_mlp" in k or "logit_scale" in k]
    assert len(sensitive) == 3 * 4  # the position-bias MLP (3 tensors) and logit scale of 3 blocks
    # Measured: 0.65-1.6 per tensor (geometric mean 1.0); in half precision they were 1.0-3.4 (mean 1.6).
    assert max(ratios.values()) < 2.0, ratios
    assert math.prod(sensitive) ** (1 / len(sensitive)) < 1.25, ratios


@pytest.mark.parametrize("window, shift", [(2, 1), (4, 2), (4, 1), (7, 3), (8, 4)])
def test_shifted_window_mask_matches_transformers(window, shift):
    """The shifted-window mask (built in closed form) is transformers' (nine slice assignments) for every
    padded grid, square or not, a single window wide included."""
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

    from swinv2.layers import shifted_window_mask

    config = transformers.Swinv2Config(window_size=window, embed_dim=8, num_heads=[2])
    for height in range(window, 4 * window + 1, window):
        for width in range(window, 3 * window + 1, window):
            layer = Swinv2Layer(config, 8, (4 * window, 4 * window), 2, shift_size=shift)
            expected = layer.get_attn_mask(height, width, torch.float32)
            assert torch.equal(shifted_window_mask(height, width, window, shift), expected), (height, width)


def _scrambled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`perturb_`, then far from any initialisation (every matrix + N(0, 0.5)), logit scales at their clamp:
    scores span [-100, 100], where the shift mask's value shows."""
    perturb_(model, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(math.log(100.0))
            elif p.dim() > 1:
                p.add_(0.5 * torch.randn(p.shape, generator=generator))
    return model.double()  # (fp32 rounding, amplified by such weights, would blur the comparison: ~2e-3)


def test_shift_mask_value_follows_the_weights_library(tmp_path, rng):
    """transformers adds its -100 shift mask twice (-200), timm (like Microsoft and torchvision) once: with
    scores spanning +-100 (2-channel heads at the logit-scale clamp) each is matched, on its own weights, and
    the other value would be far off (so the comparison can fail)."""
    import timm

    config = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[8, 16], window_size=4)
    x = input_for(config, rng).double()
    torch.manual_seed(0)
    hf = _scrambled(transformers.Swinv2Model(transformers.Swinv2Config(**config)).eval(), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    ours = swinv2.Swinv2Model.from_pretrained(tmp_path / "hf").double()
    assert ours.config.shift_mask_value == -200.0 and "shift_mask_value" not in ours.config.to_dict()
    once = swinv2.Swinv2Model.from_pretrained(tmp_path / "hf", shift_mask_value=-100.0).double()
    with torch.no_grad():
        theirs = hf(x).last_hidden_state
        mine, other = ours(x).last_hidden_state, once(x).last_hidden_state
    torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-9)
    assert (other - theirs).abs().max() > 0.1 * theirs.abs().max()

    timm_model = timm.create_model(
        "swinv2_tiny_window8_256", img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(8, 16),
        window_size=4, num_classes=5,
    )
    timm_model = _scrambled(timm_model.eval(), seed=2)
    (tmp_path / "timm").mkdir()
    torch.save(timm_model.state_dict(), tmp_path / "timm" / "model.pth")
    read = dict(image_size=32, window_size=4)
    ours = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "timm" / "model.pth", **read)
    assert ours.config.shift_mask_value == -100.0 and ours.config.to_dict()["shift_mask_value"] == -100.0
    twice = swinv2.Swinv2ForImageClassification.from_pretrained(
        tmp_path / "timm" / "model.pth", shift_mask_value=-200.0, **read
    )
    with torch.no_grad():
        theirs = timm_model(x)
        mine, other = ours.double()(x).logits, twice.double()(x).logits
    torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-9)
    assert (other - theirs).abs().max() > 0.02 * theirs.abs().max()
    # a config given for timm's weights (config=, convert --config) computes as timm too, unless it sets a value
    given = Swinv2Config(**ours.config.to_dict() | {"shift_mask_value": -200.0})
    assert "shift_mask_value" not in given.to_dict()
    by_config = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "timm" / "model.pth", config=given)
    assert by_config.config.shift_mask_value == -100.0 and given.shift_mask_value == -200.0
    from swinv2.checkpoints import convert

    convert(tmp_path / "timm" / "model.pth", tmp_path / "converted", "hf", config=given)
    converted = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "converted").double()
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, theirs, atol=1e-9, rtol=1e-9)
    # saved and read back, the value stays with the weights
    ours.save_pretrained(tmp_path / "ours")
    assert swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "ours").config.shift_mask_value == -100.0
    with pytest.raises(ValueError, match="shift_mask_value must be negative"):
        Swinv2Config(shift_mask_value=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cached_mask_is_the_folded_sum_rounded_once(dtype):
    """A shifted block's cached mask (summed straight into `dtype`) is bit for bit the fp32 sum of the position
    bias and transformers' shift mask rounded to `dtype`, as the mask autograd sees in training."""
    from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

    from swinv2.layers import Swinv2Block

    torch.manual_seed(0)
    block = Swinv2Block(dim=16, num_heads=2, window=4, shift=2)
    with torch.no_grad():
        for p in block.attn.cpb_mlp.parameters():
            p.normal_(0, 0.5)
    config = transformers.Swinv2Config(window_size=4, embed_dim=16, num_heads=[2])
    shift_mask = Swinv2Layer(config, 16, (12, 8), 2, shift_size=2).get_attn_mask(12, 8, torch.float32)
    expected = (block.attn.position_bias().unsqueeze(0) + shift_mask.unsqueeze(1)).to(dtype)
    with torch.no_grad():
        cached = block.attention_mask(12, 8, dtype, torch.device("cpu"))
    assert cached.dtype == dtype and torch.equal(cached, expected)
    assert torch.equal(block.attention_mask(12, 8, dtype, torch.device("cpu")).detach(), expected)  # autograd's


def _hidden_state_loss(kind: str, out, weights: list[torch.Tensor]) -> torch.Tensor:
    """A loss that reaches every output with its own random weights (the head's, the last state's, each map's)."""
    if kind == "Swinv2Backbone":
        return sum((m * w).sum() for m, w in zip(out.feature_maps, weights))
    if kind == "Swinv2ForImageClassification":
        return out.loss
    return (out.last_hidden_state * weights[0]).sum() + (out.pooler_output * weights[1]).sum()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(
    ("kind", "name"),
    [("Swinv2Model", "not_divisible_by_window"), ("Swinv2ForImageClassification", "two_stage"),
     ("Swinv2Backbone", "four_stage_small_last")],
)
def test_gradients_with_respect_to_hidden_states_match(kind, name, mode, tmp_path, rng):
    """Hidden states are in the autograd graph, as transformers' are (saliency maps, Grad-CAM): the gradient of
    a loss with respect to each `hidden_states[i]` equals transformers' on the same weights (tolerance 1e-5), in
    eval mode (grad enabled) and through the training fast path. Our `reshaped_hidden_states[i]` carry the
    same gradient in their (B, C, H, W) form (transformers' are side views without one)."""
    config = {**PARITY_CONFIGS[name], "drop_path_rate": 0.0}
    extra = {"num_labels": 3} if kind == "Swinv2ForImageClassification" else {}
    if kind == "Swinv2Backbone":
        extra["out_features"] = ["stem"] + [f"stage{i + 1}" for i in range(len(config["depths"]))]
    hf = hf_model(kind, config, **extra)
    ours = ours_from_hf(kind, hf, tmp_path)
    hf.train(mode == "train")
    ours.train(mode == "train")
    x = input_for(config, rng)
    kwargs = {"labels": torch.randint(0, 3, (2,), generator=rng)} if extra.get("num_labels") else {}
    theirs = hf(x, output_hidden_states=True, **kwargs)
    mine = ours(x, output_hidden_states=True, **kwargs)
    if kind == "Swinv2Backbone":
        shapes = [m.shape for m in theirs.feature_maps]
    elif kind == "Swinv2Model":
        shapes = [theirs.last_hidden_state.shape, theirs.pooler_output.shape]
    else:
        shapes = []
    weights = [torch.randn(s, generator=rng) for s in shapes]
    expected = torch.autograd.grad(_hidden_state_loss(kind, theirs, weights), theirs.hidden_states)
    loss = _hidden_state_loss(kind, mine, weights)
    actual = torch.autograd.grad(loss, mine.hidden_states, retain_graph=True)
    assert len(actual) == len(expected) == len(config["depths"]) + 1
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert b.abs().max() > 0, f"hidden_states[{i}]: transformers' gradient is zero, the test shows nothing"
        close(a, b, f"gradient w.r.t. hidden_states[{i}]")
    if kind != "Swinv2Backbone":
        maps = torch.autograd.grad(loss, mine.reshaped_hidden_states)
        for i, (a, b) in enumerate(zip(maps, mine.reshaped_hidden_states)):
            close(a, expected[i].transpose(1, 2).reshape(b.shape), f"gradient w.r.t. reshaped_hidden_states[{i}]")


@pytest.mark.parametrize("encoder_stride", [4, 16])
def test_masked_image_modeling_with_another_encoder_stride(encoder_stride, tmp_path, rng):
    """An encoder_stride other than patch_size * 2**(num_stages - 1) (= 8 here): the reconstruction is the
    decoder's whole output, (16, 16) or (64, 64) pixels for 32, as transformers returns it (not cropped: its
    pixels line up with nothing in the input); with a mask, where transformers stops on a shape error in its
    L1 loss, a ValueError names encoder_stride and the value that fits."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2ForMaskedImageModeling", config, encoder_stride=encoder_stride)
    ours = ours_from_hf("Swinv2ForMaskedImageModeling", hf, tmp_path)
    x = input_for(config, rng)
    with torch.no_grad():
        theirs, mine = hf(x).reconstruction, ours(x).reconstruction
    assert mine.shape[-2:] == (4 * encoder_stride,) * 2
    close(mine, theirs, f"reconstruction with encoder_stride={encoder_stride}")
    mask = torch.rand(2, 64, generator=rng) < 0.5
    fits = r"must equal patch_size \* 2\*\*\(num_stages - 1\) = 8; set encoder_stride=8"
    with pytest.raises(ValueError, match=rf"encoder_stride \({encoder_stride}\) {fits}"):
        ours(x, bool_masked_pos=mask)


def test_masked_image_modeling_crops_only_the_padding(tmp_path, rng):
    """With the fitting stride, an input that is not a multiple of the patch gets its reconstruction cropped
    to its size: transformers' reconstruction of the padded input (32 x 32 for 30 x 29), cut to (30, 29)."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2ForMaskedImageModeling", config, encoder_stride=8)
    ours = ours_from_hf("Swinv2ForMaskedImageModeling", hf, tmp_path)
    x = input_for(config, rng, size=(30, 29))
    with torch.no_grad():
        theirs, mine = hf(x).reconstruction, ours(x).reconstruction
    assert theirs.shape[-2:] == (32, 32)
    close(mine, theirs[..., :30, :29], "reconstruction of a padded input")


def test_masked_image_modeling_drops_partial_patches_in_the_peer_layouts(tmp_path, rng):
    """timm's, torchvision's and Microsoft's patch convolutions drop the pixels of a partial patch, and so do
    their layouts here: a 30 x 29 input is read as its 28 x 28 whole patches (7 x 7, where transformers pads
    to 8 x 8). The encoder's output, the reconstruction (of the pixels the model saw) and the loss over the
    masked patches are transformers' on the cropped input (torchvision's layout: the same windows there)."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2ForMaskedImageModeling", config, encoder_stride=8)
    hf.save_pretrained(tmp_path / "hf")
    ours = swinv2.Swinv2ForMaskedImageModeling.from_pretrained(tmp_path / "hf", window_layout="torchvision")
    x = input_for(config, rng, size=(30, 29))
    mask = torch.rand(2, 49, generator=rng) < 0.5
    # (transformers' head reads the mask at its config's 8 x 8 grid: its encoder, decoder and loss, written out)
    with torch.no_grad():
        encoded = hf.swinv2(x[..., :28, :28], bool_masked_pos=mask, output_hidden_states=True)
        reconstruction = hf.decoder(encoded.last_hidden_state.transpose(1, 2).reshape(2, -1, 4, 4))
        mine = ours(x, bool_masked_pos=mask, output_hidden_states=True)
    pixels = mask.reshape(2, 1, 7, 7).repeat_interleave(4, 2).repeat_interleave(4, 3).float()
    error = torch.nn.functional.l1_loss(x[..., :28, :28], reconstruction[..., :28, :28], reduction="none")
    loss = (error * pixels).sum() / (pixels.sum() + 1e-5) / 3
    assert mine.reconstruction.shape[-2:] == (28, 28)
    close(mine.reconstruction, reconstruction[..., :28, :28], "reconstruction of the whole patches")
    close(mine.loss, loss, "loss over the masked whole patches")
    close(mine.hidden_states[0], encoded.hidden_states[0], "embeddings of the whole patches")
    with pytest.raises(ValueError, match=r"must have 49 patches|49"):
        ours(x, bool_masked_pos=torch.zeros(2, 64, dtype=torch.bool))  # transformers' 8 x 8 grid: not this one
    with pytest.raises(ValueError, match=r"3x40 pixels hold no whole 4x4 patch.*resize the images to at least 4x4"):
        ours(torch.randn(1, 3, 3, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.uint8])
def test_numeric_zero_one_masks_are_taken_as_transformers_takes_them(dtype, tmp_path, rng):
    """bool_masked_pos given as 0/1 numbers: the reconstruction and the loss of transformers given the same
    mask, and of the bool mask (tolerance 1e-5)."""
    config = PARITY_CONFIGS["two_stage"]
    hf = hf_model("Swinv2ForMaskedImageModeling", config, encoder_stride=8)
    ours = ours_from_hf("Swinv2ForMaskedImageModeling", hf, tmp_path)
    x = input_for(config, rng)
    mask = torch.rand(2, 64, generator=rng) < 0.5
    with torch.no_grad():
        theirs, mine, as_bool = hf(x, bool_masked_pos=mask.to(dtype)), ours(x, bool_masked_pos=mask.to(dtype)), ours(
            x, bool_masked_pos=mask
        )
    close(mine.reconstruction, theirs.reconstruction, f"reconstruction with a {dtype} mask")
    close(mine.loss, theirs.loss.float(), f"loss with a {dtype} mask")  # (float64 for a float64 mask there)
    close(mine.reconstruction, as_bool.reconstruction, f"reconstruction with a {dtype} mask against bool")
    close(mine.loss, as_bool.loss, f"loss with a {dtype} mask against bool")
