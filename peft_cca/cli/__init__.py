"""The ``peft-cca`` command: one sub-command per stage, each in ``peft_cca/cli/commands/<name>.py``.

A stage module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; ``demo_plan`` is
the end-to-end plan ``peft-cca demo`` runs. The CLI is the top layer: it may import every other one, none imports
it. Building the parser imports no torch, so ``peft-cca --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# The order of the method: localize -> circuit -> amplify -> evaluate -> compare, then the extras.
COMMANDS: tuple[str, ...] = ("localize", "circuit", "amplify", "evaluate", "compare", "lora", "calibrate", "demo")


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line and a pointer to ``--help``, not 20 lines of usage above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="peft-cca",
        description="Constructive Circuit Amplification: raise one skill of a language model by updating only "
        "the attention heads and MLP neurons that push it toward the right token.",
        epilog="Run `peft-cca <command> --help` for the options of each stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"peft_cca.cli.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _is_main_process() -> bool:
    """Rank 0 of a launch, read from the environment torchrun and accelerate set (no torch import)."""
    return os.environ.get("RANK", "0") == "0"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _not_about_optional_cpu_kernels(record: logging.LogRecord) -> bool:
    """Drops bitsandbytes' import-time warning that it could not fetch its optional 4-bit CPU kernel from the hub
    (on CPUs with AVX512-BF16, without the ``kernels`` package): it printed "Failed to load" before every command,
    yet CCA runs no 4-bit matmul on a CPU and bitsandbytes falls back to its own code. ``-v`` shows it."""
    return "kernels-community" not in record.getMessage()


def _run_command(args: argparse.Namespace, main_process: bool) -> int:
    """The command's exit code. When it fails, the folders it created that hold no finished work are removed
    (``runfolder.discard_unfinished``): a failed run leaves no empty folder, and a rerun finds none in its way."""
    from peft_cca.runtime.runfolder import discard_unfinished

    try:
        code = int(args._run(args) or 0)
    except BaseException:
        if main_process:
            discard_unfinished()
        raise
    if code and main_process:
        discard_unfinished()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run a stage. A failure the user can act on is one line on stderr (``-v`` adds the traceback): exit code 2
    for bad options, files and run folders, 1 for other expected failures, 130 for Ctrl-C (rerun to resume)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    main_process = _is_main_process()
    if not main_process:  # under accelerate launch one process tells the story; errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.INFO if main_process else logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_about_optional_cpu_kernels)
    prog = f"{parser.prog} {args.command}"
    from peft_cca.errors import CCAError

    try:
        return _run_command(args, main_process)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except CCAError as error:
        if args.verbose:
            logging.exception("details")
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return error.exit_code
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        # a path the user gave that is missing or unusable: the OS message names it
        if args.verbose:
            logging.exception("details")
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
