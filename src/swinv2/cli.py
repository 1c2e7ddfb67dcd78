"""The `swinv2` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import Swinv2Error, nonfinite_outputs


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line as every other error of the command (argparse prints the usage
    block first); the subcommands' parsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        # an argument no parser took is the chosen command's to report (`swinv2 predict: error: ...`), not the
        # top-level parser's, which argparse would otherwise name
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            commands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(extras)}"
            )
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="swinv2", description="Swin Transformer V2: predict, evaluate, train, pretrain, convert, export, info, "
        "benchmark, demo."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_convert_parser(sub)
    _add_predict_parser(sub)
    _add_info_parser(sub)
    _add_export_parser(sub)
    _add_train_parser(sub)
    _add_pretrain_parser(sub)
    _add_evaluate_parser(sub)
    _add_demo_parser(sub)
    _add_benchmark_parser(sub)
    return parser


def _count(n: int) -> str:
    """A parameter count for people: 47,424 / 1.52M / 28.35M."""
    return f"{n:,}" if n < 1_000_000 else f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------------------------------------- convert
def _add_convert_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert a checkpoint between Hugging Face, Microsoft, timm and torchvision layouts",
        description=(
            "Read a Swin V2 checkpoint of any layout (Hugging Face folder or file, Microsoft .pth, SimMIM, "
            "timm, torchvision; the layout is detected from the keys) and write it for another library. "
            "Converting there and back gives the same tensors."
        ),
    )
    parser.add_argument("source", metavar="SRC", help="folder with config.json, or a .safetensors/.bin/.pth file")
    parser.add_argument(
        "destination",
        metavar="DST",
        help="output: a folder for --to hf, else a file (.pth for microsoft; .safetensors or .pth for timm "
        "and torchvision); for --to timm a name without a suffix is a folder as timm's save_for_hf writes it "
        "(timm.create_model('local-dir:DST', pretrained=True) builds it)",
    )
    parser.add_argument(
        "--to", required=True, choices=("hf", "microsoft", "timm", "torchvision"), help="layout to write"
    )
    parser.add_argument(
        "--config",
        metavar="NAME_OR_PATH",
        help="config of SRC when it has none and its file name does not tell window and image size: a "
        "preset (swinv2-tiny-patch4-window8-256) or a config.json",
    )
    parser.add_argument(
        "--num-labels",
        type=int,
        metavar="N",
        help="the number of classes of SRC's classifier, where --config (a preset) names another (ImageNet's 1000)",
    )
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, convert
    from .config import Swinv2Config

    try:
        config = None if args.config is None else Swinv2Config.from_pretrained(args.config)
        if args.num_labels is not None:
            if config is None:
                raise Swinv2Error("--num-labels sets the head size of --config; without --config it is read from SRC")
            config = Swinv2Config.from_dict(config.to_dict(), num_labels=args.num_labels)
        source_format, model = convert(args.source, args.destination, args.to, config=config)
    except CheckpointError as err:
        # advice in Python arguments ("pass config=..."): what the command takes; not for every message that
        # says "config" ("a folder with config.json")
        if args.config is None and "config=" in str(err):
            raise CheckpointError(f"{err}. On the command line: --config PRESET_OR_CONFIG_JSON") from err
        raise
    except Swinv2Error:
        raise
    except (ValueError, OSError) as err:  # a config that does not parse, a file that cannot be read
        raise Swinv2Error(str(err)) from err
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{args.source} ({source_format}, {type(model).__name__}, {_count(parameters)} parameters) -> "
        f"{args.destination} ({args.to})"
    )
    return 0


# ---------------------------------------------------------------------------------------------- train / pretrain
# Flags of `swinv2 train` and `swinv2 pretrain`: (TrainConfig field, help). Types come from the dataclass;
# every default is None here so that only the flags given override the config file.
_TRAIN_FLAGS: list[tuple[str, str]] = [
    ("data", "'fashion-mnist', a folder of class folders (train/ and val/, or split by --val-fraction), or "
             "for pretrain any folder of images"),
    ("model", "a config.json (new weights), a checkpoint folder (config.json + model.safetensors), a weights "
              "file or a preset name"),
    ("output", "the run folder: checkpoints, metrics.jsonl, plots, best/ and last/"),
    ("epochs", "passes over the training set (default 10)"),
    ("max_steps", "stop after this many optimiser steps instead"),
    ("batch_size", "images per step and process (default 64)"),
    ("grad_accum_steps", "accumulate gradients over this many batches per step (default 1)"),
    ("lr", "peak learning rate (default 5e-4)"),
    ("min_lr", "learning rate at the end of the cosine (default 1e-6)"),
    ("warmup_epochs", "linear warm-up length in epochs (default 1)"),
    ("warmup_steps", "linear warm-up length in steps (overrides --warmup-epochs)"),
    ("weight_decay", "AdamW weight decay; never applied to norms, biases, logit_scale, cpb_mlp (default 0.05)"),
    ("betas", "AdamW's two betas (default 0.9 0.999)"),
    ("eps", "AdamW's epsilon (default 1e-8)"),
    ("layer_decay", "layer-wise lr decay for fine-tuning, e.g. 0.9 (default 1: off)"),
    ("clip_grad", "clip the gradient norm (default 5; 0: off)"),
    ("amp", "mixed precision: none, bf16, or fp16 with a gradient scaler (default none)"),
    ("ema_decay", "keep an exponential moving average of the weights with this decay, e.g. 0.9999"),
    ("gradient_checkpointing", "recompute activations in the backward pass to save memory"),
    ("compile", "torch.compile the training step's forward and backward: faster steps after a compilation of "
                "a minute or two (the first step); evaluation stays eager"),
    ("drop_path_rate", "stochastic depth rate (overrides the model config's)"),
    ("label_smoothing", "label smoothing of the cross-entropy (default 0.1)"),
    ("mixup", "Mixup alpha (default 0: off)"),
    ("cutmix", "CutMix alpha (default 0: off)"),
    ("randaugment", "RandAugment magnitude, 2 ops (default 0: off; the reference recipe uses 9)"),
    ("crop_scale", "RandomResizedCrop scale range (default 0.08 1, pretrain 0.67 1)"),
    ("crop_padding", "random crops of the image zero-padded by N pixels instead of RandomResizedCrop (small "
                     "images such as Fashion-MNIST's; 0: no crop, only the flips; default: off)"),
    ("hflip", "horizontal flip probability (default 0.5)"),
    ("val_fraction", "validation share when the data folder has no val/ split (default 0.1)"),
    ("limit_train", "train on a seeded random subset of this many images"),
    ("limit_val", "validate on a seeded random subset of this many images"),
    ("image_mean", "normalisation mean per channel (default: the --model checkpoint's, from its "
                   "preprocessor_config.json; ImageNet's for new weights)"),
    ("image_std", "normalisation std per channel (default: the --model checkpoint's, from its "
                  "preprocessor_config.json; ImageNet's for new weights)"),
    ("new_head", "replace a checkpoint's classifier whose classes differ from the data's"),
    ("mask_patch_size", "SimMIM: side of the masked squares in pixels (default 32)"),
    ("mask_ratio", "SimMIM: share of the squares masked (default 0.6)"),
    ("norm_targets", "SimMIM: normalise the targets over a local window (Microsoft's recipe)"),
    ("norm_target_window", "SimMIM: side of that window, odd (default 47)"),
    ("num_workers", "DataLoader worker processes (default 2)"),
    ("seed", "seed of the initial weights, the data order and the augmentations (default 0)"),
    ("device", "auto, cpu, cuda or cuda:N (default auto)"),
    ("fsdp", "shard the model with FSDP2 (under torchrun)"),
    ("checkpoint_every", "write a checkpoint every N steps, besides each epoch end (default 500)"),
    ("keep_checkpoints", "how many checkpoints to keep (default 2)"),
    ("log_every", "append a metrics record every N steps (default 10)"),
    ("progress", "show a progress bar (default: when stderr is a terminal)"),
    ("tensorboard", "log to TensorBoard when it is installed (default on)"),
]


def _flag_type(name: str) -> tuple[type, int | str | None]:
    """The argparse type and nargs of a TrainConfig field, from its annotation."""
    import types
    import typing

    from .training import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    hint = hints[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return float, ("+" if typing.get_args(hint)[-1] is Ellipsis else len(typing.get_args(hint)))
    return hint, None


# Flags of one task only: the other command does not offer them (it would accept them and do nothing).
_ONLY_FOR = {
    "simmim": {"mask_patch_size", "mask_ratio", "norm_targets", "norm_target_window"},
    "classification": {"label_smoothing", "mixup", "cutmix", "randaugment", "new_head", "val_fraction",
                       "limit_val"},
}


def _add_training_flags(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML, TOML or JSON file of settings; flags override it")
    other = next(names for t, names in _ONLY_FOR.items() if t != task)
    for name, text in _TRAIN_FLAGS:
        if name in other:
            continue
        flag = "--" + name.replace("_", "-")
        kind, nargs = _flag_type(name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, nargs=nargs, default=None, help=text,
                                metavar=name.upper().split("_")[-1] if nargs is None else "X")
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="latest|auto|PATH",
        help="continue from the newest good checkpoint of --output ('latest', what --resume alone means), or of "
             "PATH (a run folder or checkpoint file); 'auto' resumes when there is one and starts afresh "
             "otherwise",
    )


def _add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="fine-tune or train a classifier",
                            description="Train a Swin V2 image classifier (from scratch or fine-tuning).")
    _add_training_flags(parser, "classification")
    parser.set_defaults(func=_run_train, task="classification")


def _add_pretrain_parser(sub) -> None:
    parser = sub.add_parser("pretrain", help="SimMIM masked-image-modeling pre-training",
                            description="Pre-train a Swin V2 encoder with SimMIM on unlabelled images.")
    _add_training_flags(parser, "simmim")
    parser.set_defaults(func=_run_train, task="simmim")


def _main_rank() -> bool:
    """Whether this process reports: rank 0 under torchrun, or a process of its own."""
    return os.environ.get("RANK", "0") == "0"


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO if _main_rank() else logging.WARNING, format="%(message)s")


def _resumed_run(args: argparse.Namespace) -> str | None:
    """The run folder that --resume continues: --output's for 'latest' and 'auto', else PATH's (the folder of
    a checkpoint file, RUN/checkpoints/step_N.pt); None when not resuming."""
    if args.resume is None:
        return None
    if args.resume in ("latest", "auto"):
        return args.output
    path = Path(args.resume).expanduser()
    return str(path.parent.parent if path.is_file() else path)


def _run_train(args: argparse.Namespace) -> int:
    from .training import load_config_file, resolve_config, saved_settings, train

    _setup_logging()
    overrides = {name: getattr(args, name, None) for name, _ in _TRAIN_FLAGS}  # None: not given (or not offered)
    overrides["resume"] = args.resume  # --clip-grad 0 stays 0 (off): None here would mean "not given", 5
    if overrides["progress"] is None:  # a bar redrawn with \r only makes sense on a terminal, not in a log file
        overrides["progress"] = sys.stderr.isatty()
    # resuming: the settings of the run resumed come first, so that `--output DIR --resume` is enough and
    # `--output NEW --resume RUN` compares with RUN's settings, not with the built-in defaults
    run = _resumed_run(args)
    defaults = saved_settings(run) if run else {}
    if run and run != args.output:
        defaults.pop("output", None)  # the copy goes where --output says, never back into RUN unasked
    if args.config:  # the command says the task: a file written for the other one would silently switch it
        settings = load_config_file(args.config)
        file_task = settings.get("task")
        if file_task in ("classification", "simmim") and file_task != args.task:
            other = "train" if file_task == "classification" else "pretrain"
            raise Swinv2Error(
                f"{args.config} sets task: {file_task}, which is `swinv2 {other}`'s, not this command's "
                f"({args.task}); run `swinv2 {other}`, or remove task from the file"
            )
        unused = sorted(name for t, names in _ONLY_FOR.items() if t != args.task for name in names & set(settings))
        if unused:  # (a file shared by both commands may hold them: said, not refused)
            other = "pretrain" if args.task == "classification" else "train"
            warnings.warn(f"{args.config} sets {', '.join(unused)}, which only `swinv2 {other}` uses: ignored here",
                          stacklevel=2)
    config = resolve_config(args.config, overrides, **{**defaults, "task": args.task})
    result = train(config)
    if not _main_rank():  # under torchrun, rank 0 reports
        return 0
    metrics = result.metrics
    summary = [f"{result.steps} steps"]
    if result.images_per_second > 0:  # (none when a resumed run had nothing left to train)
        summary.append(f"{result.images_per_second:.0f} img/s")
    if "top1" in metrics:
        summary += [f"val top-1 {metrics['top1']:.4f}", f"top-5 {metrics['top5']:.4f}",
                    f"best top-1 {metrics['best_top1']:.4f}"]
    elif metrics.get("train_loss") is not None:
        summary.append(f"loss {metrics['train_loss']:.4f}")
    print(f"done: {', '.join(summary)}; model in {result.best or result.last}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _add_evaluate_parser(sub) -> None:
    parser = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion matrix",
                            description="Evaluate an image classifier on labelled images.")
    parser.add_argument("model", help="a folder written by `swinv2 train` (best/ or last/) or save_pretrained")
    parser.add_argument("--data", required=True,
                        help="'fashion-mnist' (its test split), DATA/val of a class-folder dataset, or a folder "
                             "of class folders")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default 256)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="evaluate a seeded subset of this many images")
    parser.add_argument("--num-workers", type=_non_negative_int, default=2,
                        help="processes that load and preprocess images (default 2; 0: in this process)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast the forward to bf16 or fp16 (default none: fp32)")
    parser.add_argument("--output", default=None, help="write eval.json and confusion_matrix.png here")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (there is one only when stderr is a terminal)")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate, json_text

    _setup_logging()
    result = evaluate(args.model, args.data, batch_size=args.batch_size, num_workers=args.num_workers,
                      limit=args.limit, device=args.device, amp=args.amp, output=args.output,
                      progress=args.progress and not args.json and sys.stderr.isatty())
    if not _main_rank():  # under torchrun, rank 0 reports
        return 0
    if args.json:
        print(json_text(result.to_dict()))
        return 0
    print(f"{result.num_images} images: top-1 {result.top1:.4f}, top-5 {result.top5:.4f}, loss {result.loss:.4f} "
          f"({result.images_per_second:.0f} img/s)")
    width = max(_display_width(name) for name in ["class", *result.class_names])
    print(f"{'class':<{width}}  accuracy  confusion (row: true, column: predicted)")
    for name, row in zip(result.class_names, result.confusion):
        accuracy = result.per_class[name]
        shown = "     n/a" if accuracy is None else f"{accuracy:8.4f}"  # no images of the class: no accuracy
        print(f"{name}{' ' * (width - _display_width(name))}  {shown}  {' '.join(f'{v:5d}' for v in row)}")
    return 0


# ---------------------------------------------------------------------------------------------- demo
def _add_demo_parser(sub) -> None:
    parser = sub.add_parser(
        "demo", help="SimMIM-pre-train, fine-tune and evaluate a small Swin V2 on Fashion-MNIST, with a report",
        description="Pre-train a small Swin V2 with SimMIM on Fashion-MNIST's training images (no labels), "
                    "fine-tune it, train the same model from scratch for comparison, evaluate both on the 10,000 "
                    "test images and write OUTPUT/report.md with figures and the exported model. About 15 minutes "
                    "on 2 CPU cores; re-running resumes an interrupted demo and reuses finished phases.")
    parser.add_argument("--output", default="runs/demo", help="the run folder (default: runs/demo)")
    parser.add_argument("--scale", type=_positive_float, default=None,
                        help="multiply the training epochs (default: 1 on a CPU or with --tiny, 4 when CUDA is "
                             "available)")
    parser.add_argument("--tiny", action="store_true",
                        help="a few hundred images and a few steps: checks the pipeline in a minute, no result "
                             "(--scale multiplies its epochs too)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (there are some only when stderr is a terminal)")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    _setup_logging()
    report, table = run_demo(DemoOptions(output=args.output, tiny=args.tiny, scale=args.scale,
                                         device=args.device, progress=args.progress and sys.stderr.isatty()))
    print()
    print(table)
    print(f"\nreport: {report}; model: {report.parent / 'model'}")
    return 0


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory in the process instead of handing it back to the kernel.

    PyTorch on CPU allocates and frees a fresh buffer for nearly every activation; by default glibc maps
    each large one anew and gives it back when freed, so the kernel zero-fills every page again on first
    touch. Kept in the heap instead (both thresholds at 1 GiB, what `MALLOC_MMAP_THRESHOLD_` and
    `MALLOC_TRIM_THRESHOLD_` set): measured on a 2-core Zen 4, inference at batch 8 6-15% faster, a training
    step between 4% slower and 11% faster (that machine's noise), peak memory up to 75 MiB higher; freed memory
    stays resident until the process ends. Skipped when either variable is set (the user's choice) and off
    glibc. Returns whether it changed anything.
    """
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def main(argv: list[str] | None = None) -> int:
    """The `swinv2` command. From the command line (`argv` None) it first calls `keep_freed_memory()`; called
    with `argv` (from Python), it leaves the process's allocator alone."""
    if argv is None:
        keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    with one_line_warnings(args.command):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a reader that went away is met below and not at the exit's flush
        return status
    except BrokenPipeError:
        # `swinv2 predict ... | head -1`: the reader has what it wanted. Stop quietly with the status of a
        # command that SIGPIPE ends (128 + 13), and point stdout at /dev/null for the interpreter's last flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Swinv2Error as err:
        # Under torchrun every process meets the same bad setting or data and raises the same error: one
        # process per machine says it (rank 0, and the first of each other node, whose files may differ), in
        # one write so that two processes' lines do not run together.
        if _main_rank() or os.environ.get("LOCAL_RANK", "0") == "0":
            rank = "" if _main_rank() else f" (rank {os.environ['RANK']})"
            sys.stderr.write(f"swinv2 {args.command}{rank}: error: {_own_message(err)}\n")
        return 2
    except KeyboardInterrupt:
        # training keeps its atomic checkpoints: say how to go on instead of printing a traceback
        hint = {"train": "; continue with the same command and --resume latest",
                "pretrain": "; continue with the same command and --resume latest",
                "demo": "; run it again to resume"}.get(args.command, "")
        # Under torchrun Ctrl-C reaches every process (and torchrun forwards SIGINT to them): rank 0 says it
        if _main_rank():
            print(f"\nswinv2 {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Python warnings shown as `swinv2 COMMAND: warning: MESSAGE`, one line each, instead of the source file,
    line number and source line that mean nothing to the user of the command. Which warnings are shown (once
    per location by default) stays Python's decision: only their display changes, and only inside the block.
    Under torchrun every process meets the same warnings: rank 0 and the first process of each other node
    show them, as errors."""
    import warnings

    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if not (_main_rank() or os.environ.get("LOCAL_RANK", "0") == "0"):
            return
        text = " ".join(str(message).split())
        if category is not UserWarning:  # DeprecationWarning, RuntimeWarning...: their kind tells something
            text = f"{category.__name__}: {text}"
        rank = "" if _main_rank() else f" (rank {os.environ['RANK']})"
        target = sys.stderr if file is None else file
        if target is None:  # pythonw: no stderr
            return
        with contextlib.suppress(OSError):  # as Python's own: a stderr that went away loses the warning
            target.write(f"swinv2 {command}{rank}: warning: {text}\n")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


# ---------------------------------------------------------------------------------------------- shared helpers
def _own_message(err: Exception) -> str:
    """The message of `err`, without the worker's traceback that a DataLoader worker's error carries: torch
    re-raises it in this process as `type(text)`, text being "Caught DataError in DataLoader worker process 0.
    Original Traceback (most recent call last): ... swinv2.data.DataError: <the message>"."""
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    return text.rpartition(marker)[2].strip() if marker in text else text


_DEVICES = ("auto", "cpu", "cuda", "mps")


def _pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Swinv2Error("--device cuda: no CUDA GPU is visible to this PyTorch build; use --device cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise Swinv2Error("--device mps: Apple's Metal backend is not available here; use --device cpu")
    return torch.device(name)


def _load_model(name: str, cls_name: str | None = None) -> Any:
    """The model at `name`, or a `Swinv2Error` saying what was tried and why it failed."""
    import warnings

    import swinv2

    cls = getattr(swinv2, cls_name) if cls_name else swinv2.Swinv2ForImageClassification
    path = Path(name).expanduser()
    where = "folder" if path.is_dir() else "file" if path.is_file() else "path or hub id"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = cls.from_pretrained(name)
    except (ValueError, OSError, KeyError, RuntimeError) as err:  # CheckpointError is a ValueError
        message = " ".join(str(err).split())
        if "config=" in message:  # advice in Python arguments: the command's way to give a config
            message += (f". On the command line: swinv2 convert {name} FOLDER --to hf --config PRESET_OR_CONFIG_JSON "
                        "writes a folder that records it; then use FOLDER")
        raise Swinv2Error(f"cannot load a {cls.__name__} from the {where} {name!r}: {message}") from err
    for warning in caught:
        if "newly initialised" in str(warning.message):
            # A head the checkpoint lacks would be random: its outputs would mean nothing.
            raise Swinv2Error(f"the {where} {name!r} is not a complete {cls.__name__} checkpoint: {warning.message}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


# ---------------------------------------------------------------------------------------------- predict
_GLOB_CHARS = set("*?[")
_PROGRESS_MIN_IMAGES = 8  # fewer images finish before a bar is worth drawing


def _add_predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files",
        description="Classify image files with a Swin V2 classification model and print the top-k classes.",
        epilog="Exit status: 0 all images classified, 1 some inputs could not be read (named on stderr), "
        "2 bad arguments or a model that cannot be loaded.",
    )
    p.add_argument("model", metavar="MODEL", help="folder, weights file or hub id of a classification model")
    p.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="image files, folders (searched recursively) or glob patterns"
    )
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", choices=_DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--csv", metavar="FILE", help="write CSV (image,rank,index,label,probability); '-' = stdout")
    p.set_defaults(func=_predict)


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to classify (in order, without repeats) and `(input, problem)` for inputs that name nothing.

    Folders are searched recursively; hidden files and folders (names starting with '.') are left out.
    """
    import glob

    files: list[Path] = []
    missing: list[tuple[str, str]] = []

    def visible(path: Path, root: Path) -> bool:
        return not any(part.startswith(".") for part in path.relative_to(root).parts)

    def in_folder(folder: Path) -> list[Path]:
        return sorted(f for f in folder.rglob("*") if f.is_file() and visible(f, folder))

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            found = in_folder(path)
            if not found:
                missing.append((text, "folder holds no files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif _GLOB_CHARS & set(text):
            # a folder that the pattern matches ('photos/*' over class folders) is searched as a folder argument is
            matches = sorted(Path(f) for f in glob.glob(str(path), recursive=True))
            found = [f for m in matches for f in (in_folder(m) if m.is_dir() else [m] if m.is_file() else [])]
            if not found:
                missing.append((text, "no files match this pattern"))
            files.extend(found)
        elif path.exists():
            missing.append((text, "not a regular file (a pipe, socket or device); give an image file or a folder"))
        else:
            missing.append((text, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, missing


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from swinv2.processing import AutoImageProcessor, ImageLoadError, load_image, resolve_id2label

    if args.csv and args.csv != "-":  # before the work, not after it
        target = Path(args.csv)
        if target.is_dir() or not target.parent.is_dir():
            raise Swinv2Error(
                f"--csv {args.csv}: " + ("that is a folder" if target.is_dir() else f"no folder {target.parent}")
                + "; give a file path in an existing folder, or '-' for the screen"
            )
    files, failures = _collect_inputs(args.inputs)
    for text, problem in failures:
        print(f"swinv2 predict: {text}: {problem}", file=sys.stderr)
    device = _pick_device(args.device)
    model = _load_model(args.model)
    model.to(device)
    try:
        # The model loaded, so its config.json is there: without a preprocessor_config.json the processor is
        # built from it; any error here is a broken preprocessor_config.json.
        processor = AutoImageProcessor.from_pretrained(args.model)
    except ValueError as err:
        raise Swinv2Error(f"cannot read the image settings of {args.model!r}: {err}") from err
    if processor.channels != model.config.num_channels:
        raise Swinv2Error(
            f"the image settings of {args.model!r} make {processor.channels}-channel images (image_mean/image_std "
            f"or num_channels of its preprocessor_config.json) but the model takes {model.config.num_channels}; "
            f"give one image_mean and image_std value per channel ({model.config.num_channels})"
        )
    id2label, _ = resolve_id2label(model.config)
    k = min(args.top_k, len(id2label))

    results: list[dict[str, Any]] = []
    bar = _progress(len(files))
    for start in range(0, len(files), args.batch_size):
        images, names = [], []
        for path in files[start : start + args.batch_size]:
            try:
                images.append(load_image(path))
                names.append(str(path))
            except ImageLoadError as err:
                message = f"swinv2 predict: skipped {err}"
                if bar is not None:
                    bar.write(message, file=sys.stderr)  # above the bar, which stays on the last line
                else:
                    print(message, file=sys.stderr)
                failures.append((str(path), str(err).removeprefix(f"{path}: ")))  # the input is named beside it
            if bar is not None:
                bar.update(1)
        if not images:
            continue
        # Processors that keep the aspect ratio ({"shortest_edge": N} without a crop) give images of several
        # sizes: each size goes through the model as its own batch.
        arrays = processor(images, return_tensors=None).pixel_values
        probs = [None] * len(arrays)
        for shape in dict.fromkeys(a.shape for a in arrays):
            same = [i for i, a in enumerate(arrays) if a.shape == shape]
            pixel_values = torch.from_numpy(np.stack([arrays[i] for i in same])).to(device, model.dtype)
            with torch.inference_mode():
                logits = model(pixel_values).logits.float()
            if not bool(logits.isfinite().all()):  # NaN probabilities would be printed as a ranking
                raise Swinv2Error(nonfinite_outputs(model, repr(args.model)))
            for i, p in zip(same, logits.softmax(-1)):
                probs[i] = p
        top = torch.stack(probs).topk(k, dim=-1)
        for name, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
            results.append(
                {
                    "image": name,
                    "predictions": [
                        {"index": i, "label": id2label.get(i, str(i)), "probability": v}
                        for v, i in zip(values, indices)
                    ],
                }
            )
    if bar is not None:
        bar.close()

    if args.json:
        import json

        errors = [{"input": text, "error": problem} for text, problem in failures]
        print(json.dumps({"model": args.model, "results": results, "errors": errors}, indent=2))
    elif args.csv:
        _write_predictions_csv(args.csv, results)
    elif results:
        print(_predictions_table(results))
    if failures:
        print(f"swinv2 predict: {len(results)} image(s) classified, {len(failures)} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _progress(total: int) -> Any:
    """A tqdm bar on stderr when there are more than a few images and stderr is a terminal, else None."""
    if total <= _PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
        return None
    import os

    from tqdm import tqdm

    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        columns, lines = 0, 0
    # A terminal that reports no size (some consoles, `script`) would hide the bar: assume 80x24.
    return tqdm(total=total, unit="img", file=sys.stderr, desc="predict", ncols=columns or 80, nrows=lines or 24)


def _predictions_table(results: list[dict[str, Any]]) -> str:
    """Columns image | label | probability; the image name on its first row only."""
    rows = [("image", "label", "probability")]
    for result in results:
        for rank, pred in enumerate(result["predictions"]):
            rows.append((result["image"] if rank == 0 else "", pred["label"], f"{pred['probability']:.4f}"))
    widths = [max(_display_width(row[c]) for row in rows) for c in range(2)]

    def pad(text: str, width: int) -> str:
        return text + " " * (width - _display_width(text))

    lines = [f"{pad(a, widths[0])}  {pad(b, widths[1])}  {c:>11}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def _display_width(text: str) -> int:
    """Columns `text` takes on a terminal: 2 for wide and full-width characters (CJK: `猫.webp` is 7), 0 for
    combining marks, 1 for the rest."""
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def _write_predictions_csv(target: str, results: list[dict[str, Any]]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "index", "label", "probability"])
    for result in results:
        for rank, pred in enumerate(result["predictions"], start=1):
            writer.writerow([result["image"], rank, pred["index"], pred["label"], f"{pred['probability']:.6f}"])
    if target == "-":
        sys.stdout.write(buffer.getvalue())
        return
    from swinv2.checkpoints import atomic_write

    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))
    except OSError as err:
        raise Swinv2Error(f"cannot write the CSV file {target}: {err.strerror or err}") from err


# ---------------------------------------------------------------------------------------------- info
_MODEL_CLASSES = (
    "Swinv2ForImageClassification",
    "Swinv2ForMaskedImageModeling",
    "Swinv2Backbone",
    "Swinv2Model",
)


def _add_info_parser(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe a model: architecture, parameters, MACs, labels",
        description="Describe a Swin V2 model: its architecture, parameter count, multiply-accumulates at its "
        "input size (counted with torch.utils.flop_counter.FlopCounterMode) and its class names.",
    )
    p.add_argument("model", metavar="MODEL", help="folder, weights file or hub id")
    p.add_argument("--labels", type=_non_negative_int, default=5, metavar="N",
                   help="class names to list (default 5; 0: only their number)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)


def _model_class_name(name: str) -> str | None:
    """The class the checkpoint was saved from (config.json's `architectures`), when it is one of ours."""
    import json

    from swinv2.checkpoints import resolve_source

    try:
        config_path, _ = resolve_source(name)
        stored = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") if config_path else None
    except Exception:  # any problem resurfaces, explained, when the model is loaded
        return None
    if isinstance(stored, list) and stored and stored[0] in _MODEL_CLASSES:
        return stored[0]
    return None


def count_macs(model: Any, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass on a (1, C, height, width) input.

    Counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and attention,
    with the position-bias MLP; it reports 2 FLOPs per multiply-accumulate, halved here). Norms,
    activations, softmax and other element-wise operations are not counted, as is usual for MAC figures.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    pixel_values = torch.zeros(1, model.config.num_channels, height, width, device=model.device, dtype=model.dtype)
    model.clear_attention_cache()  # count the position-bias MLP too, as a first call computes it
    # The counter has no formula for the fused CPU attention kernel; the math backend runs the same products
    # as matmuls, which it counts.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(pixel_values)
    return counter.get_total_flops() // 2


def _info(args: argparse.Namespace) -> int:
    from swinv2.layers import Swinv2Stage
    from swinv2.processing import resolve_id2label

    model = _load_model(args.model, _model_class_name(args.model))
    config = model.config
    height, width = config.image_hw
    macs = count_macs(model, height, width)
    stages = []
    ph, pw = config.patch_hw
    grid_h, grid_w = model.base_model.embeddings.grid(height, width)
    # The window and shift are read from the built blocks, not re-derived here: the model sizes them from
    # the floor-halved grid (as transformers does) while the token grid is padded up, and a second formula
    # here drifted from the model's before.
    model_stages = [m for m in model.modules() if isinstance(m, Swinv2Stage)]
    for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        blocks = model_stages[i].blocks
        stages.append(
            {
                "stage": i + 1,
                "blocks": depth,
                "heads": heads,
                "channels": config.embed_dim * 2**i,
                "tokens": [grid_h, grid_w],  # the padded token grid the stage runs on at image_size
                "window": list(blocks[0].window),  # (height, width)
                "shift": [max(block.shift_for(grid_h, grid_w)[side] for block in blocks) for side in (0, 1)],
            }
        )
        grid_h, grid_w = -(-grid_h // 2), -(-grid_w // 2)  # patch merging pads an odd grid
    info: dict[str, Any] = {
        "model": args.model,
        "class": type(model).__name__,
        "image_size": [height, width],
        "patch_size": [ph, pw],
        "num_channels": config.num_channels,
        "embed_dim": config.embed_dim,
        "depths": list(config.depths),
        "num_heads": list(config.num_heads),
        "window_size": config.window_size,
        "pretrained_window_sizes": list(config.pretrained_window_sizes)[: config.num_layers],  # the ones used
        "mlp_ratio": config.mlp_ratio,
        "use_absolute_embeddings": config.use_absolute_embeddings,
        "stages": stages,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "macs_counted_with": "torch.utils.flop_counter.FlopCounterMode (FLOPs / 2)",
    }
    if hasattr(model, "classifier"):
        id2label, source = resolve_id2label(config)
        info["num_labels"] = len(id2label)
        info["labels_from"] = source
        info["labels"] = [id2label[i] for i in sorted(id2label)[: args.labels]]
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(_info_text(info))
    return 0


def _info_text(info: dict[str, Any]) -> str:
    def pair(v: list[int]) -> str:
        return f"{v[0]}x{v[1]}"

    def side(v: list[int]) -> str:  # a square window by its side
        return str(v[0]) if v[0] == v[1] else pair(v)

    lines = [
        f"model          {info['model']}",
        f"class          {info['class']}",
        f"input          {info['num_channels']} x {pair(info['image_size'])}, patches {pair(info['patch_size'])}"
        + (", absolute position embeddings" if info["use_absolute_embeddings"] else ""),
        f"embed_dim      {info['embed_dim']}, mlp_ratio {info['mlp_ratio']:g}, window {info['window_size']}"
        + f", pretrained windows {info['pretrained_window_sizes']}",
        f"parameters     {info['parameters']:,} ({info['parameters'] / 1e6:.2f} M)",
        f"MACs           {info['macs']:,} ({info['macs'] / 1e9:.3f} G) at {pair(info['image_size'])}, counted with "
        f"{info['macs_counted_with']}",
        "stages",
    ]
    for s in info["stages"]:
        lines.append(
            f"  stage {s['stage']}      {s['blocks']} blocks, {s['heads']} heads, {s['channels']} channels, "
            f"{pair(s['tokens'])} tokens, window {side(s['window'])}" + ("" if any(s["shift"]) else ", not shifted")
        )
    if "labels" in info:
        shown = "; ".join(info["labels"])
        more = info["num_labels"] - len(info["labels"])
        lines.append(
            f"labels         {info['num_labels']} (from {info['labels_from']})"
            + (f": {shown}" + (f"; ... ({more} more)" if more > 0 else "") if shown else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- export
_EXPORT_CLASSES = ("Swinv2ForImageClassification", "Swinv2Model", "Swinv2ForMaskedImageModeling", "Swinv2Backbone")


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export a Swin V2 model to an ONNX file that takes pixel_values (B, C, H, W) float32, "
        "normalised as the image processor does, and returns the model's main output (logits for "
        "classification, last_hidden_state and pooler_output for the bare model, reconstruction for SimMIM, "
        "the feature maps for the backbone).",
        epilog="Exit status: 0 exported (and checked with --check), 1 the export or the check failed, "
        "2 bad arguments or a model that cannot be loaded.",
    )
    p.add_argument("model", metavar="MODEL", help="folder, weights file or hub id of the model")
    p.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input height and width, fixed in the graph (default: the config's image_size)")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch size vary (default: fixed at 1)")
    p.add_argument("--model-class", choices=_EXPORT_CLASSES,
                   help="the model class to load (default: config.json's architectures, else classification)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset version (default 18; an older one is written by the TorchScript exporter)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx exporter; auto tries dynamo, then the TorchScript tracer (default auto)")
    p.add_argument("--check", action="store_true",
                   help="run the exported file in onnxruntime and print its largest difference from PyTorch")
    p.set_defaults(func=_run_export)


def _export_model_class(name: str, chosen: str | None) -> str:
    """The class to load: the one asked for, else the first swinv2 class in config.json's architectures."""
    if chosen:
        return chosen
    from swinv2.checkpoints import CheckpointError, resolve_config

    try:
        architectures = resolve_config(name).architectures or []
    except (CheckpointError, ValueError, OSError):
        return "Swinv2ForImageClassification"  # no readable config: from_pretrained will say what is wrong
    known = [a for a in architectures if a in _EXPORT_CLASSES]
    return known[0] if known else "Swinv2ForImageClassification"


def _run_export(args: argparse.Namespace) -> int:
    def fail(message: str, status: int) -> int:
        print(f"swinv2 export: error: {message}", file=sys.stderr)
        return status

    if args.image_size is not None and min(args.image_size) < 1:
        return fail(f"--image-size must be two positive integers, got {args.image_size}", 2)
    if Path(args.output).is_dir() or args.output.endswith(("/", os.sep)):
        return fail(f"OUTPUT {args.output!r} is a folder; give a file name such as model.onnx", 2)
    import torch

    from swinv2.checkpoints import WriteError
    from swinv2.export import DEFAULT_OPSET, check_onnx, check_opset, export_onnx

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    try:
        check_opset(opset, args.exporter)  # an argument: checked before the model is loaded
    except ValueError as err:
        return fail(f"--opset: {err}", 2)
    cls_name = _export_model_class(args.model, args.model_class)
    model = _load_model(args.model, cls_name)
    image_size = tuple(args.image_size) if args.image_size else model.config.image_hw
    try:
        used = export_onnx(model, args.output, image_size=image_size, dynamic_batch=args.dynamic_batch,
                           opset=opset, exporter=args.exporter)
    except (ImportError, WriteError) as err:  # a write failure is the file's: no exporter would do better
        return fail(str(err), 1)
    except Exception as err:  # exporter failures come in many types; report them in one line
        return fail(f"the {args.exporter} export failed: {type(err).__name__}: {str(err).splitlines()[0]}", 1)
    batch = "dynamic" if args.dynamic_batch else "1"
    print(f"wrote {args.output}: {cls_name}, pixel_values ({batch}, {model.config.num_channels}, "
          f"{image_size[0]}, {image_size[1]}), exporter {used}")
    if args.check:
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(2 if args.dynamic_batch else 1, model.config.num_channels, *image_size,
                             generator=generator)
        try:
            errors = check_onnx(model, args.output, sample)
        except (ImportError, RuntimeError) as err:
            return fail(str(err), 1)
        worst = max(errors.values())
        print("onnxruntime vs PyTorch, largest absolute difference: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        if worst > 1e-3:
            return fail(f"the exported graph differs from PyTorch by {worst:.2e} (more than 1e-3)", 1)
    return 0


# ---------------------------------------------------------------------------------------------- benchmark
_BENCHMARK_DEFAULT = "swinv2-tiny-patch4-window8-256"


def _add_benchmark_parser(sub: Any) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time a model on this machine: latency, throughput, peak memory",
        description="Time inference and training steps of a Swin V2 model on this machine: median latency with "
        "its 10th-90th percentiles, images per second, peak memory and the first call's time (compiling, "
        "caches). MODEL is a folder, weights file or hub id, or an official architecture name (e.g. "
        f"{_BENCHMARK_DEFAULT}, the default) for random weights of that architecture, with no download.",
        epilog="Inputs are random pixels: speed does not depend on what an image shows. On a CPU, peak memory is "
        "the process's resident peak during the row, the libraries it has loaded included: a row after a training "
        "row also holds the code training loaded (run a row alone for its own figure). To compare against "
        "transformers, timm and torchvision, run benchmarks/bench.py from the repository.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default=_BENCHMARK_DEFAULT,
                   help=f"folder, weights file, hub id or architecture name (default {_BENCHMARK_DEFAULT})")
    p.add_argument("--task", default="infer", help="infer and/or train (forward, backward, AdamW), e.g. infer,train")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 and/or fp16 (autocast), e.g. fp32,bf16")
    p.add_argument("--batch", default=None, help="batch sizes, e.g. 1,8 (default: 1,8 on CPU, 1,64 on a GPU)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd rows (compiling takes minutes)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time inference replayed from a CUDA graph (CUDA only): latency without launches")
    p.add_argument("--image-size", type=_positive_int, nargs="+", metavar="PX",
                   help="input height [width] (default: the model's image_size)")
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--warmup", type=_non_negative_int, default=2, help="untimed calls after the first (default 2)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--device", choices=_DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_benchmark)


def _list_flag(text: str, flag: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise Swinv2Error(f"{flag} {text!r}: use one or more of {', '.join(allowed)}, comma-separated")
    return list(dict.fromkeys(values))


def _benchmark_model(name: str) -> tuple[Any, str]:
    """The model to time and where its weights come from: a checkpoint, or random weights of a named
    architecture (an existing path always wins over the name)."""
    from swinv2 import Swinv2ForImageClassification
    from swinv2.config import preset_config

    config = None if Path(name).expanduser().exists() else preset_config(name)
    if config is not None:
        return Swinv2ForImageClassification(config), "random weights of the architecture"
    return _load_model(name, _model_class_name(name)), "weights from the checkpoint"


def _run_benchmark(args: argparse.Namespace) -> int:
    import json

    import torch

    from swinv2 import benchmark

    tasks = _list_flag(args.task, "--task", ("infer", "train"))
    dtypes = _list_flag(args.dtype, "--dtype", tuple(benchmark.DTYPES))
    device = _pick_device(args.device)
    if args.batch is None:
        batches = [1, 8] if device.type == "cpu" else [1, 64]
    else:
        try:
            batches = list(dict.fromkeys(_positive_int(b) for b in args.batch.split(",")))  # once each
        except argparse.ArgumentTypeError as err:
            raise Swinv2Error(f"--batch {args.batch!r}: {err}") from None
    if args.image_size and len(args.image_size) > 2:
        raise Swinv2Error("--image-size takes a height and an optional width")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights = _benchmark_model(args.model)
    image_hw = tuple(args.image_size * 2)[:2] if args.image_size else model.config.image_hw
    if args.cuda_graph and device.type != "cuda":
        raise Swinv2Error(f"--cuda-graph replays CUDA graphs: it needs --device cuda (this run is on {device.type})")
    if args.cuda_graph and "infer" not in tasks:
        raise Swinv2Error("--cuda-graph times inference: add infer to --task")
    modes = ["eager", *(["compile"] if args.compile else []), *(["graphed"] if args.cuda_graph else [])]
    rows = [benchmark.Row(t, m, d, b) for t in tasks for m in modes for d in dtypes for b in batches
            if m != "graphed" or t == "infer"]
    for row in rows:
        if benchmark.falls_back_to_fp32(model, device, row.dtype):
            row.note = benchmark.FP32_FALLBACK_NOTE
    total = len(rows) * (1 + args.warmup + args.repeats)
    bar = None
    if args.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="call", file=sys.stderr, desc="benchmark")
    parameters = sum(p.numel() for p in model.parameters())
    try:
        results = list(benchmark.measure(model, rows, device, image_hw, args.repeats, args.warmup,
                                         on_call=bar.update if bar else None))
    finally:
        if bar:
            bar.close()
    summary = {
        "model": args.model,
        "class": type(model).__name__,
        "weights": weights,
        "parameters": parameters,
        "image_size": list(image_hw),
        "device": str(device),
        "machine": benchmark.machine(device),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rows": [r.as_dict() for r in results],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model}: {type(model).__name__}, {weights}, {_count(parameters)} parameters, "
          f"{image_hw[0]}x{image_hw[1]} px")
    print(summary["machine"])
    print()
    print(benchmark.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
