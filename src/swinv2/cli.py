"""The `swinv2` command."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinv2", description="Swin Transformer V2: predict, train, convert.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_convert_parser(sub)
    _add_train_parser(sub)
    _add_pretrain_parser(sub)
    _add_evaluate_parser(sub)
    return parser


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
    parser.add_argument(
        "source", metavar="SRC", help="folder with config.json, or a .safetensors/.bin/.pth file"
    )
    parser.add_argument(
        "destination",
        metavar="DST",
        help="output: a folder for --to hf, else a file (.pth for microsoft; .safetensors or .pth for timm "
        "and torchvision)",
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
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, convert
    from .config import Swinv2Config

    try:
        config = None if args.config is None else Swinv2Config.from_pretrained(args.config)
        source_format, model = convert(args.source, args.destination, args.to, config=config)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"swinv2 convert: error: {err}", file=sys.stderr)
        return 1
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.source} ({source_format}, {type(model).__name__}, {millions:.1f}M parameters) -> "
          f"{args.destination} ({args.to})")
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
    ("layer_decay", "layer-wise lr decay for fine-tuning, e.g. 0.9 (default 1: off)"),
    ("clip_grad", "clip the gradient norm (default 5; 0: off)"),
    ("amp", "mixed precision: none, bf16, or fp16 with a gradient scaler (default none)"),
    ("ema_decay", "keep an exponential moving average of the weights with this decay, e.g. 0.9999"),
    ("gradient_checkpointing", "recompute activations in the backward pass to save memory"),
    ("drop_path_rate", "stochastic depth rate (overrides the model config's)"),
    ("label_smoothing", "label smoothing of the cross-entropy (default 0.1)"),
    ("mixup", "Mixup alpha (default 0: off)"),
    ("cutmix", "CutMix alpha (default 0: off)"),
    ("randaugment", "RandAugment magnitude, 2 ops (default 0: off; the reference recipe uses 9)"),
    ("crop_scale", "RandomResizedCrop scale range (default 0.08 1, pretrain 0.67 1)"),
    ("hflip", "horizontal flip probability (default 0.5)"),
    ("val_fraction", "validation share when the data folder has no val/ split (default 0.1)"),
    ("limit_train", "train on a seeded random subset of this many images"),
    ("limit_val", "validate on a seeded random subset of this many images"),
    ("image_mean", "normalisation mean per channel (default ImageNet's)"),
    ("image_std", "normalisation std per channel (default ImageNet's)"),
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
    ("progress", "show a progress bar (default on)"),
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


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML, TOML or JSON file of settings; flags override it")
    for name, text in _TRAIN_FLAGS:
        flag = "--" + name.replace("_", "-")
        kind, nargs = _flag_type(name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, nargs=nargs, default=None, help=text,
                                metavar=name.upper().split("_")[-1] if nargs is None else "X")
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH",
        help="continue from the newest good checkpoint of --output (or of PATH, a run folder or checkpoint "
             "file); 'auto' resumes when there is one and starts afresh otherwise",
    )


def _add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="fine-tune or train a classifier",
                            description="Train a Swin V2 image classifier (from scratch or fine-tuning).")
    _add_training_flags(parser)
    parser.set_defaults(func=_run_train, task="classification")


def _add_pretrain_parser(sub) -> None:
    parser = sub.add_parser("pretrain", help="SimMIM masked-image-modeling pre-training",
                            description="Pre-train a Swin V2 encoder with SimMIM on unlabelled images.")
    _add_training_flags(parser)
    parser.set_defaults(func=_run_train, task="simmim")


def _setup_logging() -> None:
    import logging

    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")


def _run_train(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .data import DataError
    from .training import TrainingError, resolve_config, saved_settings, train

    _setup_logging()
    overrides = {name: getattr(args, name) for name, _ in _TRAIN_FLAGS}
    overrides["resume"] = args.resume
    if overrides["clip_grad"] == 0:
        overrides["clip_grad"] = None
    try:
        # resuming: the run's own settings first, so that `--output DIR --resume` is enough
        defaults = saved_settings(args.output) if args.resume is not None and args.output else {}
        config = resolve_config(args.config, overrides, **{**defaults, "task": args.task})
        result = train(config)
    except (TrainingError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    metrics = result.metrics
    summary = [f"{result.steps} steps", f"{result.images_per_second:.0f} img/s"]
    if "top1" in metrics:
        summary += [f"val top-1 {metrics['top1']:.4f}", f"top-5 {metrics['top5']:.4f}",
                    f"best top-1 {metrics['best_top1']:.4f}"]
    elif "train_loss" in metrics:
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
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="evaluate a seeded subset of this many images")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--output", default=None, help="write eval.json and confusion_matrix.png here")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from .checkpoints import CheckpointError
    from .data import DataError
    from .training import TrainingError, evaluate

    _setup_logging()
    try:
        result = evaluate(args.model, args.data, batch_size=args.batch_size, num_workers=args.num_workers,
                          limit=args.limit, device=args.device, amp=args.amp, output=args.output,
                          progress=not args.json)
    except (TrainingError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{result.num_images} images: top-1 {result.top1:.4f}, top-5 {result.top5:.4f}, loss {result.loss:.4f} "
          f"({result.images_per_second:.0f} img/s)")
    width = max(len(name) for name in result.class_names)
    print(f"{'class':<{width}}  accuracy  confusion (row: true, column: predicted)")
    for name, row in zip(result.class_names, result.confusion):
        print(f"{name:<{width}}  {result.per_class[name]:8.4f}  {' '.join(f'{v:5d}' for v in row)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
