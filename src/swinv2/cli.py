"""The `swinv2` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinv2", description="Swin Transformer V2: predict, train, convert.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


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
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 18)")
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
        print(f"swinv2 export: {message}", file=sys.stderr)
        return status

    if args.image_size is not None and min(args.image_size) < 1:
        return fail(f"--image-size must be two positive integers, got {args.image_size}", 2)
    if Path(args.output).is_dir():
        return fail(f"OUTPUT {args.output!r} is a folder; give a file name such as model.onnx", 2)
    import torch

    import swinv2
    from swinv2.export import DEFAULT_OPSET, check_onnx, export_onnx

    cls_name = _export_model_class(args.model, args.model_class)
    try:
        model = getattr(swinv2, cls_name).from_pretrained(args.model)
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        return fail(f"cannot load a {cls_name} from {args.model!r}: {' '.join(str(err).split())}", 2)
    image_size = tuple(args.image_size) if args.image_size else model.config.image_hw
    try:
        used = export_onnx(model, args.output, image_size=image_size, dynamic_batch=args.dynamic_batch,
                           opset=args.opset or DEFAULT_OPSET, exporter=args.exporter)
    except ImportError as err:
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
        except ImportError as err:
            return fail(str(err), 1)
        worst = max(errors.values())
        print("onnxruntime vs PyTorch, largest absolute difference: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        if worst > 1e-3:
            return fail(f"the exported graph differs from PyTorch by {worst:.2e} (more than 1e-3)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
