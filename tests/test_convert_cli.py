"""`swinv2 convert SRC DST --to {hf,microsoft,timm,torchvision}`: the files other libraries read, and back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import perturb_, torchvision_swinv2
from safetensors.torch import load_file
from timm.models.swin_transformer_v2 import SwinTransformerV2

import swinv2
from swinv2 import checkpoints as ck
from swinv2.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def small_model(kind: str = "Swinv2ForImageClassification", seed: int = 0, **config) -> torch.nn.Module:
    """A small model with every parameter moved away from its initial value (so a wrong mapping shows)."""
    torch.manual_seed(seed)
    fields = dict(image_size=64, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3)
    model = getattr(swinv2, kind)(swinv2.Swinv2Config(**{**fields, **config}))
    return perturb_(model, seed)


def hf_folder(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def run(*argv: str) -> int:
    return main(["convert", *map(str, argv)])


def assert_same_folder(a: Path, b: Path, **changed) -> None:
    """Same weights and the same config (but for the `changed` fields, which `b` holds)."""
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(left) == sorted(right), sorted(set(left) ^ set(right))
    for key in left:
        assert left[key].dtype == right[key].dtype and torch.equal(left[key], right[key]), key
    expected = swinv2.Swinv2Config.from_pretrained(a, **changed)
    assert expected == swinv2.Swinv2Config.from_pretrained(b)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("microsoft", "model.pth"),
        ("timm", "model.safetensors"),
        ("timm", "model.pth"),
        ("torchvision", "model.safetensors"),
        ("torchvision", "model.pth"),
    ],
)
def test_there_and_back_is_the_identity(tmp_path, fmt, name, capsys):
    source = hf_folder(small_model(), tmp_path / "source")
    middle = tmp_path / name
    assert run(source, middle, "--to", fmt) == 0
    assert f"-> {middle} ({fmt})" in capsys.readouterr().out
    back = tmp_path / "back"
    # A plain .pth state dict for timm or torchvision carries no config: window and image size are given back.
    extra = ["--config", str(source / "config.json")] if name.endswith(".pth") and fmt != "microsoft" else []
    assert run(middle, back, "--to", "hf", *extra) == 0
    # (a config given for timm's or torchvision's weights takes their library's shifted windows: the mask
    # added once, and timm's window layout)
    library = {"shift_mask_value": -100.0, "window_layout": fmt}
    assert_same_folder(source, back, **(library if extra else {}))


def test_chain_through_every_format_is_lossless(tmp_path):
    source = hf_folder(small_model(pretrained_window_sizes=[2, 2]), tmp_path / "source")
    steps = [("microsoft", "a.pth"), ("timm", "b.safetensors"), ("torchvision", "c.safetensors"), ("hf", "d")]
    current = source
    for fmt, name in steps:
        assert run(current, tmp_path / name, "--to", fmt) == 0
        current = tmp_path / name
    assert_same_folder(source, current)


def test_outputs_load_in_their_libraries(tmp_path):
    """What convert writes is read by timm and torchvision as they read their own files."""
    model = small_model(embed_dim=32)
    source = hf_folder(model, tmp_path / "source")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x).logits

    assert run(source, tmp_path / "timm.safetensors", "--to", "timm") == 0
    timm_model = SwinTransformerV2(
        img_size=64, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=3
    ).eval()
    timm_model.load_state_dict(load_file(tmp_path / "timm.safetensors"))

    assert run(source, tmp_path / "tv.pth", "--to", "torchvision") == 0
    tv_model = torchvision_swinv2(num_classes=3).eval()
    tv_model.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True))

    with torch.no_grad():
        assert (timm_model(x) - expected).abs().max() < 1e-5
        assert (tv_model(x) - expected).abs().max() < 1e-5


def test_torchvision_file_without_size_asks_for_it_instead_of_guessing(tmp_path, capsys):
    """torchvision's weights do not depend on the image size, so its files do not record it; but the size sizes
    each stage's window and shift here, so a guess changes the numbers (convert used to write image_size 32 for
    this 64 px model, whose stage 2 then goes unshifted: its encoder output differs from torchvision's by 4e-3).
    Without a telling name it is asked for, as for timm's files; given, the converted model computes as
    torchvision (atol 1e-5 on the encoder output, ~6 in size, and the logits; measured ~1e-6)."""
    torch.manual_seed(0)
    reference = perturb_(torchvision_swinv2(num_classes=3, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window=4))
    weights = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), weights)
    assert run(weights, tmp_path / "back", "--to", "hf") == 2
    err = capsys.readouterr().err
    assert "torchvision checkpoint does not record its image_size" in err and "trained at 256 px" in err
    assert "image_size=256" in err and "--config PRESET_OR_CONFIG_JSON" in err
    assert not (tmp_path / "back").exists()
    with pytest.raises(ck.CheckpointError, match=r"does not record its image_size"):
        swinv2.Swinv2ForImageClassification.from_pretrained(weights)
    # predict has no --config: it names the command that records one
    import PIL.Image
    import skimage.data

    PIL.Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    assert main(["predict", str(weights), str(tmp_path / "cat.png")]) == 2
    err = capsys.readouterr().err
    assert f"swinv2 convert {weights} FOLDER --to hf --config PRESET_OR_CONFIG_JSON" in err

    config = swinv2.Swinv2Config(image_size=64, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                                 num_labels=3)
    config.save_pretrained(tmp_path / "config")
    assert run(weights, tmp_path / "back", "--to", "hf", "--config", tmp_path / "config" / "config.json") == 0
    converted = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "back")
    direct = swinv2.Swinv2ForImageClassification.from_pretrained(weights, image_size=64)
    guessed = swinv2.Swinv2ForImageClassification.from_pretrained(weights, image_size=32)
    assert converted.config.image_size == direct.config.image_size == 64
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # the encoder's output (torchvision's normed last stage), where the windows show; then the logits
        features = reference.norm(reference.features(x)).flatten(1, 2)
        logits = reference(x)
        for model in (converted, direct):
            assert (model.swinv2(x).last_hidden_state - features).abs().max() < 1e-5
            assert (model(x).logits - logits).abs().max() < 1e-5
        # another size changes nothing torchvision computes (its layout takes the shifts from each input's
        # grid, and its window never shrinks): only the size images are prepared at
        assert (guessed.swinv2(x).last_hidden_state - features).abs().max() < 1e-5


def test_simmim_model_converts_to_microsofts_simmim_layout(tmp_path):
    model = small_model("Swinv2ForMaskedImageModeling", encoder_stride=8)
    source = hf_folder(model, tmp_path / "source")
    assert run(source, tmp_path / "simmim.pth", "--to", "microsoft") == 0
    raw = torch.load(tmp_path / "simmim.pth", weights_only=True)["model"]
    assert "encoder.mask_token" in raw and "decoder.0.weight" in raw
    assert run(tmp_path / "simmim.pth", tmp_path / "back", "--to", "hf") == 0
    assert_same_folder(source, tmp_path / "back")


def test_dtype_is_kept(tmp_path):
    model = small_model().to(torch.bfloat16)
    source = hf_folder(model, tmp_path / "source")
    assert run(source, tmp_path / "timm.safetensors", "--to", "timm") == 0
    state = load_file(tmp_path / "timm.safetensors")
    assert {v.dtype for v in state.values()} == {torch.bfloat16}


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert run(tmp_path / "missing.pth", tmp_path / "out.pth", "--to", "timm") == 2
    err = capsys.readouterr().err
    assert "swinv2 convert: error:" in err and "--config" not in err  # a missing file needs no config

    with_positions = hf_folder(small_model(use_absolute_embeddings=True), tmp_path / "positions")
    assert run(with_positions, tmp_path / "out.pth", "--to", "timm") == 2
    err = capsys.readouterr().err
    assert "position_embeddings" in err and "convert to hf or microsoft" in err
    assert not (tmp_path / "out.pth").exists()

    plain = tmp_path / "plain.pth"
    assert run(hf_folder(small_model(), tmp_path / "s"), plain, "--to", "timm") == 0
    assert run(plain, tmp_path / "back", "--to", "hf") == 2  # no config, no telling name
    err = capsys.readouterr().err
    assert "window_size" in err and "On the command line: --config PRESET_OR_CONFIG_JSON" in err

    assert run(hf_folder(small_model(), tmp_path / "t"), tmp_path / "out.npz", "--to", "timm") == 2
    assert ".safetensors or .pth" in capsys.readouterr().err

    # Microsoft's code reads torch.load(path)["model"]: a .safetensors file would have no "model" entry
    assert run(hf_folder(small_model(), tmp_path / "u"), tmp_path / "ms.safetensors", "--to", "microsoft") == 2
    assert "give the microsoft file a .pth suffix" in capsys.readouterr().err
    assert not (tmp_path / "ms.safetensors").exists()

    with pytest.raises(SystemExit) as info:
        run(with_positions, tmp_path / "x", "--to", "keras")
    assert info.value.code == 2


def test_a_weight_that_does_not_fit_is_named_as_the_file_names_it(tmp_path, capsys):
    """The error names the timm key that is in the file (not our name for it) and a fix the command has."""
    from safetensors.torch import save_file

    model = small_model()
    state = ck.export_state_dict(model, "timm")
    state["layers.1.blocks.0.mlp.fc1.weight"] = torch.randn(64, 16)
    save_file(state, tmp_path / "bad.safetensors")
    config = hf_folder(model, tmp_path / "hf") / "config.json"
    assert run(tmp_path / "bad.safetensors", tmp_path / "out.pth", "--to", "torchvision", "--config", config) == 2
    err = capsys.readouterr().err
    assert "weight layers.1.blocks.0.mlp.fc1.weight has shape (64, 16)" in err and "(convert --config)" in err
    assert "ignore_mismatched_sizes" not in err and "swinv2.stages" not in err


def test_console_script_entry_point(tmp_path):
    source = hf_folder(small_model(), tmp_path / "source")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "ms.pth"
    result = subprocess.run(
        [sys.executable, "-m", "swinv2.cli", "convert", str(source), str(out), "--to", "microsoft"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "(hf, Swinv2ForImageClassification" in result.stdout
    assert ck.detect_format(torch.load(out, weights_only=True)["model"]) == "microsoft"


def test_hf_output_keeps_the_image_settings(tmp_path):
    """A model normalised with mean and std 0.5: without its preprocessor_config.json the converted folder's
    processor would be rebuilt with ImageNet's, and its predictions would change silently."""
    source = hf_folder(small_model(), tmp_path / "source")
    processor = swinv2.Swinv2ImageProcessor(size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(source)
    assert run(source, tmp_path / "out", "--to", "hf") == 0
    carried = swinv2.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert carried.to_dict() == swinv2.AutoImageProcessor.from_pretrained(source).to_dict()
    assert list(carried.image_mean) == [0.5] * 3


def test_a_failed_write_leaves_no_file_nor_folder(tmp_path, capsys, monkeypatch):
    """A read-only folder is named without the temporary file's name; an hf folder that a full disk stopped
    half-way is removed when this convert made it (and an existing one is kept)."""
    import errno
    import tempfile

    source = hf_folder(small_model(), tmp_path / "source")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / ".x.pth.abcdefgh.tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        assert run(source, tmp_path / "ro" / "x.pth", "--to", "timm") == 2
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'ro' / 'x.pth'} (Read-only file system): write elsewhere" in err
    assert ".tmp" not in err and not (tmp_path / "ro" / "x.pth").exists()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    assert run(source, tmp_path / "new" / "hf", "--to", "hf") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "existing").mkdir()
    assert run(source, tmp_path / "existing", "--to", "hf") == 2
    assert (tmp_path / "existing").is_dir()
    capsys.readouterr()

    def full_torch(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_torch)  # a file under folders this convert makes: none is left
    assert run(source, tmp_path / "new2" / "a" / "b" / "ms.pth", "--to", "microsoft") == 2
    assert "No space left on device" in capsys.readouterr().err and not (tmp_path / "new2").exists()


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path, capsys):
    """Converting into an existing folder writes its files together: where one cannot be written (here
    config.json is a folder), the weights already there are not replaced either, nothing is left beside the
    folder, and the error names the obstacle, not the staging folder's file."""
    first, second = hf_folder(small_model(seed=1), tmp_path / "a"), hf_folder(small_model(seed=2), tmp_path / "b")
    for fmt, target in (("hf", tmp_path / "out-hf"), ("timm", tmp_path / "out-timm")):
        assert run(first, target, "--to", fmt) == 0
        before = (target / "model.safetensors").read_bytes()
        (target / "config.json").unlink()
        (target / "config.json").mkdir()
        assert run(second, target, "--to", fmt) == 2
        err = capsys.readouterr().err
        assert f"{target / 'config.json'} is a folder (or not a regular file) where the checkpoint has a file" in err
        assert (target / "model.safetensors").read_bytes() == before
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
        (target / "config.json").rmdir()
        assert run(second, target, "--to", fmt) == 0 and (target / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("name", ["hf.pth", "hf.safetensors", "hf.bin", "hf.PT"])
def test_to_hf_with_a_file_name_is_refused(tmp_path, capsys, name):
    """--to hf writes a folder: a DST named like a weights file would become a folder called `hf.pth`."""
    source = tmp_path / "ms.pth"
    ck.convert(hf_folder(small_model(), tmp_path / "source"), source, "microsoft")
    assert run(source, tmp_path / name, "--to", "hf") == 2
    err = capsys.readouterr().err
    assert err.startswith("swinv2 convert: error: --to hf writes a folder") and "give a folder name" in err
    assert err.count("\n") == 1 and not (tmp_path / name).exists()
    (tmp_path / "existing.pth").mkdir()  # a folder of that name already: the user's choice
    assert run(source, tmp_path / "existing.pth", "--to", "hf") == 0
    assert (tmp_path / "existing.pth" / "config.json").is_file()


def test_a_head_of_another_size_than_the_configs_names_num_labels(tmp_path, capsys):
    """--config names window and image size, and the head size with them (a preset: ImageNet's 1000): where the
    file's classifier has another, the error names the fix the command has, --num-labels, which then writes the
    file's own head (transformers' logits on the output equal the model's)."""
    import transformers

    model = small_model(num_labels=3)
    timm_file = tmp_path / "timm.pth"
    assert run(hf_folder(model, tmp_path / "source"), timm_file, "--to", "timm") == 0
    small_model(num_labels=1000).config.to_json_file(tmp_path / "config.json")
    assert run(timm_file, tmp_path / "out", "--to", "hf", "--config", tmp_path / "config.json") == 2
    err = capsys.readouterr().err
    assert "classifier has 3 labels (head.fc.weight (3, 32)), the config 1000" in err and "--num-labels 3" in err
    assert not (tmp_path / "out").exists()
    args = ("--to", "hf", "--config", tmp_path / "config.json", "--num-labels", "3")
    assert run(timm_file, tmp_path / "out", *args) == 0
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (theirs(x).logits - model(x).logits).abs().max() < 1e-5
    assert run(timm_file, tmp_path / "again", "--to", "hf", "--num-labels", "3") == 2
    assert "--num-labels sets the head size of --config" in capsys.readouterr().err


def test_a_model_without_head_is_not_written_for_torchvision(tmp_path, capsys):
    """torchvision's SwinTransformer always has `head`: a headless file would fail its strict load_state_dict, so
    convert refuses, naming the formats that hold an encoder alone (and timm's num_classes=0 loads it)."""
    encoder = small_model("Swinv2Model")
    source = hf_folder(encoder, tmp_path / "encoder")
    assert "head.weight" in torchvision_swinv2(num_classes=3).state_dict()
    assert run(source, tmp_path / "tv.pth", "--to", "torchvision") == 2
    err = capsys.readouterr().err
    assert "torchvision's Swin V2 always has a classifier (head.weight, head.bias)" in err
    assert "Swinv2Model has none" in err and "timm (num_classes=0)" in err
    assert not (tmp_path / "tv.pth").exists()
    assert run(source, tmp_path / "timm.safetensors", "--to", "timm") == 0
    timm_model = SwinTransformerV2(
        img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=0
    ).eval()
    timm_model.load_state_dict(load_file(tmp_path / "timm.safetensors"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (timm_model(x) - encoder(x).pooler_output).abs().max() < 1e-5


def test_to_hf_says_where_transformers_computes_otherwise(tmp_path, capsys):
    """A folder written for transformers from another library's layout: where transformers would compute other
    numbers at image_size (timm's layout at 40x24 px: stage 2's 5x3 grid, a window 4x3 for timm, 4x4 for
    transformers), or builds no model at all (timm's rectangular windows), convert says so, and it is true;
    where transformers computes alike it is silent, and transformers' logits are ours (atol 1e-5)."""
    import transformers

    cases = [
        (dict(window_layout="timm", shift_mask_value=-100.0), (64, 64), None),
        (dict(window_layout="timm", image_size=[40, 24]), (40, 24), r"stage 2 \(5x3 patches\): transformers window"),
        (dict(window_layout="timm", window_size=[4, 2]), (64, 64), r"transformers builds no model of this config"),
    ]
    for i, (fields, size, warning) in enumerate(cases):
        capsys.readouterr()
        folder = tmp_path / f"hf{i}"
        assert run(hf_folder(small_model(**fields), tmp_path / f"source{i}"), folder, "--to", "hf") == 0
        err = capsys.readouterr().err
        if warning is None:
            assert "warning" not in err
        else:
            assert re.search(warning, " ".join(err.split())), err
        if "builds no model" in (warning or ""):
            continue
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            theirs = transformers.Swinv2ForImageClassification.from_pretrained(folder).eval()(x).logits
            ours = swinv2.Swinv2ForImageClassification.from_pretrained(folder)(x).logits
        diff = (theirs - ours).abs().max().item()
        assert (diff > 1e-3) if warning else (diff < 1e-5), f"{fields}: {diff:.2e}"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("Swinv2ForImageClassification", {}),
        ("Swinv2ForImageClassification", dict(window_layout="timm", window_size=[4, 2], always_partition=True,
                                              image_size=[64, 48], num_channels=1, hidden_act="relu")),
        ("Swinv2Model", dict(window_layout="timm", window_size=[4, [2, 4]], pretrained_window_sizes=[6, 3])),
    ],
    ids=["default", "timm-rectangular-always-partition-1-channel-relu", "encoder-per-stage-windows"],
)
def test_timm_folder_is_built_by_timm_as_written(tmp_path, kind, fields):
    """`--to timm` with a folder writes what timm's save_for_hf writes (config.json with architecture,
    model_args and pretrained_cfg, model.safetensors): `timm.create_model("local-dir:...", pretrained=True)`
    builds the same model (logits or pooled features within 1e-5), its pretrained_cfg carries the source's
    image settings, and swinv2 reads the folder back as the same config."""
    import timm

    from swinv2.processing import Swinv2ImageProcessor

    source = hf_folder(small_model(kind, **fields), tmp_path / "source")
    if fields.get("num_channels") == 1:  # image settings of the source's own, for timm's pretrained_cfg
        processor = Swinv2ImageProcessor(image_mean=0.5, image_std=[0.25], resample="bilinear", num_channels=1)
        with pytest.warns(UserWarning, match=r"no transformers image processor applies images of 1 channel"):
            processor.save_pretrained(source)
    assert run(source, tmp_path / "timm", "--to", "timm") == 0
    assert sorted(p.name for p in (tmp_path / "timm").iterdir()) == ["config.json", "model.safetensors"]
    theirs = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    ours = getattr(swinv2, kind).from_pretrained(source)
    channels, (height, width) = ours.config.num_channels, ours.config.image_hw
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x).logits if kind == "Swinv2ForImageClassification" else ours(x).pooler_output
        diff = (theirs(x) - expected).abs().max().item()
    assert expected.std() > 0.05 and diff < 1e-5, diff
    if channels == 1:
        assert (theirs.pretrained_cfg["mean"], theirs.pretrained_cfg["std"]) == ([0.5], [0.25])
        assert theirs.pretrained_cfg["interpolation"] == "bilinear"
    back = swinv2.Swinv2Config.from_pretrained(tmp_path / "timm")
    for name in ("always_partition", "image_size", "num_channels", "hidden_act", "depths"):
        assert getattr(back, name) == getattr(ours.config, name), name
    stages = range(back.num_layers)  # (the same windows, perhaps spelled as timm reads them: [[4, 4], [2, 4]])
    assert [back.target_window(i) for i in stages] == [ours.config.target_window(i) for i in stages]
    assert back.pretrained_window_sizes[: back.num_layers] == ours.config.pretrained_window_sizes[: back.num_layers]


def test_timm_folder_refuses_an_activation_timm_computes_otherwise(tmp_path, capsys):
    source = hf_folder(small_model(hidden_act="gelu_new"), tmp_path / "source")
    assert run(source, tmp_path / "timm", "--to", "timm") == 2
    assert "hidden_act 'gelu_new' is none that timm computes alike" in capsys.readouterr().err
    assert not (tmp_path / "timm").exists()
