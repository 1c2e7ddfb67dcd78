"""End to end, through the `swinv2` command in real subprocesses: train on real photos, SIGKILL a run and
resume it (same weights as an uninterrupted run), evaluate, load the export in transformers; SimMIM
pre-training then fine-tuning; and `torchrun --nproc-per-node 2` (DDP and FSDP2, gloo) against one process
on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from photos import TINY_MODEL, make_photo_folder
from safetensors.torch import load_file

import swinv2
from swinv2 import Swinv2Config, Swinv2ForImageClassification, Swinv2ForMaskedImageModeling
from swinv2.training import TrainConfig, list_checkpoints, read_metrics, train

SRC = Path(swinv2.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("photos"), train_per_class=20, val_per_class=8)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    Swinv2Config(**TINY_MODEL).to_json_file(path)
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # the same threads in every run: the same float reductions
    return env


def _swinv2(*args: str, torchrun: int = 0) -> list[str]:
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun),
                "-m", "swinv2.cli", *args]
    return [sys.executable, "-m", "swinv2.cli", *args]


def _run(command: list[str], timeout: float = 120) -> str:
    """Run to the end and return stdout; on a timeout the whole process group (torchrun's workers too) is
    killed."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{stdout}\n{stderr}"
    return stdout


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last" / "model.safetensors")


def test_train_sigkill_resume_evaluate_and_load_in_transformers(photos, tiny_config, tmp_path):
    steps = 16  # 60 images, batch 8: 7 steps per epoch, so the kill and the end fall inside epochs
    args = ["train", "--data", str(photos), "--model", str(tiny_config), "--max-steps", str(steps),
            "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "3", "--checkpoint-every", "2",
            "--log-every", "3", "--num-workers", "0", "--no-progress", "--no-tensorboard"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_swinv2(*args, "--output", str(whole)))

    # The same run, killed with SIGKILL once it has passed step 5, then resumed.
    process = subprocess.Popen(_swinv2(*args, "--output", str(killed)), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(r.get("step", 0) >= 5 for r in read_metrics(killed)):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    left = list_checkpoints(killed)
    assert left, "no checkpoint was written before the kill"
    assert not (killed / "last").exists(), "the run finished before it was killed; the test proves nothing"
    resumed_from = int(left[0].stem.split("_")[1])
    assert 2 <= resumed_from < steps
    _run(_swinv2("train", "--output", str(killed), "--resume"))  # the run's own settings are kept

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill + resume"
    # The same metrics records, without duplicates; log windows and epoch sums that span the kill included.
    def comparable(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in read_metrics(run)]

    assert [r["step"] for r in comparable(killed) if r["kind"] == "train"] == [3, 6, 9, 12, 15, 16]
    assert comparable(killed) == comparable(whole)

    # What a person looks at: the resolved config, metrics, plots and the exported models.
    for name in ("train_config.json", "metrics.jsonl", "eval.json", "loss.png", "lr.png", "accuracy.png",
                 "confusion_matrix.png", "best/config.json", "best/preprocessor_config.json",
                 "last/model.safetensors"):
        assert (whole / name).is_file(), name
    resolved = json.loads((whole / "train_config.json").read_text())
    assert resolved["max_steps"] == steps and resolved["resolved"]["classes"] == ["cat", "coffee", "rocket"]
    val_records = [r for r in read_metrics(whole) if r["kind"] == "val"]
    assert [r["step"] for r in val_records] == [7, 14, 16]
    best_top1 = max(r["val_top1"] for r in val_records)
    assert best_top1 > 0.5  # three classes of real photos; chance is 1/3
    scored = json.loads((whole / "eval.json").read_text())  # says which weights it scored: last/, at the end
    assert (scored["weights"], scored["step"], scored["top1"]) == ("last", 16, val_records[-1]["val_top1"])

    # `swinv2 evaluate` on the best export reproduces the validation accuracy it was chosen for.
    done = _run(_swinv2("evaluate", str(whole / "best"), "--data", str(photos), "--json", "--num-workers", "0"))
    result = json.loads(done)
    assert result["num_images"] == 24 and result["top1"] == pytest.approx(best_top1, abs=1e-9)
    assert sum(map(sum, result["confusion"])) == 24 and set(result["per_class"]) == {"cat", "coffee", "rocket"}

    # `swinv2 predict` on the export agrees with it, image by image
    predicted = json.loads(_run(_swinv2("predict", str(whole / "best"), str(photos / "val"), "--json")))
    assert not predicted["errors"] and len(predicted["results"]) == 24
    hits = sum(r["predictions"][0]["label"] == Path(r["image"]).parent.name for r in predicted["results"])
    assert hits / 24 == pytest.approx(result["top1"], abs=1e-9)

    # transformers loads the export (weights, labels and preprocessor) and predicts what we predict.
    import transformers
    from PIL import Image

    image = Image.open(sorted((photos / "val" / "rocket").glob("*.png"))[0])
    theirs_processor = transformers.AutoImageProcessor.from_pretrained(whole / "best")
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(whole / "best").eval()
    ours_processor = swinv2.processing.Swinv2ImageProcessor.from_pretrained(whole / "best")
    ours = Swinv2ForImageClassification.from_pretrained(whole / "best").eval()
    pixels = ours_processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, theirs_processor(image, return_tensors="pt")["pixel_values"],
                               atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, theirs(pixel_values=pixels).logits, atol=1e-4, rtol=1e-4)
    assert theirs.config.id2label == {0: "cat", 1: "coffee", 2: "rocket"}


def test_pretrain_then_fine_tune(photos, tiny_config, tmp_path):
    common = dict(data=str(photos), num_workers=0, progress=False, tensorboard=False, batch_size=8)
    pre = train(TrainConfig(task="simmim", model=str(tiny_config), output=str(tmp_path / "pre"), max_steps=4,
                            mask_patch_size=8, norm_targets=True, norm_target_window=7, lr=1e-3, **common))
    assert pre.steps == 4 and (tmp_path / "pre" / "reconstructions.png").is_file()
    pretrained = Swinv2ForMaskedImageModeling.from_pretrained(pre.last)
    assert pretrained.config.architectures == ["Swinv2ForMaskedImageModeling"]

    tuned = train(TrainConfig(model=str(pre.last), output=str(tmp_path / "tuned"), max_steps=3, layer_decay=0.8,
                              lr=1e-9, min_lr=0.0, warmup_steps=0, weight_decay=0.0, **common))
    classifier = Swinv2ForImageClassification.from_pretrained(tuned.last)
    # a vanishing lr: the encoder is still the pre-trained one, under a new 3-class head
    ours = dict(classifier.swinv2.named_parameters())
    for name, value in pretrained.swinv2.named_parameters():
        if name != "embeddings.mask_token":
            torch.testing.assert_close(ours[name], value, atol=1e-6, rtol=0)
    assert classifier.config.id2label == {0: "cat", 1: "coffee", 2: "rocket"}
    assert "top1" in tuned.metrics and 0.0 <= tuned.metrics["top1"] <= 1.0


def test_compiled_training_gives_the_eager_weights(photos, tiny_config, tmp_path):
    """`--compile`: the same steps as eager (classification and SimMIM), and the checkpoints keep plain names."""
    common = dict(data=str(photos), model=str(tiny_config), num_workers=0, progress=False, tensorboard=False,
                  batch_size=8, max_steps=3, lr=2e-3, warmup_steps=1, crop_padding=2)
    for task in ("classification", "simmim"):
        extra = dict(task=task, mask_patch_size=8) if task == "simmim" else {}
        eager = train(TrainConfig(output=str(tmp_path / f"{task}-eager"), **common, **extra))
        counters = torch._dynamo.utils.counters
        counters.clear()
        compiled = train(TrainConfig(output=str(tmp_path / f"{task}-compiled"), compile=True, **common, **extra))
        assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]  # it did compile, whole
        a, b = load_file(eager.last / "model.safetensors"), load_file(compiled.last / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4,
                                       msg=lambda m, k=f"{task} {key}": f"{k}: {m}")
        assert abs(compiled.metrics["train_loss"] - eager.metrics["train_loss"]) < 1e-4


def _torchrun_args(photos: Path, tiny_config: Path) -> list[str]:
    return ["train", "--data", str(photos), "--model", str(tiny_config), "--max-steps", "3", "--lr", "2e-3",
            "--warmup-steps", "1", "--num-workers", "0", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def one_process_run(photos, tiny_config, tmp_path_factory) -> Path:
    """The reference: one process, global batch 8."""
    out = tmp_path_factory.mktemp("one") / "run"
    _run(_swinv2(*_torchrun_args(photos, tiny_config), "--batch-size", "8", "--output", str(out)))
    return out


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(photos, tiny_config, one_process_run, tmp_path, fsdp):
    _run(_swinv2(*_torchrun_args(photos, tiny_config), "--batch-size", "4", "--output", str(tmp_path / "two"),
                 *(["--fsdp"] if fsdp else []), torchrun=2), timeout=180)
    one, two = _weights(one_process_run), _weights(tmp_path / "two")
    torch.manual_seed(0)  # the seed the runs initialise the weights with
    Swinv2ForImageClassification(Swinv2Config(**TINY_MODEL, num_labels=3)).save_pretrained(tmp_path / "initial")
    initial = load_file(tmp_path / "initial" / "model.safetensors")
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-3  # the weights did move
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0, msg=key)
    # metrics are reduced over both processes: the same validation loss and accuracy as one process
    val_one = [r for r in read_metrics(one_process_run) if r["kind"] == "val"][-1]
    val_two = [r for r in read_metrics(tmp_path / "two") if r["kind"] == "val"][-1]
    assert val_two["val_top1"] == val_one["val_top1"]
    assert val_two["val_loss"] == pytest.approx(val_one["val_loss"], abs=1e-5)
    assert val_two["train_loss"] == pytest.approx(val_one["train_loss"], abs=1e-5)


# ---------------------------------------------------------------------------------------------- the command's words
def test_resume_help_names_latest_and_auto(capsys):
    from swinv2 import cli

    for command in ("train", "pretrain"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert info.value.code == 0 and "--resume [latest|auto|PATH]" in text
        assert "'latest', what --resume alone means" in text and "'auto' resumes" in text


def test_a_config_file_that_does_not_parse_is_one_line_with_its_place(photos, tiny_config, tmp_path, capsys):
    from swinv2 import cli

    bad = tmp_path / "c4.yaml"
    bad.write_text("epochs: 1\ndata: [unclosed\n")
    assert cli.main(["train", "--config", str(bad), "--data", str(photos), "--model", str(tiny_config),
                     "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (f"swinv2 train: error: {bad} could not be parsed: line 3, column 1: expected ',' or ']', but "
                   "got '<stream end>' (while parsing a flow sequence from line 2, column 7); fix the file\n")
    bad.write_text("epochs: 1\n  lr: 2\n")  # indentation: a problem with no context
    assert cli.main(["train", "--config", str(bad), "--data", str(photos), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"swinv2 train: error: {bad} could not be parsed: line 2, column 5: ") and (
        err.count("\n") == 1), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_ctrl_c_under_torchrun_is_reported_by_rank_0_only(photos, tiny_config, tmp_path, capsys, monkeypatch,
                                                         rank):
    """Ctrl-C reaches every torchrun process: one line says how to go on, not one per process."""
    import swinv2.training
    from swinv2 import cli

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(swinv2.training, "train", interrupted)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    assert cli.main(["train", "--data", str(photos), "--model", str(tiny_config), "--output",
                     str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    expected = "\nswinv2 train: interrupted; continue with the same command and --resume latest\n"
    assert err == (expected if rank == "0" else "")
