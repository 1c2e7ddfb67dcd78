"""Swinv2Config: documented defaults, transformers' config.json in both directions, validation."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers

import swinv2
from swinv2 import Swinv2Config

DOCUMENTED_DEFAULTS = dict(
    image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
    window_size=7, pretrained_window_sizes=[0, 0, 0, 0], mlp_ratio=4.0, qkv_bias=True, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0, drop_path_rate=0.1, hidden_act="gelu", use_absolute_embeddings=False,
    initializer_range=0.02, layer_norm_eps=1e-5, encoder_stride=32,
)


def test_documented_defaults():
    config = Swinv2Config()
    for name, value in DOCUMENTED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.out_features == ["stage4"] and config.out_indices == [4]
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.num_layers == 4 and config.hidden_size == 768
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.problem_type is None and config.use_return_dict
    assert not config.output_hidden_states and not config.output_attentions


def test_defaults_agree_with_transformers():
    ours, theirs = Swinv2Config(), transformers.Swinv2Config()
    for name in DOCUMENTED_DEFAULTS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.out_features == theirs.out_features and ours.out_indices == theirs.out_indices


def test_transformers_config_json_round_trip(tmp_path):
    theirs = transformers.Swinv2Config(
        image_size=192, window_size=12, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
        pretrained_window_sizes=[12, 12, 12, 6], id2label={0: "cat", 1: "dog", 2: "bird"},
        out_features=["stage2", "stage4"], problem_type="single_label_classification", drop_path_rate=0.2,
    )
    theirs.save_pretrained(tmp_path / "theirs")
    ours = Swinv2Config.from_pretrained(tmp_path / "theirs")
    assert ours.embed_dim == 128 and ours.depths == [2, 2, 18, 2] and ours.pretrained_window_sizes == [12, 12, 12, 6]
    assert ours.id2label == {0: "cat", 1: "dog", 2: "bird"} and ours.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert ours.out_features == ["stage2", "stage4"] and ours.out_indices == [2, 4]
    assert ours.problem_type == "single_label_classification" and ours.drop_path_rate == 0.2
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.Swinv2Config.from_pretrained(tmp_path / "ours")
    for name in [*DOCUMENTED_DEFAULTS, "out_features", "out_indices", "id2label", "problem_type"]:
        assert getattr(back, name) == getattr(theirs, name), name
    assert back.label2id == ours.label2id


def test_unknown_keys_survive(tmp_path):
    data = Swinv2Config(embed_dim=48).to_dict()
    data["my_custom_field"] = {"nested": [1, 2]}
    data["transformers_version"] = "4.57.6"
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = Swinv2Config.from_pretrained(tmp_path)
    config.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["my_custom_field"] == {"nested": [1, 2]} and saved["transformers_version"] == "4.57.6"
    assert saved["model_type"] == "swinv2" and saved["embed_dim"] == 48


def test_attributes_as_transformers_reads_them(tmp_path):
    """transformers' attribute_map names, unknown keys as attributes (set at construction, by `update` or
    afterwards, and saved), and `to_dict` with int `id2label` keys, on fresh random settings."""
    rng = random.Random()  # (num_labels from 3: transformers does not save the default 2's id2label)
    stages = rng.randint(1, 4)
    settings = dict(depths=[rng.randint(1, 3) for _ in range(stages)], embed_dim=8,
                    num_heads=[rng.choice([1, 2]) * 2**i for i in range(stages)], num_labels=rng.randint(3, 5),
                    my_flag=rng.random())
    ours, theirs = Swinv2Config(**settings), transformers.Swinv2Config(**settings)
    for name in ("num_hidden_layers", "num_attention_heads", "my_flag"):
        assert getattr(ours, name) == getattr(theirs, name), name
    change = {"window_size": rng.randint(2, 9), "my_flag": "changed", "my_other_flag": [1, 2]}
    for config in (ours, theirs):
        config.update(change)
        config.set_later = 5
    for name in [*change, "set_later"]:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.to_dict()["id2label"] == theirs.to_dict()["id2label"]
    assert all(isinstance(k, int) for k in ours.to_dict()["id2label"])
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    for folder in ("ours", "theirs"):
        saved = json.loads((tmp_path / folder / "config.json").read_text())
        assert list(saved["id2label"]) == [str(i) for i in range(settings["num_labels"])]
        for reader in (Swinv2Config, transformers.Swinv2Config):
            back = reader.from_pretrained(tmp_path / folder)
            assert back.id2label == theirs.id2label, (folder, reader)
            for name in [*change, "set_later"]:
                assert getattr(back, name) == getattr(theirs, name), (folder, reader, name)
    with pytest.raises(AttributeError, match="no attribute 'never_set'"):
        _ = ours.never_set


def test_num_labels_and_label_maps():
    config = Swinv2Config(num_labels=5)
    assert config.num_labels == 5 and config.id2label[4] == "LABEL_4"
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    config = Swinv2Config(id2label={"0": "a", "1": "b"})
    assert config.num_labels == 2 and config.id2label == {0: "a", 1: "b"} and config.label2id == {"a": 0, "b": 1}
    # names given as label2id alone: id2label is their inverse (transformers would keep LABEL_i placeholders
    # that disagree with the label2id it also keeps)
    config = Swinv2Config(label2id={"cat": 1, "dog": 0})
    assert config.id2label == {0: "dog", 1: "cat"} and config.label2id == {"cat": 1, "dog": 0}
    with pytest.raises(ValueError, match=r"label2id must map the names to the class indices 0..1"):
        Swinv2Config(label2id={"cat": 1, "dog": 2})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(depths=[2, 2], num_heads=[3, 6, 12]), "num_heads"),
        (dict(embed_dim=100, num_heads=[3, 6, 12, 24]), "embed_dim"),
        (dict(window_size=0), "window_size"),
        (dict(out_features=["stage9"]), "out_features"),
        (dict(out_indices=[7]), "out_indices"),
        (dict(out_features=["stage1"], out_indices=[2]), "out_features"),
        (dict(patch_size=0), "patch_size"),
        (dict(image_size="big"), "image_size"),
        (dict(image_size="32"), r"image_size must be an int or a pair of ints \(height, width\), got '32'"),
        (dict(depths="2,2"), "depths"),
        (dict(mlp_ratio=-1.0), "mlp_ratio"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(hidden_act="wobble"), "hidden_act"),
        (dict(qkv_bias="yes"), "qkv_bias"),
        (dict(num_channels=0), "num_channels"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(depths=[2, 2], num_heads=[3, 6], pretrained_window_sizes=[0]), "pretrained_window_sizes"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Swinv2Config(**kwargs)


NONSENSE = [
    ("layer_norm_eps", float("nan")), ("layer_norm_eps", float("inf")), ("initializer_range", float("nan")),
    ("initializer_range", float("inf")), ("initializer_range", -1.0), ("mlp_ratio", float("nan")),
    ("mlp_ratio", float("inf")), ("mlp_ratio", -1.0), ("image_size", 32.5), ("window_size", 0), ("patch_size", 0),
]


@pytest.mark.parametrize("field, value", NONSENSE, ids=[f"{f}={v}" for f, v in NONSENSE])
def test_nonsense_values_are_refused_naming_the_field_and_a_fix(field, value):
    """At construction, and when set afterwards, at the latest by building a model (which gave NaN outputs,
    or failed deep inside torch)."""
    small = dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4)
    message = rf"^{field} must .*got {value}; e\.g\. {field}=\S+ \(the default\)$"
    with pytest.raises(ValueError, match=message):
        Swinv2Config(**{**small, field: value})
    for cls in (swinv2.Swinv2Model, swinv2.Swinv2ForImageClassification, swinv2.Swinv2ForMaskedImageModeling,
                swinv2.Swinv2Backbone):
        config = Swinv2Config(**small)
        setattr(config, field, value)
        with pytest.raises(ValueError, match=message):
            cls(config)


def test_timm_and_torchvision_windows_and_always_partition(tmp_path):
    """window_size as timm takes it ((height, width), one per stage; two ints are always one window) and
    timm's always_partition, with the layouts that have them; the stage windows they give; the round trip
    through config.json; and errors that name the field and the fix."""
    small = dict(image_size=64, embed_dim=8, depths=[2, 2, 2], num_heads=[2, 2, 2])
    config = Swinv2Config(**small, window_layout="timm", window_size=(8, 4))
    assert [config.target_window(i) for i in range(3)] == [(8, 4)] * 3
    assert [config.stage_window(i) for i in range(3)] == [((8, 4), (4, 2)), ((8, 4), (0, 2)), ((4, 4), (0, 0))]
    config = Swinv2Config(**small, window_layout="timm", window_size=[8, (4, 2), 3])
    assert [config.target_window(i) for i in range(3)] == [(8, 8), (4, 2), (3, 3)]
    assert config.window_size == [8, [4, 2], 3]  # as config.json gives it back
    always = Swinv2Config(**small, window_layout="timm", window_size=8, always_partition=True)
    assert always.stage_window(2) == ((8, 8), (4, 4))  # a 4x4 grid: padded to the window, and shifted
    config = Swinv2Config(**small, window_layout="torchvision", window_size=[2, 6])
    assert config.stage_window(0) == ((2, 6), (1, 3))
    for saved in (config, always):
        saved.save_pretrained(tmp_path)
        assert Swinv2Config.from_pretrained(tmp_path) == saved
    assert "always_partition" not in config.to_dict() and always.to_dict()["always_partition"] is True
    with pytest.raises(ValueError, match=r"window_size \[8, 4\]: window_layout 'transformers' has one square "
                                         r"window side.*window_layout='timm' or 'torchvision'"):
        Swinv2Config(**small, window_size=[8, 4])
    with pytest.raises(ValueError, match=r"window_size \[8, 8, 8\]: window_layout 'microsoft' has one square"):
        Swinv2Config(**small, window_size=[8, 8, 8], window_layout="microsoft")
    with pytest.raises(ValueError, match=r"window_size must be .*one of either per stage \(3\), got \[8, 4, 2, 1\]"):
        Swinv2Config(**small, window_size=[8, 4, 2, 1], window_layout="timm")
    with pytest.raises(ValueError, match=r"window_size must be .*got \[8, \[4, 0\], 2\]"):
        Swinv2Config(**small, window_size=[8, [4, 0], 2], window_layout="timm")
    with pytest.raises(ValueError, match=r"always_partition is timm's setting and needs window_layout='timm'"):
        Swinv2Config(**small, always_partition=True)
    with pytest.raises(ValueError, match=r"always_partition must be true or false"):
        Swinv2Config(**small, window_layout="timm", always_partition=1)


def test_wrong_types_in_config_json(tmp_path):
    data = Swinv2Config().to_dict()
    data["depths"] = "2,2,6,2"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="depths"):
        Swinv2Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Swinv2Config.from_pretrained(tmp_path)


def test_other_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 768}))
    with pytest.raises(ValueError, match="'vit'"):
        Swinv2Config.from_pretrained(tmp_path)


def test_update_takes_to_dict_and_changes_nothing_when_invalid():
    """update() skips what to_dict derives (num_layers, hidden_size, stage_names), as transformers' update of its
    own to_dict works, and leaves the config as it was when the result would not be valid."""
    config = Swinv2Config(depths=[1, 1], num_heads=[1, 2], embed_dim=8)
    config.update(config.to_dict())
    config.update({"depths": [2, 2], "num_labels": 3})
    assert config.depths == [2, 2] and config.num_labels == 3
    with pytest.raises(ValueError):
        config.update({"depths": [2, 2, 6, 2]})  # num_heads still has two stages
    assert config.depths == [2, 2] and Swinv2Config.from_dict(config.to_dict()).depths == [2, 2]


def test_json_takes_use_diff_as_transformers(tmp_path) -> None:
    """`to_json_string`/`to_json_file` take transformers' `use_diff`: by default the generic fields that hold
    their defaults are left out (as transformers writes config.json), with use_diff=False every field."""
    import transformers

    fields = dict(image_size=32, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, output_attentions=True)
    ours, theirs = Swinv2Config(**fields), transformers.Swinv2Config(**fields)
    diff, full = json.loads(ours.to_json_string()), json.loads(ours.to_json_string(use_diff=False))
    assert diff["output_attentions"] is True and "return_dict" not in diff and full["return_dict"] is True
    their_diff = json.loads(theirs.to_json_string())
    assert {k: v for k, v in their_diff.items() if k in diff} == {k: v for k, v in diff.items() if k in their_diff}
    assert set(theirs.to_dict()) - set(full) <= set(transformers.PretrainedConfig().to_dict())  # only generic ones
    ours.to_json_file(tmp_path / "config.json", use_diff=False)
    assert Swinv2Config.from_json_file(tmp_path / "config.json").to_dict() == ours.to_dict()


def test_from_pretrained_records_the_dtype_it_loaded(tmp_path) -> None:
    """config.json says bfloat16, the model loads in float32 (the default): config.torch_dtype says float32, as
    in transformers (it kept 'bfloat16')."""
    from swinv2 import Swinv2Model

    config = Swinv2Config(image_size=32, embed_dim=16, depths=[2], num_heads=[2], window_size=4)
    config.torch_dtype = "bfloat16"
    Swinv2Model(config).to(torch.bfloat16).save_pretrained(tmp_path)
    assert Swinv2Model.from_pretrained(tmp_path).config.torch_dtype == torch.float32
    assert Swinv2Model.from_pretrained(tmp_path, dtype="auto").config.dtype == torch.bfloat16


def test_generic_attributes_read_as_transformers_reads_them(tmp_path) -> None:
    """Code written for transformers reads a config's generic attributes: the same values here, the dtype as a
    torch.dtype (config.json spells it), and the folder it came from as name_or_path."""
    from swinv2 import Swinv2Model

    kwargs = dict(image_size=32, embed_dim=16, depths=[2], num_heads=[2], window_size=4)
    ours, theirs = Swinv2Config(**kwargs, torch_dtype="float16"), transformers.Swinv2Config(**kwargs, dtype="float16")
    names = ["dtype", "torch_dtype", "pruned_heads", "is_encoder_decoder", "is_decoder", "tie_word_embeddings",
             "add_cross_attention", "attribute_map", "name_or_path", "pad_token_id", "tokenizer_class"]
    assert {n: getattr(ours, n) for n in names} == {n: getattr(theirs, n) for n in names}
    assert json.loads(ours.to_json_string())["torch_dtype"] == "float16" and "pruned_heads" not in ours.to_dict()
    Swinv2Model(Swinv2Config(**kwargs)).save_pretrained(tmp_path)
    assert Swinv2Model.from_pretrained(tmp_path).config.name_or_path == str(tmp_path)
    assert Swinv2Config.from_pretrained(tmp_path).name_or_path == str(tmp_path)
    assert Swinv2Config(**kwargs).name_or_path == "" and Swinv2Config(**kwargs).torch_dtype is None
