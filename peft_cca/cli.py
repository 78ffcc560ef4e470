"""The ``peft-cca`` command: one sub-command per stage, each in ``peft_cca/commands/<name>.py``.

A stage module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only for the chosen command so ``peft-cca --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

# Order is the order of the method: localize -> circuit -> amplify -> evaluate -> compare.
COMMANDS: dict[str, str] = {
    "localize": "stage 1: find pivotal tokens and write the Error-Localization dataset",
    "circuit": "stage 2: learn the circuit with Desiderata-based Component Masking (DCM)",
    "amplify": "stage 3: train only the circuit (CCATrainer) and save the adapter",
    "evaluate": "exact match on the target task, retention suite and KL drift",
    "compare": "side-by-side tables and plots of several runs",
    "lora": "the LoRA SFT baseline on the same training problems",
    "demo": "every stage end to end on the offline model, with a comparison table",
}


def _available() -> dict[str, str]:
    """Commands whose module is present (stages land one by one)."""
    return {name: desc for name, desc in COMMANDS.items() if importlib.util.find_spec(f"peft_cca.commands.{name}")}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-cca",
        description="Constructive Circuit Amplification: raise one skill of a language model by updating only "
        "the attention heads and MLP neurons that push it toward the right token.",
        epilog="Run `peft-cca <command> --help` for the options of each stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, desc in _available().items():
        cmd = sub.add_parser(name, help=desc, description=desc)
        if name == chosen:
            module = importlib.import_module(f"peft_cca.commands.{name}")
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
