"""`swinv2 demo --tiny`: the whole demo pipeline (data, SimMIM, fine-tuning, from scratch, evaluation, report)
end to end on a few hundred real Fashion-MNIST images, and every artefact loads."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from PIL import Image

from swinv2 import cli
from swinv2.data import load_fashion_mnist
from swinv2.demo import DEMO_MODEL, PHASE_FILE, TINY_BUDGET
from swinv2.modeling import Swinv2ForImageClassification


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert cli.main(["demo", "--tiny", "--output", str(out), "--no-progress"]) == 0
    return out


def test_report_links_figures_that_open(demo_run):
    text = (demo_run / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {"curves_pretrain.png", "curves_loss.png", "curves_accuracy.png", "confusion_matrix.png",
                "per_class.png", "reconstructions.png", "predictions.png"}
    assert set(links) == expected
    for link in links:
        with Image.open(demo_run / link) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    # the summary table with both accuracies is at the top of the report
    assert "| fine-tuning |" in text and "| from scratch |" in text and "| SimMIM pre-training |" in text


def test_metrics_are_complete(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text(encoding="utf-8"))
    for run in ("finetune", "scratch"):
        assert 0.0 <= metrics["test_top1"][run] <= 1.0
        evaluation = metrics["evaluation"]["metrics"][run]
        assert evaluation["num_images"] == TINY_BUDGET.limit_test
        assert sum(map(sum, evaluation["confusion"])) == TINY_BUDGET.limit_test
    phases = {p["name"]: p for p in metrics["phases"]}
    assert set(phases) == {"pretrain", "finetune", "scratch"}
    for phase in phases.values():
        assert phase["seconds"] > 0 and phase["images_per_second"] > 0
    # each training run logged its steps, so the curves have data
    for run in ("pretrain", "finetune", "scratch"):
        lines = (demo_run / run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert any(json.loads(line)["kind"] == "train" for line in lines)


def test_exported_model_loads_here_and_in_transformers(demo_run):
    transformers = pytest.importorskip("transformers")
    model_dir = demo_run / "model"
    ours = Swinv2ForImageClassification.from_pretrained(model_dir).eval()
    theirs = transformers.Swinv2ForImageClassification.from_pretrained(model_dir).eval()
    assert ours.config.embed_dim == DEMO_MODEL["embed_dim"] and ours.config.num_labels == 10
    assert ours.config.id2label[0] == "T-shirt/top"
    images, _ = load_fashion_mnist("test")
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    pixels = processor(images[:4, None].numpy(), return_tensors="pt", input_data_format="channels_first")
    assert pixels["pixel_values"].shape == (4, 1, 28, 28)
    with torch.no_grad():
        ours_logits = ours(pixel_values=pixels["pixel_values"]).logits
        theirs_logits = theirs(pixel_values=pixels["pixel_values"]).logits
    torch.testing.assert_close(ours_logits, theirs_logits, rtol=1e-4, atol=1e-4)


def test_predict_cli_reads_the_exported_model(demo_run, tmp_path, capsys):
    images, _labels = load_fashion_mnist("test")
    path = tmp_path / "item.png"
    Image.fromarray(images[0].numpy()).save(path)
    assert cli.main(["predict", str(demo_run / "model"), str(path)]) == 0
    assert "item.png" in capsys.readouterr().out


def test_rerun_reuses_finished_phases(demo_run, capsys):
    stamps = {run: (demo_run / run / PHASE_FILE).stat().st_mtime_ns for run in ("pretrain", "finetune", "scratch")}
    checkpoints = {run: sorted(p.name for p in (demo_run / run / "checkpoints").iterdir())
                   for run in ("pretrain", "finetune", "scratch")}
    assert cli.main(["demo", "--tiny", "--output", str(demo_run), "--no-progress"]) == 0
    for run, stamp in stamps.items():
        assert (demo_run / run / PHASE_FILE).stat().st_mtime_ns == stamp, f"{run} was trained again"
        assert sorted(p.name for p in (demo_run / run / "checkpoints").iterdir()) == checkpoints[run]
    assert "| fine-tuning |" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(demo_run, capsys):
    assert cli.main(["demo", "--scale", "2", "--output", str(demo_run), "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_an_interrupted_phase_resumes_from_its_checkpoint(demo_run):
    # as after a kill at the end of the from-scratch run: its checkpoint is there, its result is not
    scratch = demo_run / "scratch"
    (scratch / PHASE_FILE).unlink()
    train_records = [line for line in (scratch / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                     if json.loads(line)["kind"] == "train"]
    assert cli.main(["demo", "--tiny", "--output", str(demo_run), "--no-progress"]) == 0
    assert (scratch / PHASE_FILE).is_file()
    again = [line for line in (scratch / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if json.loads(line)["kind"] == "train"]
    assert again == train_records  # resumed at its last step: not one step trained again


def test_a_failing_side_by_side_phase_names_itself_and_why(tmp_path):
    from swinv2.demo import run_side_by_side, scratch_config
    from swinv2.training import TrainingError

    config = scratch_config(tmp_path, TINY_BUDGET, "cpu", progress=False)  # no model_config.json written there
    with pytest.raises(TrainingError, match=r"from scratch failed: .*model_config\.json.*phase\.log"):
        run_side_by_side([("scratch", tmp_path / "scratch", config)], threads=1, progress=False)
    assert "Traceback" in (tmp_path / "scratch" / "phase.log").read_text(encoding="utf-8")


def test_ctrl_c_ends_with_a_resume_hint_not_a_traceback(monkeypatch, tmp_path, capsys):
    import swinv2.demo

    def interrupted(options):
        raise KeyboardInterrupt

    monkeypatch.setattr(swinv2.demo, "run_demo", interrupted)
    assert cli.main(["demo", "--tiny", "--output", str(tmp_path / "run"), "--no-progress"]) == 130
    assert "swinv2 demo: interrupted; run it again to resume" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["-1", "0", "nan", "x"])
def test_a_scale_that_is_not_positive_is_an_argument_error(tmp_path, capsys, scale):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--tiny", "--scale", scale, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "swinv2 demo: error: argument --scale: expected a number > 0" in err
    assert not (tmp_path / "run").exists()


def test_scale_multiplies_the_tiny_budget_too():
    from swinv2.demo import DemoOptions, choose_budget

    budget, why = choose_budget(DemoOptions(tiny=True, scale=5))
    assert budget.pretrain_epochs == 5 * TINY_BUDGET.pretrain_epochs
    assert budget.finetune_epochs == 5 * TINY_BUDGET.finetune_epochs
    assert budget.limit_train == TINY_BUDGET.limit_train and "x5" in why
    assert choose_budget(DemoOptions(tiny=True))[0] == TINY_BUDGET  # the settings of earlier tiny runs
    assert choose_budget(DemoOptions(tiny=True, scale=1))[0] == TINY_BUDGET


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["prctl", "watching thread"])
def test_a_side_by_side_phase_dies_with_the_demo_even_killed(tmp_path, how):
    """SIGKILL of the demo leaves its phases no chance to be stopped: they end by themselves (they trained on,
    re-parented to PID 1). The demo's process is stood for by a small parent that starts one child, which
    calls what each phase process calls first; off Linux (here: told it is not Linux) a thread watches."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    import swinv2

    src = str(Path(swinv2.__file__).resolve().parents[1])
    ready = tmp_path / "ready"
    child = ("import os, sys, time\n"
             "from swinv2.demo import die_with_parent\n"
             + ("sys.platform = 'darwin'\n" if how != "prctl" else "")
             + "die_with_parent(int(sys.argv[1]))\n"
             "open(sys.argv[2], 'w').close()\n"
             "time.sleep(120)\n")
    parent = ("import os, subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid()), {str(ready)!r}])\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    demo = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env)
    phase = int(demo.stdout.readline())

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")  # a zombie has ended

    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists() and alive(phase)
        demo.kill()
        demo.wait()
        deadline = time.monotonic() + 10
        while alive(phase) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(phase), "the phase process outlived the demo"
    finally:
        demo.kill()
        if alive(phase):
            os.kill(phase, signal.SIGKILL)
