"""The `mmar` command line: `mmar demo | train | finetune | generate | describe | export`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers)`, adding its sub-commands with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "training.demo",
    "training.train",
    "training.finetune",
    "training.generate_cli",
    "training.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmar", description="MMAR-HF: train, fine-tune, sample and export MMAR models")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # command not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
