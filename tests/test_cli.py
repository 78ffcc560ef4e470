"""The command line: help and argparse errors import no torch; numeric options refuse nonsense at parse time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peft_cca.cli import COMMANDS, build_parser, main

# parses each argv (help and parse errors end in SystemExit), then reports which heavy modules loaded
_PROBE = """
import json, sys
from peft_cca.cli import build_parser
for argv in json.loads(sys.argv[1]):
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "datasets") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def _probe(argvs: list[list[str]], preamble: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", preamble + _PROBE, json.dumps(argvs)], capture_output=True, text=True, timeout=120
    )


def test_help_of_every_command_and_argparse_errors_import_no_torch():
    argvs = [["--help"]] + [[name, "--help"] for name in COMMANDS] + [argv for argv in NONSENSE]
    done = _probe(argvs)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:", done.stderr
    for name in COMMANDS:
        assert f"usage: peft-cca {name}" in done.stdout
    assert done.stderr.count(": error: argument ") == len(NONSENSE)


def test_the_probe_sees_torch_when_it_is_imported():
    done = _probe([["--help"]], preamble="import torch\n")
    assert "torch" in done.stdout.strip().splitlines()[-1]


NONSENSE = [
    ["localize", "--out", "x", "--limit", "-1"],
    ["localize", "--out", "x", "--limit", "0"],
    ["localize", "--out", "x", "--max-new-tokens", "0"],
    ["localize", "--out", "x", "--temperature-when-wrong", "-1"],
    ["localize", "--out", "x", "--temperature-when-right", "nan"],
    ["localize", "--out", "x", "--top-p", "1.5"],
    ["localize", "--out", "x", "--seed", "1.5"],
    ["localize", "--out", "x", "--n-samples", "0"],
    ["circuit", "--data", "d", "--out", "x", "--lambda", "nan"],
    ["circuit", "--data", "d", "--out", "x", "--lambda", "-1"],
    ["circuit", "--data", "d", "--out", "x", "--epochs", "0"],
    ["circuit", "--data", "d", "--out", "x", "--lr", "inf"],
    ["circuit", "--data", "d", "--out", "x", "--max-fraction", "2"],
    ["circuit", "--data", "d", "--out", "x", "--checkpoint-every", "0"],
    ["evaluate", "--run", "r", "--test-limit", "-1"],
    ["evaluate", "--run", "r", "--max-new-tokens", "0"],
    ["evaluate", "--run", "r", "--batch-size", "0"],
    ["evaluate", "--run", "r", "--lm-eval-limit", "nan"],
    ["demo", "--steps", "0"],
    ["demo", "--steps", "-1"],
    ["demo", "--lrs", "0.5,nan"],
    ["demo", "--lrs", "0.5,"],
    ["demo", "--lambdas", "1e-2,-1"],
    ["demo", "--seeds", "0,1.5"],
    ["demo", "--max-new-tokens", "0"],
    ["demo", "--max-fraction", "0"],
]


@pytest.mark.parametrize("argv", NONSENSE, ids=" ".join)
def test_nonsense_numbers_are_refused_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # the error and a pointer to --help, no usage block above it
    assert lines[0].startswith(f"peft-cca {argv[0]}: error: argument {argv[-2]}")
    assert lines[0].endswith(f"(see `peft-cca {argv[0]} --help`)")


def test_sensible_numbers_parse():
    args = build_parser().parse_args(
        ["demo", "--steps", "20", "--lrs", "0.5, 1e-3", "--seeds", "0,1", "--lambdas", "0,1e-2", "--max-fraction", "1"]
    )
    assert (args.steps, args.lrs, args.seeds, args.lambdas) == (20, (0.5, 1e-3), (0, 1), (0.0, 1e-2))
    args = build_parser().parse_args(["localize", "--out", "x", "--top-k", "0", "--max-group-accuracy", "1.01"])
    assert (args.top_k, args.max_group_accuracy) == (0, 1.01)
    assert build_parser().parse_args(["evaluate", "--run", "r", "--val-limit", "0"]).val_limit == 0


def test_the_optional_cpu_kernel_warning_of_bitsandbytes_is_dropped_unless_verbose(tmp_path, capsys):
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    saved = list(logger.filters)
    try:
        main(["compare", "--runs", str(tmp_path / "gone.json"), "--out", str(tmp_path / "r")])
        capsys.readouterr()

        def record(message: str) -> logging.LogRecord:
            return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)

        kernel = record("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
        assert not logger.filter(kernel)
        assert logger.filter(record("another warning from the same module"))
    finally:
        logger.filters[:] = saved


def test_only_the_main_process_prints_but_every_process_reports_its_error(tmp_path):
    import os
    from pathlib import Path

    def peft_cca(rank: str, *argv: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "RANK": rank}
        command = [sys.executable, "-m", "peft_cca.cli", *argv]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    runs = str(Path(__file__).resolve().parents[1] / "results" / "smollm2-quick" / "eval")
    main_process = peft_cca("0", "compare", "--runs", runs, "--out", str(tmp_path / "a"))
    other = peft_cca("1", "compare", "--runs", runs, "--out", str(tmp_path / "b"))
    assert main_process.returncode == other.returncode == 0
    assert "Table 1" in main_process.stdout and other.stdout == ""
    failed = peft_cca("1", "amplify", "--run", str(tmp_path / "missing"))
    assert failed.returncode == 2 and "has no meta.json" in failed.stderr
