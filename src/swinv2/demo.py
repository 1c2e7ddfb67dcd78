"""`swinv2 demo`: the library's whole job on real images, in minutes on a CPU.

SimMIM-pre-trains a small Swin V2 on Fashion-MNIST's 60,000 training images without their labels, fine-tunes
it on the labelled images, trains the same architecture from scratch on the same budget for comparison,
evaluates both on the 10,000 test images and writes a report with figures. Every phase is a `swinv2.training`
run in its own folder: an interrupted demo resumes from the phase's last checkpoint, a finished phase is
reused (its result is recorded in `phase.json`).

    run_demo(DemoOptions(output="runs/demo"))   # what `swinv2 demo` does
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import atomic_write
from .config import Swinv2Config
from .data import FASHION_MNIST, DataError, eval_transform, load_fashion_mnist
from .modeling import Swinv2ForImageClassification
from .training import (
    TrainConfig,
    TrainingError,
    _pyplot,
    _save_figure,
    compile_problem,
    evaluate,
    plot_confusion,
    plot_learning_curves,
    read_metrics,
    train,
)

logger = logging.getLogger("swinv2")

# The demo's model, sized for 2 CPU cores. Fashion-MNIST is 28x28 grey: 1 channel and the native size (no
# upscaling, which would only cost time). Patch 4 gives a 7x7 token grid that one window 7 covers (the first
# stage attends globally, the second stage's 4x4 grid too). What one epoch from scratch bought on one EPYC
# core (batch 64, a cosine over the epoch): patch 4 / embed 32 82.8% test top-1 in 57 s; patch 2 (14x14 tokens,
# 2x2 windows) 82.0% in 150 s; patch 4 / embed 64 84.4% in 131 s. At a fixed time, more epochs of the
# smallest model win.
DEMO_MODEL: dict[str, Any] = dict(
    image_size=28, patch_size=4, num_channels=1, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=7,
    mlp_ratio=4.0, drop_path_rate=0.0, encoder_stride=8,  # encoder_stride = patch * 2**(stages-1), for SimMIM
)
# Fashion-MNIST's training-set pixel statistics (grey, in [0, 1]): the exported processor normalises with them.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclass
class DemoBudget:
    """How much each phase trains. Epochs may be fractional (a run stops after that many steps).

    The CPU default fills ~11 minutes on 2 cores: 2 epochs of SimMIM (~1.5 min on both cores), then 12 epochs
    of fine-tuning and 12 from scratch side by side (one core each, compiled: ~9.5 min), the test set and the
    report. Batch 64 rather than 128: at the same number of images, twice the steps learnt more.
    The model underfits at this budget, so the recipe has no augmentation: from scratch over 12 epochs on one
    core (AdamW 2e-3, warm-up + cosine, label smoothing 0.1), no augmentation reached 90.5% test top-1,
    flips 90.3%; 10 epochs with flips and 2-pixel shifts 88.5%.
    """

    pretrain_epochs: float = 2.0
    finetune_epochs: float = 12.0
    batch_size: int = 64
    lr: float = 2e-3
    pretrain_lr: float = 1e-3
    warmup_epochs: float = 0.2
    crop_padding: int = 0  # 0: no crops (> 0: random shifts by up to that many pixels)
    hflip: float = 0.0
    mask_patch_size: int = 4  # 28 = 7 x 4: a 7x7 grid of maskable squares, 60% of them hidden
    limit_train: int | None = None  # a seeded subset of the training images (the tiny budget)
    limit_val: int | None = 2000  # test images scored at each epoch end, for the curves; the final score uses all
    limit_test: int | None = None
    num_workers: int = 0  # on 2 cores a worker process steals the cores that the model needs
    compile: bool = True  # torch.compile the training steps (when a C++ compiler is there on a CPU)

    def scaled(self, factor: float) -> DemoBudget:
        """The same recipe with `factor` times the epochs (with CUDA the default is `GPU_SCALE`)."""
        return dataclasses.replace(self, pretrain_epochs=self.pretrain_epochs * factor,
                                   finetune_epochs=self.finetune_epochs * factor)


# The whole pipeline on a few hundred images and a few steps: what the test runs.
TINY_BUDGET = DemoBudget(pretrain_epochs=1.0, finetune_epochs=1.0, batch_size=32, warmup_epochs=0.5,
                         limit_train=256, limit_val=64, limit_test=200, compile=False)
GPU_SCALE = 4.0


@dataclass
class DemoOptions:
    output: str = "runs/demo"
    tiny: bool = False
    scale: float | None = None  # None: 1 on a CPU, GPU_SCALE with CUDA
    device: str = "auto"
    progress: bool = True


@dataclass
class PhaseResult:
    """What one phase left behind, as recorded in its folder's `phase.json`."""

    name: str
    seconds: float
    images_per_second: float
    metrics: dict[str, Any]


PHASE_FILE = "phase.json"
PHASE_TITLES = {"data": "data", "pretrain": "SimMIM pre-training", "finetune": "fine-tuning",
                "scratch": "from scratch", "evaluate": "test evaluation"}


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _finished(folder: Path) -> PhaseResult | None:
    path = folder / PHASE_FILE
    if not path.is_file():
        return None
    return PhaseResult(**json.loads(path.read_text(encoding="utf-8")))


def _record(folder: Path, result: PhaseResult) -> PhaseResult:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / PHASE_FILE, dataclasses.asdict(result))
    return result


# ---------------------------------------------------------------------------------------------- phases
def get_data() -> tuple[int, int]:
    """Load Fashion-MNIST once (Debian's package, else the verified download); `(train, test)` image counts."""
    try:
        train_images, _ = load_fashion_mnist("train")
        test_images, _ = load_fashion_mnist("test")
    except (DataError, OSError) as err:
        raise TrainingError(
            f"Fashion-MNIST is not available: {err}. Install it with `sudo apt-get install dataset-fashion-mnist` "
            "or allow the download from the official source (github.com/zalandoresearch/fashion-mnist)"
        ) from err
    return len(train_images), len(test_images)


def _train_config(budget: DemoBudget, task: str, model: str, output: Path, epochs: float, lr: float,
                  device: str, progress: bool) -> TrainConfig:
    images = budget.limit_train or 60_000
    steps_per_epoch = max(1, images // budget.batch_size)
    return TrainConfig(
        task=task, data=FASHION_MNIST, model=model, output=str(output),
        epochs=max(1, math.ceil(epochs)), max_steps=max(1, round(epochs * steps_per_epoch)),
        batch_size=budget.batch_size, lr=lr, min_lr=lr * 1e-3, warmup_epochs=budget.warmup_epochs,
        weight_decay=0.05, label_smoothing=0.1, crop_padding=budget.crop_padding, hflip=budget.hflip,
        mask_patch_size=budget.mask_patch_size, mask_ratio=0.6,
        limit_train=budget.limit_train, limit_val=budget.limit_val,
        image_mean=FASHION_MNIST_MEAN, image_std=FASHION_MNIST_STD,
        num_workers=budget.num_workers, device=device, resume="auto", progress=progress, tensorboard=False,
        # SimMIM's short run would not win back the minute that compiling costs
        compile=budget.compile and task == "classification",
        checkpoint_every=100, log_every=max(1, min(25, steps_per_epoch // 4)),
    )


def _reused(name: str, folder: Path) -> PhaseResult | None:
    """The result of a phase that finished in an earlier run, or None."""
    done = _finished(folder)
    if done is not None:
        logger.info("%s: reused (finished earlier, %s)", PHASE_TITLES[name], folder)
    return done


def _run_phase(name: str, folder: Path, config: TrainConfig) -> PhaseResult:
    done = _reused(name, folder)
    if done is not None:
        return done
    logger.info("%s -> %s", PHASE_TITLES[name], folder)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    metrics = {k: v for k, v in result.metrics.items() if k != "per_class"}
    return _record(folder, PhaseResult(name, seconds, result.images_per_second, metrics))


ERROR_FILE = "phase_error.txt"


def die_with_parent(parent: int) -> None:
    """End this process when process `parent` ends, however it ends (a SIGKILL too, which leaves it no chance
    to stop its children): a side-by-side phase must not train on, orphaned, after the demo is gone.

    On Linux the kernel sends SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread
    checks every second whether the process was re-parented (getppid() no longer `parent`). Either way a
    parent that died before this call is noticed at once. Its checkpoints are written atomically: a rerun of
    the demo resumes from the last one."""
    import signal
    import threading

    if os.getppid() != parent:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1  # from linux/prctl.h
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died between the check above and prctl
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass  # no prctl to call: watch instead

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="swinv2-parent-watch", daemon=True).start()


def _phase_process(name: str, folder: Path, config: TrainConfig, threads: int, parent: int | None = None) -> None:
    """A side-by-side phase in its own process: `threads` threads, its log in `folder/phase.log`, and on
    failure the reason in `folder/phase_error.txt` for the parent to report. It ends when process `parent`
    (the demo) ends, even killed."""
    if parent is not None:
        die_with_parent(parent)
    from .cli import one_line_warnings

    with one_line_warnings("demo"):
        _phase_in_process(name, folder, config, threads)


def _phase_in_process(name: str, folder: Path, config: TrainConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "phase.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        _run_phase(name, folder, config)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says what happened
        sys.exit(130)
    except Exception as err:
        logger.exception("%s failed", PHASE_TITLES[name])  # the traceback, into phase.log only
        (folder / ERROR_FILE).write_text(f"{type(err).__name__}: {err}", encoding="utf-8")
        sys.exit(1)


def _last_step(folder: Path) -> tuple[int, dict[str, Any]]:
    """The step and the record of the newest training line of a run's metrics (0 before the first)."""
    records = [r for r in read_metrics(folder) if r.get("kind") == "train"] if folder.is_dir() else []
    return (int(records[-1]["step"]), records[-1]) if records else (0, {})


def run_side_by_side(jobs: Sequence[tuple[str, Path, TrainConfig]], threads: int, progress: bool) -> list[PhaseResult]:
    """Independent phases at the same time, one process each with `threads` threads.

    Why: a small model leaves most of each step's parallel regions too short to keep two threads busy (two
    threads train the demo model only ~1.3x faster than one), so two runs of one thread each do ~1.6x the
    work of one run of two. The parent shows one progress bar per run from its metrics file; finished phases
    are reused and interrupted ones resume from their checkpoints, as in sequence.
    """
    import multiprocessing

    from tqdm.auto import tqdm

    results: dict[str, PhaseResult] = {}
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's OpenMP thread pool state
    running = []
    for name, folder, config in jobs:
        done = _reused(name, folder)
        if done is not None:
            results[name] = done
            continue
        (folder / ERROR_FILE).unlink(missing_ok=True)
        quiet = dataclasses.replace(config, progress=False)
        process = context.Process(target=_phase_process, args=(name, folder, quiet, threads, os.getpid()),
                                  name=f"swinv2-{name}")
        process.start()
        bar = tqdm(total=config.max_steps, desc=f"{PHASE_TITLES[name]:<13}", position=len(running),
                   disable=not progress, dynamic_ncols=True, file=sys.stderr, leave=True)
        if config.compile and _last_step(folder)[0] == 0:
            bar.set_postfix_str("compiling the training step (about a minute)", refresh=False)
        running.append((name, folder, process, bar))
        logger.info("%s -> %s (process %d, %d thread(s))", PHASE_TITLES[name], folder, process.pid, threads)
    try:
        while any(process.is_alive() for _, _, process, _ in running):
            for _, folder, _, bar in running:
                step, record = _last_step(folder)
                bar.update(step - bar.n)
                if record:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}", refresh=False)
            time.sleep(0.5)
    except BaseException as err:
        # Ctrl-C reached the runs too: give them a moment to stop on their own, then stop the rest (checkpoints
        # are written atomically: a rerun resumes from the last one)
        deadline = time.monotonic() + (10.0 if isinstance(err, KeyboardInterrupt) else 0.0)
        for _, _, process, _ in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for _, _, process, _ in running:
            if process.is_alive():
                process.terminate()
            process.join()
        raise
    finally:
        for _, folder, _, bar in running:
            bar.update(_last_step(folder)[0] - bar.n)
            bar.close()
    for name, folder, process, _ in running:
        process.join()
        done = _finished(folder)
        if process.exitcode != 0 or done is None:
            error = folder / ERROR_FILE
            reason = error.read_text(encoding="utf-8") if error.is_file() else f"exit code {process.exitcode}"
            raise TrainingError(f"{PHASE_TITLES[name]} failed: {reason} (log: {folder / 'phase.log'})")
        results[name] = done
    return [results[name] for name, _, _ in jobs]


def pretrain_phase(out: Path, budget: DemoBudget, device: str, progress: bool) -> PhaseResult:
    """SimMIM on the training images without their labels, from fresh weights of `DEMO_MODEL`."""
    config = _train_config(budget, "simmim", str(out / "model_config.json"), out / "pretrain",
                           budget.pretrain_epochs, budget.pretrain_lr, device, progress)
    return _run_phase("pretrain", out / "pretrain", config)


def finetune_config(out: Path, budget: DemoBudget, device: str, progress: bool) -> TrainConfig:
    """Classification from the pre-trained encoder (a new classifier), the same recipe as from scratch."""
    return _train_config(budget, "classification", str(out / "pretrain" / "last"), out / "finetune",
                         budget.finetune_epochs, budget.lr, device, progress)


def scratch_config(out: Path, budget: DemoBudget, device: str, progress: bool) -> TrainConfig:
    """Classification from fresh weights: the comparison that shows what pre-training bought."""
    return _train_config(budget, "classification", str(out / "model_config.json"), out / "scratch",
                         budget.finetune_epochs, budget.lr, device, progress)


def _uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def side_by_side_threads(device: str) -> int | None:
    """Threads per run when fine-tuning and from-scratch run side by side: on a CPU with 2 or more cores
    (half of them each); None on a GPU, where they run one after the other."""
    if _uses_cuda(device):
        return None
    cores = torch.get_num_threads()
    return cores // 2 if cores >= 2 else None


def classification_phases(out: Path, budget: DemoBudget, device: str, progress: bool,
                          threads: int | None) -> list[PhaseResult]:
    """Fine-tuning and from scratch, `[finetune, scratch]`: side by side with `threads` threads each, or in
    sequence when `threads` is None (see `side_by_side_threads`)."""
    jobs = [("finetune", out / "finetune", finetune_config(out, budget, device, progress)),
            ("scratch", out / "scratch", scratch_config(out, budget, device, progress))]
    if threads is None:
        return [_run_phase(*job) for job in jobs]
    return run_side_by_side(jobs, threads, progress)


def evaluate_phase(out: Path, budget: DemoBudget, device: str) -> PhaseResult:
    """Both classifiers' last weights on the test images (all 10,000 unless the budget limits them); the
    fine-tuned one is exported to `out/model`. The last weights, not the best: the per-epoch scores are
    measured on test images, and picking by them would overstate the accuracy."""
    folder = out / "evaluate"
    done = _finished(folder)
    if done is not None:
        return done
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    images_per_second = []
    for run in ("finetune", "scratch"):
        result = evaluate(out / run / "last", FASHION_MNIST, batch_size=256, num_workers=0, limit=budget.limit_test,
                          device=device, output=folder / run, progress=False)
        metrics[run] = result.to_dict()
        images_per_second.append(result.images_per_second)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(out / "finetune" / "last", model_dir)
    seconds = time.perf_counter() - start
    return _record(folder, PhaseResult("evaluate", seconds, float(np.mean(images_per_second)), metrics))


# ---------------------------------------------------------------------------------------------- figures
def plot_per_class(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Grouped bars of per-class test accuracy, one group per class, one bar per model."""
    plt = _pyplot()
    names = list(next(iter(results.values()))["class_names"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(results)
    for i, (label, result) in enumerate(results.items()):
        values = [result["per_class"][n] for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(results) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left")
    _save_figure(fig, path)
    plt.close(fig)


@torch.no_grad()
def plot_predictions(model_dir: Path, path: Path, count: int = 32, columns: int = 8) -> float:
    """The first `count` test images with the exported model's prediction and the true label; mistakes in
    red. Preprocessed as the exported processor does it. Returns the fraction of mistakes in the grid."""
    plt = _pyplot()
    model = Swinv2ForImageClassification.from_pretrained(model_dir).eval()
    settings = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    transform = eval_transform(model.config.image_hw, settings["image_mean"], settings["image_std"])
    images, labels = load_fashion_mnist("test")
    images, labels = images[:count], labels[:count]
    pixels = torch.stack([transform(image[None]) for image in images])
    predicted = model(pixel_values=pixels).logits.argmax(-1)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.7 * rows), squeeze=False)
    names = model.config.id2label
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:count]):
        ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        right = int(predicted[i]) == int(labels[i])
        title = names[int(predicted[i])] if right else f"{names[int(predicted[i])]}\n(true: {names[int(labels[i])]})"
        ax.set_title(title, fontsize=7, color="black" if right else "red")
        if not right:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("red")
                spine.set_linewidth(2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    _save_figure(fig, path)
    plt.close(fig)
    return float((predicted != labels).float().mean())


def write_figures(out: Path) -> dict[str, str]:
    """The report's PNG files, next to it; returns {what: file name}."""
    figures = {}
    pretrain, finetune, scratch = (read_metrics(out / run) for run in ("pretrain", "finetune", "scratch"))
    plot_learning_curves({"SimMIM": pretrain}, out / "curves_pretrain.png", val_key=None,
                         ylabel="masked-pixel L1 loss")
    figures["SimMIM pre-training loss"] = "curves_pretrain.png"
    runs = {"fine-tuned": finetune, "from scratch": scratch}
    plot_learning_curves(runs, out / "curves_loss.png", ylabel="cross-entropy (label smoothing 0.1)")
    figures["classification loss (train; test subset at epoch ends)"] = "curves_loss.png"
    plot_learning_curves(runs, out / "curves_accuracy.png", train_key="top1", val_key="val_top1",
                         ylabel="top-1 accuracy")
    figures["classification accuracy (train; test subset at epoch ends)"] = "curves_accuracy.png"
    evaluation = _finished(out / "evaluate")
    assert evaluation is not None
    finetuned = evaluation.metrics["finetune"]
    plot_confusion(finetuned["confusion"], finetuned["class_names"], out / "confusion_matrix.png")
    figures["confusion matrix of the fine-tuned model (test)"] = "confusion_matrix.png"
    plot_per_class({"fine-tuned": finetuned, "from scratch": evaluation.metrics["scratch"]}, out / "per_class.png")
    figures["per-class test accuracy"] = "per_class.png"
    shutil.copyfile(out / "pretrain" / "reconstructions.png", out / "reconstructions.png")
    figures["SimMIM reconstructions (original, 60% masked, reconstructed)"] = "reconstructions.png"
    plot_predictions(out / "model", out / "predictions.png")
    figures["test images: prediction of the fine-tuned model (mistakes in red, with the true class)"] = \
        "predictions.png"
    return figures


# ---------------------------------------------------------------------------------------------- report
def summary_table(phases: Sequence[PhaseResult], evaluation: PhaseResult, side_by_side: int | None = None) -> str:
    """The Markdown table printed at the end and put at the top of the report. `side_by_side`: the threads of
    each process when fine-tuning and from scratch ran at the same time (their time then counts once)."""
    by_name = {p.name: p for p in phases}
    lines = ["| phase | time | throughput | test top-1 |", "|---|---:|---:|---:|"]
    for name in ("pretrain", "finetune", "scratch"):
        phase = by_name[name]
        score = evaluation.metrics[name]["top1"] if name in evaluation.metrics else None
        lines.append(f"| {PHASE_TITLES[name]} | {phase.seconds / 60:.1f} min | "
                     f"{phase.images_per_second:.0f} img/s (train) | {f'{score:.2%}' if score is not None else '-'} |")
    images = evaluation.metrics["finetune"]["num_images"]
    lines.append(f"| {PHASE_TITLES['evaluate']} ({images:,} images x 2) | {evaluation.seconds / 60:.1f} min | "
                 f"{evaluation.images_per_second:.0f} img/s (inference) | |")
    classify = [by_name["finetune"].seconds, by_name["scratch"].seconds]
    total = by_name["pretrain"].seconds + (max(classify) if side_by_side else sum(classify)) + evaluation.seconds
    lines.append(f"| **total** | **{total / 60:.1f} min** | | |")
    if side_by_side:
        lines.append(f"\nFine-tuning and from scratch ran side by side, one process of {side_by_side} thread(s) "
                     "each: the total counts their time once.")
    return "\n".join(lines)


def _augmentation(budget: DemoBudget) -> str:
    parts = ([f"random shifts of up to {budget.crop_padding} pixels"] if budget.crop_padding else []) + (
        [f"flips (p={budget.hflip:g})"] if budget.hflip else [])
    return " + ".join(parts) if parts else "no augmentation"


def write_report(out: Path, phases: Sequence[PhaseResult], evaluation: PhaseResult, budget: DemoBudget,
                 figures: Mapping[str, str], device: str, side_by_side: int | None = None) -> Path:
    """`report.md` (GitHub-readable, figures linked relatively) and `metrics.json` (everything in numbers)."""
    finetuned, scratch = evaluation.metrics["finetune"], evaluation.metrics["scratch"]
    model_config = json.loads((out / "model_config.json").read_text(encoding="utf-8"))
    arch = (f"embed {model_config['embed_dim']}, depths {model_config['depths']}, heads "
            f"{model_config['num_heads']}, patch {model_config['patch_size']}, window {model_config['window_size']}, "
            f"{model_config['image_size']} px, {model_config['num_channels']} channel")
    params = sum(p.numel() for p in Swinv2ForImageClassification.from_pretrained(out / "model").parameters())
    names = finetuned["class_names"]
    lines = [
        "# Swin V2 on Fashion-MNIST: SimMIM pre-training, fine-tuning, from scratch",
        "",
        f"Fine-tuned after SimMIM: **{finetuned['top1']:.2%}** top-1 on {finetuned['num_images']:,} test images; "
        f"the same model trained from scratch on the same budget: **{scratch['top1']:.2%}**.",
        "",
        summary_table(phases, evaluation, side_by_side),
        "",
        f"Model: Swin V2, {arch} ({params:,} parameters). Device: {device} ({torch.get_num_threads()} threads). "
        f"Budget: {budget.pretrain_epochs:g} epoch(s) of SimMIM, {budget.finetune_epochs:g} of fine-tuning and "
        f"{budget.finetune_epochs:g} from scratch, batch {budget.batch_size}, AdamW (lr {budget.lr:g}, "
        f"SimMIM {budget.pretrain_lr:g}), warm-up + cosine, label smoothing 0.1, "
        f"{_augmentation(budget)}"
        + (f", {budget.limit_train} training images" if budget.limit_train else "")
        + (", classification runs compiled with torch.compile (their first step compiles, within the times "
           "above)" if budget.compile else "") + ".",
        "Both classifiers are scored with their last weights (the per-epoch points are on a subset of the "
        "test images, so picking the best epoch by them would flatter the result).",
        "",
        "The fine-tuned model is in [`model/`](model) (config.json, model.safetensors, preprocessor_config.json): "
        "`swinv2 predict model IMAGE` or `transformers.Swinv2ForImageClassification.from_pretrained(\"model\")`.",
        "",
        "## Per-class test accuracy",
        "",
        "| class | fine-tuned | from scratch |",
        "|---|---:|---:|",
        *(f"| {n} | {finetuned['per_class'][n]:.2%} | {scratch['per_class'][n]:.2%} |" for n in names),
        "",
        "## Figures",
        "",
    ]
    for title, file in figures.items():
        lines += [f"### {title[0].upper()}{title[1:]}", "", f"![{title}]({file})", ""]
    report = out / "report.md"
    atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    _write_json(out / "metrics.json", {
        "test_top1": {"finetune": finetuned["top1"], "scratch": scratch["top1"]},
        "phases": [dataclasses.asdict(p) for p in phases],
        "evaluation": dataclasses.asdict(evaluation),
        "budget": dataclasses.asdict(budget),
        "model_config": model_config,
        "device": device,
    })
    return report


# ---------------------------------------------------------------------------------------------- the demo
def choose_budget(options: DemoOptions) -> tuple[DemoBudget, str]:
    """The budget for the options, and a line saying which and why (CUDA found -> scaled up)."""
    if options.scale is not None and not (options.scale > 0 and math.isfinite(options.scale)):
        raise TrainingError(f"--scale must be a number > 0, got {options.scale}")
    if options.tiny:
        tiny = "tiny budget (a few hundred images, a few steps: a smoke test, not a result)"
        if options.scale is None or options.scale == 1:
            return TINY_BUDGET, tiny
        return TINY_BUDGET.scaled(options.scale), f"{tiny}, epochs x{options.scale:g}"
    cuda = _uses_cuda(options.device)
    scale = options.scale if options.scale is not None else (GPU_SCALE if cuda else 1.0)
    where = "CUDA GPU found" if cuda else "CPU"
    budget = DemoBudget().scaled(scale)
    why = f"{where}: budget x{scale:g} (--scale to change)"
    problem = compile_problem("cuda" if cuda else "cpu")
    if problem:
        budget = dataclasses.replace(budget, compile=False)
        logger.warning("training without torch.compile (slower): %s", problem)
    return budget, why


def run_demo(options: DemoOptions) -> tuple[Path, str]:
    """Run (or resume) every phase into `options.output`; returns the report's path and the summary table."""
    out = Path(options.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    budget, why = choose_budget(options)
    settings = {"budget": dataclasses.asdict(budget), "model": DEMO_MODEL}
    settings_file = out / "demo_settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text(encoding="utf-8")) != json.loads(
            json.dumps(settings)):
        raise TrainingError(
            f"{out} holds a demo run with other settings (another --scale or --tiny); pass another --output or "
            f"delete {out}"
        )
    _write_json(settings_file, settings)
    logger.info("demo -> %s; %s", out, why)
    config_file = out / "model_config.json"
    if not config_file.is_file():
        Swinv2Config(**DEMO_MODEL).to_json_file(config_file)
    start = time.perf_counter()
    num_train, num_test = get_data()
    data = PhaseResult("data", time.perf_counter() - start, 0.0, {"train": num_train, "test": num_test})
    logger.info("Fashion-MNIST: %d training and %d test images (%.1f s)", num_train, num_test, data.seconds)
    device = options.device
    threads = side_by_side_threads(device)
    phases = [pretrain_phase(out, budget, device, options.progress),
              *classification_phases(out, budget, device, options.progress, threads)]
    evaluation = evaluate_phase(out, budget, device)
    figures = write_figures(out)
    resolved = json.loads((out / "finetune" / "train_config.json").read_text(encoding="utf-8"))["resolved"]
    used = resolved["device"] if resolved["device"] != "cpu" else f"CPU ({os.cpu_count()} cores)"
    report = write_report(out, phases, evaluation, budget, figures, used, threads)
    return report, summary_table(phases, evaluation, threads)
