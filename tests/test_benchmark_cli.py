"""`swinv2 benchmark`: times real steps of the model it was given and reports consistent figures."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import swinv2
from swinv2 import benchmark
from swinv2.cli import main

TINY = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    torch.manual_seed(0)
    swinv2.Swinv2ForImageClassification(swinv2.Swinv2Config(**TINY)).save_pretrained(root / "classifier")
    swinv2.Swinv2Model(swinv2.Swinv2Config(**TINY)).save_pretrained(root / "encoder")
    return root


def _run_json(capsys, *args: str) -> dict:
    assert main(["benchmark", *args, "--device", "cpu", "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rows_for_every_task_and_batch(folders, capsys) -> None:
    out = _run_json(capsys, str(folders / "classifier"), "--task", "infer,train", "--batch", "1,3,1",
                    "--repeats", "3", "--warmup", "0", "--image-size", "40", "36")
    assert out["class"] == "Swinv2ForImageClassification" and out["weights"] == "weights from the checkpoint"
    assert (out["repeats"], out["warmup"]) == (3, 0)  # a batch given twice is one row
    assert out["image_size"] == [40, 36] and out["parameters"] > 0
    rows = out["rows"]
    assert [(r["task"], r["batch"]) for r in rows] == [("infer", 1), ("infer", 3), ("train", 1), ("train", 3)]
    for r in rows:
        assert 0 < r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["latency_ms"] * 1e3)
        assert r["first_call_s"] > 0 and r["peak_memory_mib"] > 0
        assert r["mode"] == "eager" and r["dtype"] == "fp32"


def test_training_rows_take_real_steps(folders) -> None:
    """A training row runs forward, backward and AdamW: the weights move; for a head without labels too."""
    for name in ("classifier", "encoder"):
        model = swinv2.Swinv2Model.from_pretrained(folders / name) if name == "encoder" else (
            swinv2.Swinv2ForImageClassification.from_pretrained(folders / name))
        before = copy.deepcopy(model.state_dict())
        rows = [benchmark.Row("train", "eager", "fp32", 2)]
        (row,) = benchmark.measure(model, rows, torch.device("cpu"), (32, 32), repeats=2, warmup=0)
        moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert row.latency_ms > 0 and len(moved) > len(before) // 2, name


def test_named_architecture_with_random_weights_and_bf16(capsys) -> None:
    assert main(["benchmark", "swinv2-tiny-patch4-window8-256", "--batch", "1", "--repeats", "1", "--warmup", "0",
                 "--dtype", "fp32,bf16", "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "random weights of the architecture" in text and "28.35M parameters" in text
    assert text.count("| infer | eager |") == 2 and "| bf16" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "fly"], "--task 'fly': use one or more of infer, train"),
        (["--batch", "1,0"], "--batch '1,0'"),
        (["--dtype", "int8"], "--dtype 'int8'"),
        (["--image-size", "1", "2", "3"], "--image-size takes a height"),
        (["--cuda-graph"], "--cuda-graph replays CUDA graphs: it needs --device cuda (this run is on cpu)"),
    ],
)
def test_bad_flags_fail_in_one_line(args, message, capsys) -> None:
    assert main(["benchmark", "swinv2-tiny-patch4-window8-256", *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("swinv2 benchmark: error: ") and message in err and "\n" not in err


def test_a_path_that_is_no_model_fails_clearly(tmp_path, capsys) -> None:
    assert main(["benchmark", str(tmp_path / "nothing-here"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot load" in err and "nothing-here" in err


@pytest.mark.parametrize("native_bf16", [False, True])
def test_a_bf16_row_that_ran_in_fp32_says_so(folders, monkeypatch, capsys, native_bf16) -> None:
    """Without native bf16 a CPU model falls back to fp32: the row's note records it, in the JSON and the table
    (it said dtype bf16 with an empty note: the check ran outside autocast, where it is always false)."""
    import swinv2.modeling

    monkeypatch.setattr(swinv2.modeling, "CPU_NATIVE_BF16", native_bf16)
    args = [str(folders / "classifier"), "--dtype", "fp32,bf16", "--batch", "1", "--repeats", "1", "--warmup", "0"]
    rows = {r["dtype"]: r for r in _run_json(capsys, *args)["rows"]}
    assert rows["fp32"]["note"] == ""
    assert rows["bf16"]["note"] == ("" if native_bf16 else "ran in fp32: no native bf16 on this CPU")
    assert main(["benchmark", *args, "--device", "cpu", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert ("| bf16 (ran in fp32: no native bf16 on this CPU) | 1 |" in table) is not native_bf16
