"""`swinv2 predict` and `swinv2 info` through the command line, on real photos and models saved by transformers."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers
from conftest import perturb_
from sklearn.datasets import load_sample_images

import swinv2
from swinv2.processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, imagenet_id2label

SRC = str(Path(swinv2.__file__).resolve().parent.parent)
SMALL = dict(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
NAMES = ["astronaut", "cat", "coffee mug", "pagoda", "flower", "rocket", "horse", "coin", "camera", "clock"]


def swinv2_cli(*args: str, stderr_fd: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m swinv2 ARGS` in a fresh interpreter, as the console script runs."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "swinv2", *map(str, args)],
        capture_output=stderr_fd is None,
        stdout=subprocess.PIPE if stderr_fd is not None else None,
        stderr=stderr_fd,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def save_hf_classifier(
    folder: Path, seed: int, photos: list[PIL.Image.Image], **config
) -> transformers.Swinv2ForImageClassification:
    """A transformers classifier with perturbed random weights, saved with its ViTImageProcessor.

    The pooled features of a random Swin V2 barely depend on the image (the final LayerNorm's bias dominates
    them), so the head is random directions standardised on the features of real photos: its top-5 then
    changes from photo to photo and is not decided by rounding.
    """
    torch.manual_seed(seed)
    model = transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**SMALL, **config)).eval()
    perturb_(model, torch.Generator().manual_seed(seed), scale=0.5)
    processor = transformers.ViTImageProcessor(
        size={"height": 64, "width": 64},
        resample=3,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )
    with torch.no_grad():
        features = model.swinv2(processor(photos, return_tensors="pt").pixel_values).pooler_output
        directions = torch.randn(model.classifier.weight.shape, generator=torch.Generator().manual_seed(seed + 1))
        model.classifier.weight.copy_(0.3 * directions / features.std(0).clamp(min=1e-3))
        model.classifier.bias.copy_(-(model.classifier.weight @ features.mean(0)))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Two transformers models and a folder of real photos (nested, in several formats and modes)."""
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    (photos / "more").mkdir(parents=True)
    PIL.Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    PIL.Image.fromarray(skimage.data.chelsea()).save(photos / "more" / "chelsea.jpg", quality=92)
    PIL.Image.fromarray(skimage.data.coffee()).convert("L").save(photos / "coffee_gray.png")
    china, flower = load_sample_images().images
    PIL.Image.fromarray(china).save(photos / "china.jpg", quality=92)
    PIL.Image.fromarray(flower).convert("RGBA").save(photos / "more" / "flower_rgba.png")
    # The heads are standardised on other photos than the ones they classify.
    others = [PIL.Image.fromarray(a) for a in (skimage.data.rocket(), skimage.data.camera(), skimage.data.coins())]
    save_hf_classifier(
        root / "named",
        seed=0,
        photos=others,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    save_hf_classifier(
        root / "imagenet", seed=3, photos=others, num_labels=1000
    )  # no names stored: LABEL_0 ... LABEL_999
    return root


def photo_files(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "photos").rglob("*") if p.is_file())


def run_json(*args) -> tuple[dict, subprocess.CompletedProcess]:
    proc = swinv2_cli("predict", *args, "--json")
    return json.loads(proc.stdout), proc


# ---------------------------------------------------------------------------------------------- agreement
def test_top5_matches_transformers_pipeline(workdir):
    files = photo_files(workdir)
    pipe = transformers.pipeline("image-classification", model=str(workdir / "named"), device="cpu")
    reference = pipe([str(f) for f in files], top_k=5)
    out, proc = run_json(workdir / "named", *files, "--top-k", "5", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert [r["image"] for r in out["results"]] == [str(f) for f in files]
    tops = set()
    for ours, ref in zip(out["results"], reference):
        assert [p["label"] for p in ours["predictions"]] == [r["label"] for r in ref]
        scores = np.array([p["probability"] for p in ours["predictions"]])
        # float32 forward passes that sum in different orders (fused attention here, explicit there), through a
        # head with large weights: the probabilities agree to a few 1e-5
        assert np.abs(scores - [r["score"] for r in ref]).max() <= 2e-4
        assert np.all(np.diff(scores) <= 0)
        tops.add(tuple(p["label"] for p in ours["predictions"]))
    assert len(tops) > 1, "the model should not give every photo the same top-5"
    assert out["errors"] == []


def test_unnamed_1000_class_head_gets_imagenet_names(workdir):
    files = photo_files(workdir)[:3]
    pipe = transformers.pipeline("image-classification", model=str(workdir / "imagenet"), device="cpu")
    reference = pipe([str(f) for f in files], top_k=5)
    names = imagenet_id2label(1000)
    out, proc = run_json(workdir / "imagenet", *files)
    assert proc.returncode == 0, proc.stderr
    for ours, ref in zip(out["results"], reference):
        expected = [int(r["label"].removeprefix("LABEL_")) for r in ref]
        assert [p["index"] for p in ours["predictions"]] == expected
        assert [p["label"] for p in ours["predictions"]] == [names[i] for i in expected]


# ---------------------------------------------------------------------------------------------- output
def test_table_on_a_folder(workdir):
    proc = swinv2_cli("predict", "named", "photos", "--top-k", "3", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no bar: stderr is not a terminal
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["image", "label", "probability"]
    assert len(lines) == 1 + 3 * len(photo_files(workdir))
    shown = [line.split()[0] for line in lines[1::3]]
    assert shown == [str(f.relative_to(workdir)) for f in photo_files(workdir)]
    for line in lines[1:]:
        probability = float(line.split()[-1])
        assert 0.0 < probability < 1.0
        assert any(name in line for name in NAMES)


def test_csv_file(workdir, tmp_path):
    target = tmp_path / "out.csv"
    proc = swinv2_cli("predict", workdir / "named", workdir / "photos", "--csv", target, "--top-k", "10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 10 * len(photo_files(workdir))
    assert list(rows[0]) == ["image", "rank", "index", "label", "probability"]
    for image in {r["image"] for r in rows}:  # all ten classes: the probabilities sum to one
        mine = [r for r in rows if r["image"] == image]
        assert [int(r["rank"]) for r in mine] == list(range(1, 11))
        assert abs(sum(float(r["probability"]) for r in mine) - 1.0) < 1e-4
        assert {r["label"] for r in mine} == set(NAMES)


def test_csv_path_without_its_folder_is_refused_before_the_work(workdir, tmp_path):
    for target, message in ((tmp_path / "missing" / "out.csv", "no folder"), (tmp_path, "that is a folder")):
        proc = swinv2_cli("predict", workdir / "named", workdir / "photos", "--csv", target)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "missing").exists()


def test_progress_bar_on_a_terminal(workdir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        shutil.copy(workdir / "photos" / "astronaut.png", folder / f"copy{i:02d}.png")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = swinv2_cli("predict", workdir / "named", folder, "--batch-size", "4", stderr_fd=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "predict" in terminal and "12/12" in terminal and "img" in terminal
    assert proc.stdout.count("copy") == 12


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture
def mixed_folder(workdir, tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(workdir / "photos" / "astronaut.png", folder / "good.png")
    shutil.copy(workdir / "photos" / "more" / "chelsea.jpg", folder / "cat.jpg")
    data = (workdir / "photos" / "china.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 4])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("these are holiday photos\n")
    (folder / ".hidden.png").write_bytes(b"not looked at")
    return folder


def test_bad_files_are_named_and_skipped(workdir, mixed_folder):
    proc = swinv2_cli("predict", workdir / "named", mixed_folder)
    assert proc.returncode == 1
    for name, problem in [
        ("truncated.jpg", "truncated or corrupt"),
        ("corrupt.png", ""),
        ("empty.jpg", "empty file"),
        ("readme.txt", "not an image file"),
    ]:
        line = next(line for line in proc.stderr.splitlines() if name in line)
        assert problem in line
    assert ".hidden.png" not in proc.stderr
    assert "2 image(s) classified, 4 input(s) failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[1::5]]
    assert rows == [str(mixed_folder / "cat.jpg"), str(mixed_folder / "good.png")]

    out, proc = run_json(workdir / "named", mixed_folder)
    assert proc.returncode == 1
    assert len(out["results"]) == 2
    assert sorted(Path(e["input"]).name for e in out["errors"]) == [
        "corrupt.png",
        "empty.jpg",
        "readme.txt",
        "truncated.jpg",
    ]
    empty = next(e for e in out["errors"] if e["input"].endswith("empty.jpg"))
    assert empty["error"] == "empty file (0 bytes)"  # the input is named beside it, not again in the message


def test_globs_and_missing_inputs(workdir):
    proc = swinv2_cli(
        "predict", workdir / "named", str(workdir / "photos" / "**" / "*.png"), workdir / "nope.jpg", "--json"
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert sorted(Path(r["image"]).name for r in out["results"]) == [
        "astronaut.png",
        "coffee_gray.png",
        "flower_rgba.png",
    ]
    assert "nope.jpg: no such file or folder" in proc.stderr
    proc = swinv2_cli("predict", workdir / "named", str(workdir / "photos" / "*.bmp"))
    assert proc.returncode == 1 and "no files match this pattern" in proc.stderr
    pipe = workdir / "a-pipe"
    if not pipe.exists():
        os.mkfifo(pipe)
    proc = swinv2_cli("predict", workdir / "named", pipe)  # exists, but is no file to read an image from
    assert proc.returncode == 1 and "a-pipe: not a regular file (a pipe, socket or device)" in proc.stderr


def test_model_problems_are_one_line(workdir, tmp_path):
    photo = workdir / "photos" / "astronaut.png"
    torch.save({"backbone.conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    headless = tmp_path / "headless"
    swinv2.Swinv2Model(swinv2.Swinv2Config(**SMALL)).save_pretrained(headless)
    broken_settings = tmp_path / "broken-settings"
    shutil.copytree(workdir / "named", broken_settings)
    (broken_settings / "preprocessor_config.json").write_text('{"size": {"height": 64}, ')
    cases = [
        (tmp_path / "missing-model", "neither a file nor a folder"),
        (tmp_path / "other.pth", "unknown checkpoint format"),
        (tmp_path / "broken.safetensors", "broken.safetensors"),
        (headless, "classifier.weight"),
        (workdir / "photos", "no weights found"),
        (broken_settings, "preprocessor_config.json"),
    ]
    for model, message in cases:
        proc = swinv2_cli("predict", model, photo)
        assert proc.returncode == 2, (model, proc.stderr)
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert str(model) in proc.stderr and message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_aspect_keeping_processor_runs_each_size_as_its_own_batch(workdir, tmp_path):
    """size={"shortest_edge": N} without a crop gives photos of different shapes: one batch per shape, and the
    same probabilities as one photo at a time."""
    model = tmp_path / "aspect"
    shutil.copytree(workdir / "named", model)
    settings = json.loads((model / "preprocessor_config.json").read_text())
    (model / "preprocessor_config.json").write_text(json.dumps({**settings, "size": {"shortest_edge": 48}}))
    files = [workdir / "photos" / "astronaut.png", workdir / "photos" / "china.jpg"]  # square and 427x640
    together, proc = run_json(model, *files, "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    for file, result in zip(files, together["results"]):
        alone, _ = run_json(model, file)
        expected = alone["results"][0]["predictions"]
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in expected]
        assert np.allclose([p["probability"] for p in result["predictions"]],
                           [p["probability"] for p in expected], atol=1e-6)


def test_image_settings_for_another_channel_count_are_one_line(workdir, tmp_path):
    model = tmp_path / "gray-settings"
    shutil.copytree(workdir / "named", model)
    settings = json.loads((model / "preprocessor_config.json").read_text())
    (model / "preprocessor_config.json").write_text(json.dumps({**settings, "image_mean": [0.5], "image_std": [0.5]}))
    proc = swinv2_cli("predict", model, workdir / "photos" / "astronaut.png")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "make 1-channel images" in proc.stderr and "the model takes 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "positive integer"),
        (["--batch-size", "x"], "positive integer"),
        (["--json", "--csv", "out.csv"], "not allowed with"),
        (["--device", "tpu"], "invalid choice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(workdir, args, message):
    """One line, named by the command (an unknown flag too, which argparse leaves to the top-level parser)."""
    proc = swinv2_cli("predict", workdir / "named", workdir / "photos", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.startswith("swinv2 predict: error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_no_command_and_missing_inputs_are_usage_errors(workdir):
    assert swinv2_cli().returncode == 2
    proc = swinv2_cli("predict", workdir / "named")
    assert proc.returncode == 2 and "INPUT" in proc.stderr


# ---------------------------------------------------------------------------------------------- info
def analytic_macs(config: dict, num_labels: int) -> int:
    """Multiply-accumulates of the small two-stage model at its own size, counted by hand."""
    size, patch, dim, window = config["image_size"], config["patch_size"], config["embed_dim"], config["window_size"]
    tokens = (size // patch) ** 2
    macs = tokens * 3 * patch * patch * dim  # patch embedding
    for stage, (depth, heads) in enumerate(zip(config["depths"], config["num_heads"])):
        d = dim * 2**stage
        block = (
            tokens * d * 3 * d  # qkv
            + 2 * tokens * window * window * d  # q k^T and attn v, inside the windows
            + tokens * d * d  # output projection
            + 2 * tokens * d * 4 * d  # MLP
            + (2 * window - 1) ** 2 * (2 * 512 + 512 * heads)  # continuous position bias MLP
        )
        macs += depth * block
        if stage < len(config["depths"]) - 1:
            macs += (tokens // 4) * 4 * d * 2 * d  # patch merging
            tokens //= 4
    return macs + dim * 2 ** (len(config["depths"]) - 1) * num_labels


def test_info_reports_parameters_macs_and_labels(workdir):
    proc = swinv2_cli("info", workdir / "named", "--json", "--labels", "3")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    reference = transformers.Swinv2ForImageClassification.from_pretrained(workdir / "named")
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    assert info["macs"] == analytic_macs(SMALL, 10)
    assert info["class"] == "Swinv2ForImageClassification"
    assert info["depths"] == [2, 2] and info["image_size"] == [64, 64]
    assert info["pretrained_window_sizes"] == [0, 0]  # one per stage, not the config's four defaults
    assert [s["tokens"] for s in info["stages"]] == [[16, 16], [8, 8]]
    assert info["num_labels"] == 10 and info["labels"] == NAMES[:3] and info["labels_from"] == "config"

    text = swinv2_cli("info", workdir / "imagenet")
    assert text.returncode == 0, text.stderr
    assert "MACs" in text.stdout and "FlopCounterMode" in text.stdout
    assert f"{analytic_macs(SMALL, 1000):,}" in text.stdout
    assert "1000 (from imagenet-1k): tench, Tinca tinca" in text.stdout


def test_info_windows_are_the_models_where_the_grid_shrinks_below_the_window(tmp_path):
    """28 px, patch 4, window 7 (the demo's geometry): stage 2 runs on 4x4 tokens (the odd 7x7 grid is padded
    by the merging) with a window of 3 and no shift, because the model sizes it from the floor-halved grid
    7 // 2, as transformers does; info used to print the padded grid's 4."""
    config = dict(image_size=28, patch_size=4, num_channels=1, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4],
                  window_size=7)
    torch.manual_seed(0)
    transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**config, num_labels=2)).save_pretrained(
        tmp_path / "m")
    proc = swinv2_cli("info", tmp_path / "m", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    ours = swinv2.Swinv2ForImageClassification.from_pretrained(tmp_path / "m")
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(tmp_path / "m")
    built = [[(b.window, b.shift) for b in stage.blocks] for stage in ours.swinv2.stages]
    assert [[(tuple(s["window"]), tuple(s["shift"]))] * len(blocks) for s, blocks in zip(stages, built)] == built
    assert [s["window"][0] for s in stages] == [b.window_size for b in (layer.blocks[0] for layer in
                                                                        theirs.swinv2.encoder.layers)] == [7, 3, 1]
    assert all(s["window"][0] == s["window"][1] for s in stages)
    assert [s["tokens"] for s in stages] == [[7, 7], [4, 4], [2, 2]]
    text = swinv2_cli("info", tmp_path / "m").stdout
    assert "stage 2      2 blocks, 2 heads, 32 channels, 4x4 tokens, window 3, not shifted" in text


def test_info_on_a_missing_model(tmp_path):
    proc = swinv2_cli("info", tmp_path / "nothing-here")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nothing-here" in proc.stderr


def test_a_model_that_gives_nan_is_refused(workdir, tmp_path):
    """NaN probabilities are no ranking: the model is named with the reason instead (a diverged training run)."""
    model = swinv2.Swinv2ForImageClassification.from_pretrained(workdir / "named")
    with torch.no_grad():
        model.classifier.bias[3] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    proc = swinv2_cli("predict", tmp_path / "nan", workdir / "photos" / "astronaut.png", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "gives NaN or infinite outputs: its weights hold NaN or infinite values" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["info"], ["predict", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(workdir, command):
    """`swinv2 info MODEL | head -1`: no BrokenPipeError traceback; the status of a command ended by SIGPIPE."""
    name, *flags = command
    inputs = [str(workdir / "photos")] if name == "predict" else []
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "swinv2", name, str(workdir / "named"), *inputs, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err


def test_a_pattern_that_matches_folders_searches_them(workdir):
    """'photos/m*' names the folder more/: its images are classified, as with the folder itself."""
    from swinv2.cli import _collect_inputs

    files, missing = _collect_inputs([str(workdir / "photos" / "m*")])
    assert missing == [] and [f.name for f in files] == ["chelsea.jpg", "flower_rgba.png"]
    files, missing = _collect_inputs([str(workdir / "photos" / "*")])
    assert missing == [] and sorted(files) == photo_files(workdir)


def test_info_labels_zero_shows_only_their_number_and_negative_is_refused(workdir, capsys):
    from swinv2.cli import main

    assert main(["info", str(workdir / "named"), "--labels", "0"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("labels"))
    assert line == "labels         10 (from config)"
    with pytest.raises(SystemExit) as info:
        main(["info", str(workdir / "named"), "--labels", "-3"])
    assert info.value.code == 2 and "--labels: expected an integer >= 0, got -3" in capsys.readouterr().err


def test_table_columns_line_up_for_wide_characters(workdir, tmp_path, capsys):
    """`猫.webp` takes 7 columns on a terminal, not 6: the labels and probabilities stay in their columns."""
    import unicodedata

    from swinv2.cli import main

    for name in ("猫.webp", "cat.webp", "ｃａｔ.webp"):  # CJK, ASCII and full-width Latin
        PIL.Image.fromarray(skimage.data.chelsea()).save(tmp_path / name)
    assert main(["predict", str(workdir / "named"), str(tmp_path), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def width(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    assert len(lines) == 1 + 3 * 2 and any("猫.webp" in line for line in lines)
    label_columns = set()
    for line in lines[1:]:
        head = line.rsplit(maxsplit=1)[0].rstrip()  # without the probability
        label = max((n for n in NAMES if head.endswith(n)), key=len)
        label_columns.add(width(head) - len(label))
    assert label_columns == {width(lines[0][: lines[0].index("label")])}
    assert len({width(line) for line in lines}) == 1  # the probabilities end in the same column


def test_python_warnings_are_one_line_each_and_once_per_place(workdir, monkeypatch, capsys):
    """A library warning reaches the command's user as `swinv2 info: warning: ...`, not as a source path, line
    number and source line; repeated at the same place, once, as Python shows it."""
    import warnings

    from swinv2 import cli

    count_macs = cli.count_macs

    def warning_count_macs(*args):
        for _ in range(2):
            warnings.warn("the model has a 1-channel input\n  that no transformers processor takes", UserWarning,
                          stacklevel=1)
        warnings.warn("an old setting", FutureWarning, stacklevel=1)
        return count_macs(*args)

    monkeypatch.setattr(cli, "count_macs", warning_count_macs)
    shown_before = warnings.showwarning
    assert cli.main(["info", str(workdir / "named")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "swinv2 info: warning: the model has a 1-channel input that no transformers processor takes",
        "swinv2 info: warning: FutureWarning: an old setting",
    ]
    assert warnings.showwarning is shown_before  # outside the command, Python's display again
