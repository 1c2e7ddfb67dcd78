"""The `swinv2` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinv2", description="Swin Transformer V2: predict, train, convert.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_convert_parser(sub)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
