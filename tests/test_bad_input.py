"""The bad-input campaign: every command and the Python API, fed what users and accidents feed them.

Each case must end in exit code 2 with ONE line on stderr that names what is wrong (the file, the flag or the
key), no traceback, and nothing already written lost or half-written. argparse refusals print the command's
usage before their one ``error:`` line; that is argparse's convention and is accepted here. The Python API
raises one-line :class:`UsageError`s for the same inputs, and a refused run leaves nothing behind that would refuse
the corrected rerun into the same ``--out``. Unwritable outputs are a chmod-ed folder, or ``/sys`` when running as
root (chmod does not stop root). Everything runs on a tiny random Llama saved into a temporary folder, with small
counts, so each case takes about a tenth of a second and one that fails to refuse still ends in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import tiny_tokenizer
from transformers.utils import logging as hf_logging

import peft_cca
from peft_cca.cli import main
from peft_cca.errors import UsageError
from peft_cca.localize.records import load_records, tokenizer_fingerprint
from peft_cca.runtime.loading import load_adapter, resolve
from peft_cca.tasks import load_problems

TRUNCATED_GSM_ROW = '{"id": 0, "question": "How many'
EVAL_RUN = json.dumps({"name": "base", "config": "Base", "seed": 0, "test": {"macro": 0.5}, "general": {}})
GSM_ROW_WITHOUT_GOLD = json.dumps({"id": 0, "instance": 0, "question": "How many?", "answer": "She has seven."}) + "\n"
ROOT_CHMOD_IS_IGNORED = hasattr(os, "geteuid") and os.geteuid() == 0
LOCKED = "/sys" if ROOT_CHMOD_IS_IGNORED else "locked"  # the unwritable folder, as the error line names it


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model, a stage 1 run folder, a circuit and a CCA adapter for it: the valid inputs each case
    damages one thing of."""
    root = tmp_path_factory.mktemp("assets")
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    run = root / "run"
    run.mkdir()
    meta = {
        "model": str(root / "model"),
        "task": "rg:chain_sum?size=30&seed=0",
        "seed": 0,
        "prompt_style": "chat",
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    (run / "meta.json").write_text(json.dumps(meta))
    rows = [
        {"prefix_ids": [5 + i, 6 + i, 7 + i], "desired_token_id": 10 + i, "undesired_token_id": 20 + i}
        for i in range(6)
    ]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    circuit = peft_cca.Circuit(peft_cca.describe(model).shape, {0: {"q": [1], "mlp": [3]}, 1: {"v": [0]}})
    circuit.save(run / "circuit.json")
    get_peft_model(model, peft_cca.CCAConfig(circuit=circuit, init_weights=False)).save_pretrained(root / "adapter")
    return {"model": root / "model", "run": run, "adapter": root / "adapter"}


@dataclass
class World:
    """Per-case copies of the assets in ``tmp``, and helpers to damage them."""

    tmp: Path
    model: Path
    run: Path
    adapter: Path

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def records(self, *rows: dict | str) -> Path:
        """A copy of the run folder whose records.jsonl holds ``rows`` (dicts as JSON, strings verbatim)."""
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (self.run / "records.jsonl").write_text("".join(line + "\n" for line in lines))
        return self.run

    def circuit(self, edit: Callable[[dict], object]) -> Path:
        data = json.loads((self.run / "circuit.json").read_text())
        edit(data)
        return self.file("edited-circuit.json", json.dumps(data))

    def read_only(self) -> Path:
        """A folder this process cannot write to: a chmod-ed one, or for root (whom chmod does not stop) /sys."""
        if not ROOT_CHMOD_IS_IGNORED:
            folder = self.tmp / LOCKED
            folder.mkdir()
            folder.chmod(0o500)
            return folder
        try:
            with tempfile.TemporaryFile(dir=LOCKED):
                pytest.skip(f"running as root and {LOCKED} is writable: no unwritable folder to try")
        except OSError:
            return Path(LOCKED)


@pytest.fixture
def world(assets, tmp_path) -> World:
    shutil.copytree(assets["run"], tmp_path / "run")
    shutil.copytree(assets["adapter"], tmp_path / "adapter")
    return World(tmp=tmp_path, model=assets["model"], run=tmp_path / "run", adapter=tmp_path / "adapter")


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse refusing an option
        code = stop.code
    return code, capsys.readouterr().err


def _assert_one_clear_line(code: int, err: str, keywords: str | tuple[str, ...]) -> None:
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}, stderr: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, err
    # besides the error line, only argparse's usage block (``usage: ...`` and its indented continuation)
    assert all(line.startswith(("usage:", " ")) for line in lines if line not in errors), err
    for keyword in (keywords,) if isinstance(keywords, str) else keywords:
        assert keyword.lower() in errors[0].lower(), f"{keyword!r} not named in: {errors[0]}"


# Template answers a hostile or careless author might write: each must be refused in well under a second.
HOSTILE_EXPRESSIONS = {
    "import": "__import__('os').system('echo pwned')",
    "attribute": "x.__class__.__mro__",
    "lambda": "(lambda: x)()",
    "huge-power": "10 ** 10 ** 10",
    "deep-nesting": "(" * 300 + "x" + ")" * 300,
    "round-digits": "round(x, -10 ** 9)",
    "format-width": "'%01000000000d' % x",
    "division-by-zero": "x / 0",
    "complex-gold": "(-x) ** 0.5",
    "nan-gold": "float('nan')",
}


# The folder arguments each stage command needs besides --model and --out.
RUN_ARGUMENTS: dict[str, Callable[[World], list[str]]] = {
    "localize": lambda w: [],
    "circuit": lambda w: ["--data", str(w.run)],
    "amplify": lambda w: ["--run", str(w.run)],
    "lora": lambda w: ["--run", str(w.run)],
    "evaluate": lambda w: ["--run", str(w.run)],
}

# Small counts put before each case's own flags (argparse keeps the last value): a command that fails to refuse its
# bad input still ends in seconds, and the case fails on its exit code rather than on time.
CHEAP: dict[str, list[str]] = {
    "localize": ["--limit", "2", "--max-new-tokens", "4", "--n-samples", "1"],
    "circuit": ["--epochs", "3", "--batch-size", "3", "--lambda", "0", "--lr", "0.2"],  # never an empty circuit
    "amplify": ["--steps", "1", "--lr", "1e-3", "--val-limit", "1", "--max-new-tokens", "2"],
    "lora": ["--max-steps", "1", "--lr", "1e-4", "--train-limit", "2", "--val-limit", "1", "--max-new-tokens", "2"],
    "evaluate": ["--test-limit", "1", "--val-limit", "0", "--no-kl", "--max-new-tokens", "2", "--retention-tasks"],
    "compare": ["--quiet"],
    "demo": ["--preset", "quick", "--problems", "2", "--steps", "1", "--dcm-epochs", "1", "--test-limit", "1"],
}


def _model(w: World) -> list[str]:
    return ["--model", str(w.model)]


def _record(**fields) -> dict:
    return {"prefix_ids": [5, 6, 7], "desired_token_id": 10, "undesired_token_id": 20, **fields}


# Each case: id -> (argv from the world, the word the one error line must contain).
CASES: dict[str, tuple[Callable[[World], list[str]], str]] = {
    # -- localize -------------------------------------------------------------------------------------------------
    "localize-missing-model-folder": (
        lambda w: ["localize", "--model", str(w.tmp / "no-such-model"), "--out", str(w.tmp / "o")],
        "no-such-model",
    ),
    "localize-model-is-a-file": (
        lambda w: ["localize", "--model", str(w.file("model.bin", "x")), "--out", str(w.tmp / "o")],
        "model.bin",
    ),
    "localize-folder-without-config": (
        lambda w: ["localize", "--model", str(w.run), "--out", str(w.tmp / "o")],
        "config.json",
    ),
    "localize-unknown-task-kind": (
        lambda w: ["localize", *_model(w), "--task", "bogus:thing", "--out", str(w.tmp / "o")],
        "bogus",
    ),
    "localize-unknown-rg-task": (
        lambda w: ["localize", *_model(w), "--task", "rg:no_such_task_xyz", "--out", str(w.tmp / "o")],
        "no_such_task_xyz",
    ),
    "localize-task-option-not-key-value": (
        lambda w: ["localize", *_model(w), "--task", "rg:chain_sum?size", "--out", str(w.tmp / "o")],
        "size",
    ),
    "localize-task-size-not-a-number": (
        lambda w: ["localize", *_model(w), "--task", "rg:chain_sum?size=abc", "--out", str(w.tmp / "o")],
        "size",
    ),
    "localize-task-size-huge": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            "rg:chain_sum?size=99999999999999999999",
            "--out",
            str(w.tmp / "o"),
        ],
        "size",
    ),
    "localize-missing-gsm-file": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"gsm-symbolic-file:{w.tmp / 'nope.jsonl'}",
            "--out",
            str(w.tmp / "o"),
        ],
        "nope.jsonl",
    ),
    "localize-empty-gsm-file": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"gsm-symbolic-file:{w.file('empty.jsonl', '')}",
            "--out",
            str(w.tmp / "o"),
        ],
        "empty.jsonl",
    ),
    "localize-truncated-gsm-file": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"gsm-symbolic-file:{w.file('cut.jsonl', TRUNCATED_GSM_ROW)}",
            "--out",
            str(w.tmp / "o"),
        ],
        "cut.jsonl",
    ),
    "localize-gsm-row-without-gold-line": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"gsm-symbolic-file:{w.file('gold.jsonl', GSM_ROW_WITHOUT_GOLD)}",
            "--out",
            str(w.tmp / "o"),
        ],
        "gold.jsonl",
    ),
    "localize-gsm-row-missing-keys": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"gsm-symbolic-file:{w.file('keys.jsonl', json.dumps({'id': 0, 'question': 'q?'}) + chr(10))}",
            "--out",
            str(w.tmp / "o"),
        ],
        "keys.jsonl",
    ),
    "localize-template-not-json": (
        lambda w: [
            "localize",
            *_model(w),
            "--task",
            f"template:{w.file('broken.json', TRUNCATED_GSM_ROW)}",
            "--out",
            str(w.tmp / "o"),
        ],
        "broken.json",
    ),
    "localize-template-empty-folder": (
        lambda w: ["localize", *_model(w), "--task", f"template:{_empty_folder(w)}", "--out", str(w.tmp / "o")],
        "no-templates",
    ),
    "localize-limit-not-a-number": (lambda w: ["localize", "--limit", "abc", "--out", str(w.tmp / "o")], "--limit"),
    "localize-limit-negative": (lambda w: ["localize", "--limit", "-1", "--out", str(w.tmp / "o")], "--limit"),
    "localize-zero-samples": (lambda w: ["localize", "--n-samples", "0", "--out", str(w.tmp / "o")], "--n-samples"),
    "localize-zero-max-new-tokens": (
        lambda w: ["localize", "--max-new-tokens", "0", "--out", str(w.tmp / "o")],
        "--max-new-tokens",
    ),
    "localize-zero-batch": (lambda w: ["localize", "--batch-size", "0", "--out", str(w.tmp / "o")], "--batch-size"),
    "localize-nan-temperature": (
        lambda w: ["localize", "--temperature-when-wrong", "nan", "--out", str(w.tmp / "o")],
        "--temperature-when-wrong",
    ),
    "localize-top-p-above-one": (lambda w: ["localize", "--top-p", "2", "--out", str(w.tmp / "o")], "--top-p"),
    "localize-negative-seed": (lambda w: ["localize", "--seed", "-3", "--out", str(w.tmp / "o")], "--seed"),
    "localize-out-is-a-file": (
        lambda w: ["localize", *_model(w), "--limit", "2", "--out", str(w.file("taken.txt", "keep me"))],
        "taken.txt",
    ),
    "localize-out-not-writable": (
        lambda w: ["localize", *_model(w), "--limit", "2", "--out", str(w.read_only() / "o")],
        LOCKED,
    ),
    **{
        f"localize-hostile-template-{name}": (
            lambda w, expression=expression: [
                "localize",
                *_model(w),
                "--task",
                f"template:{_template(w, expression)}?size=1",
                "--out",
                str(w.tmp / "o"),
            ],
            "hostile.json",
        )
        for name, expression in HOSTILE_EXPRESSIONS.items()
    },
    **{
        f"{command}-out-under-a-file": (
            lambda w, command=command, extra=extra: [
                command,
                *extra(w),
                *_model(w),
                "--out",
                str(w.file("taken.txt", "keep me") / "sub"),
            ],
            "taken.txt",
        )
        for command, extra in {**RUN_ARGUMENTS, "demo": lambda w: []}.items()
    },
    **{
        f"{command}-missing-model": (
            lambda w, command=command, extra=extra: [
                command,
                *extra(w),
                "--model",
                str(w.tmp / "no-such-model"),
                "--out",
                str(w.tmp / "o"),
            ],
            "no-such-model",
        )
        for command, extra in RUN_ARGUMENTS.items()
    },
    **{
        f"{command}-mistyped-model-name": (
            lambda w, command=command, extra=extra: [
                command,
                *extra(w),
                "--model",
                "smolm2-135m",
                "--out",
                str(w.tmp / "o"),
            ],
            "smolm2-135m",
        )
        for command, extra in RUN_ARGUMENTS.items()
    },
    **{
        f"{command}-corrupted-meta": (
            lambda w, command=command, extra=extra: [
                command,
                *extra(_broken_meta(w)),
                *_model(w),
                "--out",
                str(w.tmp / "o"),
            ],
            "meta.json",
        )
        for command, extra in RUN_ARGUMENTS.items()
        if command != "localize"
    },
    # -- circuit --------------------------------------------------------------------------------------------------
    "circuit-missing-data": (
        lambda w: ["circuit", "--data", str(w.tmp / "nothing"), *_model(w), "--out", str(w.tmp / "c")],
        "nothing",
    ),
    "circuit-empty-records": (
        lambda w: ["circuit", "--data", str(w.records()), *_model(w), "--out", str(w.tmp / "c")],
        "records.jsonl",
    ),
    "circuit-truncated-record": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(), '{"prefix_ids": [5, 6')),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        ("records.jsonl", "line 2"),
    ),
    "circuit-corrupted-record": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(), "\x00\x13garbage\x7f")),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        ("records.jsonl", "line 2"),
    ),
    "circuit-record-of-another-format": (
        lambda w: ["circuit", "--data", str(w.records({"question": "q"})), *_model(w), "--out", str(w.tmp / "c")],
        ("records.jsonl", "line 1"),
    ),
    "circuit-token-id-out-of-range": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(), _record(desired_token_id=VOCAB + 5))),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        "vocabulary",
    ),
    "circuit-negative-token-id": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(prefix_ids=[5, -1, 7]))),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        "records.jsonl",
    ),
    "circuit-float-token-id": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(desired_token_id=50.7))),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        "desired_token_id",
    ),
    "circuit-boolean-token-id": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(undesired_token_id=True))),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        "undesired_token_id",
    ),
    "circuit-desired-equals-undesired": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(undesired_token_id=10), _record(prefix_ids=[8, 9], undesired_token_id=10))),
            *_model(w),
            "--out",
            str(w.tmp / "c"),
        ],
        "desired_token_id == undesired_token_id",
    ),
    "circuit-records-not-utf8": (
        lambda w: ["circuit", "--data", str(_not_utf8(w)), *_model(w), "--out", str(w.tmp / "c")],
        "records.jsonl",
    ),
    "circuit-another-tokenizer": (
        lambda w: ["circuit", "--data", str(_other_tokenizer(w)), *_model(w), "--out", str(w.tmp / "c")],
        "tokenizer",
    ),
    "circuit-nan-lambda": (
        lambda w: ["circuit", "--data", str(w.run), "--lambda", "nan", "--out", str(w.tmp / "o")],
        "nan",
    ),
    "circuit-text-lambda": (
        lambda w: ["circuit", "--data", str(w.run), "--lambda", "1e-2,big", "--out", str(w.tmp / "o")],
        "--lambda",
    ),
    "circuit-negative-lambda": (
        lambda w: ["circuit", "--data", str(w.run), "--lambda", "-1", "--out", str(w.tmp / "o")],
        "--lambda",
    ),
    "circuit-zero-epochs": (
        lambda w: ["circuit", "--data", str(w.run), "--epochs", "0", "--out", str(w.tmp / "o")],
        "--epochs",
    ),
    "circuit-zero-batch": (
        lambda w: ["circuit", "--data", str(w.run), "--batch-size", "0", "--out", str(w.tmp / "o")],
        "--batch-size",
    ),
    "circuit-negative-lr": (
        lambda w: ["circuit", "--data", str(w.run), "--lr", "-1", "--out", str(w.tmp / "o")],
        "--lr",
    ),
    "circuit-lr-not-a-number": (
        lambda w: ["circuit", "--data", str(w.run), "--lr", "fast", "--out", str(w.tmp / "o")],
        "--lr",
    ),
    "circuit-early-stop-negative": (
        lambda w: ["circuit", "--data", str(w.run), "--early-stop", "-0.5", "--out", str(w.tmp / "o")],
        "--early-stop",
    ),
    "circuit-max-fraction-above-one": (
        lambda w: ["circuit", "--data", str(w.run), "--max-fraction", "3", "--out", str(w.tmp / "o")],
        "--max-fraction",
    ),
    "circuit-refusal-keeps-a-finished-out": (
        lambda w: [
            "circuit",
            "--data",
            str(w.records(_record(undesired_token_id=10))),
            *_model(w),
            "--out",
            str(_finished(w, "c", "circuit.json", "sweep.json", "lambda_0.01/circuit.json")),
        ],
        "desired_token_id == undesired_token_id",
    ),
    "circuit-out-is-a-file": (
        lambda w: ["circuit", "--data", str(w.run), *_model(w), "--out", str(w.file("taken.txt", "keep me"))],
        "taken.txt",
    ),
    "circuit-out-not-writable": (
        lambda w: ["circuit", "--data", str(w.run), *_model(w), "--out", str(w.read_only())],
        LOCKED,
    ),
    # -- amplify --------------------------------------------------------------------------------------------------
    "amplify-missing-run": (
        lambda w: ["amplify", "--run", str(w.tmp / "no-run"), "--out", str(w.tmp / "a")],
        "no-run",
    ),
    "amplify-run-with-only-a-broken-meta": (
        lambda w: ["amplify", "--run", str(w.file("bad-run/meta.json", "{not json").parent), "--out", str(w.tmp / "o")],
        "meta.json",
    ),
    "amplify-missing-circuit": (
        lambda w: ["amplify", "--run", str(w.run), "--circuit", str(w.tmp / "gone.json"), "--out", str(w.tmp / "a")],
        "gone.json",
    ),
    "amplify-empty-circuit-file": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.file("empty.json", "")),
            "--out",
            str(w.tmp / "o"),
        ],
        "empty.json",
    ),
    "amplify-truncated-circuit": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.file("cut.json", (w.run / "circuit.json").read_text()[:40])),
            "--out",
            str(w.tmp / "a"),
        ],
        "cut.json",
    ),
    "amplify-circuit-wrong-version": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d.update(format="peft-cca/circuit@99"))),
            "--out",
            str(w.tmp / "a"),
        ],
        "edited-circuit.json",
    ),
    "amplify-circuit-of-no-component": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d.update(layers={}))),
            "--out",
            str(w.tmp / "a"),
        ],
        "selects no component",
    ),
    "amplify-circuit-of-another-shape": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d["model"].update(num_layers=7))),
            "--out",
            str(w.tmp / "a"),
        ],
        "num_layers",
    ),
    "amplify-circuit-index-out-of-range": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d["layers"]["0"].update(mlp=[3, 500]))),
            "--out",
            str(w.tmp / "a"),
        ],
        "500",
    ),
    "amplify-circuit-layer-out-of-range": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d["layers"].update({"9": {"q": [0]}}))),
            "--out",
            str(w.tmp / "a"),
        ],
        "layer 9",
    ),
    "amplify-circuit-float-index": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            "--circuit",
            str(w.circuit(lambda d: d["layers"]["0"].update(mlp=[3.5]))),
            "--out",
            str(w.tmp / "a"),
        ],
        "3.5",
    ),
    "amplify-zero-steps": (lambda w: ["amplify", "--run", str(w.run), "--steps", "0"], "--steps"),
    "amplify-negative-steps": (lambda w: ["amplify", "--run", str(w.run), "--steps", "-1"], "--steps"),
    "amplify-nan-lr": (lambda w: ["amplify", "--run", str(w.run), "--lr", "nan"], "--lr"),
    "amplify-text-lr": (lambda w: ["amplify", "--run", str(w.run), "--lr", "1e-3", "big"], "--lr"),
    "amplify-zero-batch": (lambda w: ["amplify", "--run", str(w.run), "--batch-size", "0"], "--batch-size"),
    "amplify-out-is-a-file": (
        lambda w: ["amplify", "--run", str(w.run), *_model(w), "--out", str(w.file("taken.txt", "keep me"))],
        "taken.txt",
    ),
    "amplify-out-not-writable": (
        lambda w: ["amplify", "--run", str(w.run), *_model(w), "--out", str(w.read_only())],
        LOCKED,
    ),
    "amplify-desired-equals-undesired": (
        lambda w: ["amplify", "--run", str(w.records(_record(undesired_token_id=10))), *_model(w), "--out", str(w.tmp)],
        "desired_token_id == undesired_token_id",
    ),
    "amplify-empty-records": (
        lambda w: ["amplify", "--run", str(w.records()), *_model(w), "--out", str(w.tmp / "a")],
        "records.jsonl",
    ),
    "amplify-refusal-keeps-a-finished-out": (
        lambda w: [
            "amplify",
            "--run",
            str(w.run),
            *_model(w),
            "--circuit",
            str(w.file("empty.json", "")),
            "--out",
            str(_finished(w, "amplify", "amplify.json", "adapter/adapter_model.safetensors")),
        ],
        "empty.json",
    ),
    # -- lora -----------------------------------------------------------------------------------------------------
    "lora-missing-run": (lambda w: ["lora", "--run", str(w.tmp / "no-run")], "no-run"),
    "lora-zero-rank": (lambda w: ["lora", "--run", str(w.run), "--rank", "0"], "--rank"),
    "lora-negative-lr": (lambda w: ["lora", "--run", str(w.run), "--lr", "-1e-4"], "--lr"),
    "lora-dropout-above-one": (lambda w: ["lora", "--run", str(w.run), "--dropout", "1.5"], "--dropout"),
    "lora-nan-epochs": (lambda w: ["lora", "--run", str(w.run), "--epochs", "nan"], "--epochs"),
    "lora-zero-max-steps": (lambda w: ["lora", "--run", str(w.run), "--max-steps", "0"], "--max-steps"),
    "lora-out-is-a-file": (
        lambda w: ["lora", "--run", str(w.run), *_model(w), "--out", str(w.file("taken.txt", "keep me"))],
        "taken.txt",
    ),
    "lora-out-not-writable": (
        lambda w: ["lora", "--run", str(w.run), *_model(w), "--out", str(w.read_only())],
        LOCKED,
    ),
    # -- evaluate -------------------------------------------------------------------------------------------------
    "evaluate-missing-run": (lambda w: ["evaluate", "--run", str(w.tmp / "no-run")], "no-run"),
    "evaluate-missing-adapter": (
        lambda w: ["evaluate", "--run", str(w.run), "--adapter", str(w.tmp / "no-adapter"), "--out", str(w.tmp / "e")],
        "no-adapter",
    ),
    "evaluate-adapter-without-weights": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            "--adapter",
            str(_without_weights(w)),
            "--out",
            str(w.tmp / "e.json"),
        ],
        "adapter_model.safetensors",
    ),
    "evaluate-adapter-corrupted-weights": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            "--adapter",
            str(_corrupted_weights(w)),
            "--out",
            str(w.tmp / "e.json"),
        ],
        "adapter_model.safetensors",
    ),
    "evaluate-adapter-nan-weights": (
        lambda w: ["evaluate", "--run", str(w.run), "--adapter", str(_nan_weights(w)), "--out", str(w.tmp / "e.json")],
        "adapter_model.safetensors",
    ),
    "evaluate-adapter-config-retargeted": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            *_model(w),
            "--adapter",
            str(_retargeted(w)),
            "--out",
            str(w.tmp / "e.json"),
        ],
        ("adapter_config.json", "rows [4]"),
    ),
    "evaluate-adapter-config-corrupted": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            "--adapter",
            str(w.file("adapter/adapter_config.json", "{ truncated").parent),
            "--out",
            str(w.tmp / "e.json"),
        ],
        "adapter_config.json",
    ),
    "evaluate-adapter-is-a-file": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            *_model(w),
            "--adapter",
            str(w.run / "circuit.json"),
            "--out",
            str(w.tmp / "e.json"),
        ],
        "circuit.json",
    ),
    "evaluate-refusal-keeps-a-finished-out": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            *_model(w),
            "--adapter",
            str(_nan_weights(w)),
            "--out",
            str(w.file("eval.json", EVAL_RUN)),
        ],
        "adapter_model.safetensors",
    ),
    "evaluate-corrupted-records": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.records(_record(), '{"prefix_ids": [5,')),
            *_model(w),
            "--out",
            str(w.tmp / "e.json"),
        ],
        "records.jsonl",
    ),
    "evaluate-out-is-a-folder": (
        lambda w: ["evaluate", "--run", str(w.run), *_model(w), "--out", str(w.run)],
        "folder",
    ),
    "evaluate-out-not-writable": (
        lambda w: ["evaluate", "--run", str(w.run), *_model(w), "--out", str(w.read_only() / "e.json")],
        LOCKED,
    ),
    "evaluate-zero-batch": (lambda w: ["evaluate", "--run", str(w.run), "--batch-size", "0"], "--batch-size"),
    "evaluate-negative-retention-size": (
        lambda w: ["evaluate", "--run", str(w.run), "--retention-size", "-5"],
        "--retention-size",
    ),
    "evaluate-text-test-limit": (lambda w: ["evaluate", "--run", str(w.run), "--test-limit", "all"], "--test-limit"),
    "evaluate-unknown-task": (
        lambda w: ["evaluate", "--run", str(w.run), *_model(w), "--task", "rg:nope_task", "--out", str(w.tmp / "e")],
        "nope_task",
    ),
    "evaluate-unknown-retention-task": (
        lambda w: [
            "evaluate",
            "--run",
            str(w.run),
            *_model(w),
            "--retention-tasks",
            "nope_retention",
            "--out",
            str(w.tmp / "e.json"),
        ],
        "nope_retention",
    ),
    # -- compare --------------------------------------------------------------------------------------------------
    "compare-missing-run": (
        lambda w: ["compare", "--runs", str(w.tmp / "gone.json"), "--out", str(w.tmp / "o")],
        "gone",
    ),
    "compare-empty-eval-file": (
        lambda w: ["compare", "--runs", str(w.file("empty.json", "")), "--out", str(w.tmp / "r")],
        "empty.json",
    ),
    "compare-truncated-eval-file": (
        lambda w: [
            "compare",
            "--runs",
            str(w.file("cut.json", '{"name": "base", "test": {')),
            "--out",
            str(w.tmp / "o"),
        ],
        "cut.json",
    ),
    "compare-eval-file-of-another-kind": (
        lambda w: ["compare", "--runs", str(w.file("other.json", "[1, 2, 3]")), "--out", str(w.tmp / "r")],
        "other.json",
    ),
    "compare-out-is-a-file": (
        lambda w: ["compare", "--runs", str(w.file("base.json", EVAL_RUN)), "--out", str(w.file("taken.txt", "x"))],
        "taken.txt",
    ),
    "compare-out-not-writable": (
        lambda w: ["compare", "--runs", str(w.file("base.json", EVAL_RUN)), "--out", str(w.read_only())],
        LOCKED,
    ),
    # -- demo -----------------------------------------------------------------------------------------------------
    "demo-out-not-writable": (lambda w: ["demo", *_model(w), "--out", str(w.read_only() / "d")], LOCKED),
    "demo-zero-steps": (lambda w: ["demo", "--out", str(w.tmp / "d"), "--steps", "0"], "--steps"),
    "demo-text-lrs": (lambda w: ["demo", "--out", str(w.tmp / "d"), "--lrs", "1e-3,fast"], "--lrs"),
    "demo-nan-lambdas": (lambda w: ["demo", "--out", str(w.tmp / "d"), "--lambdas", "nan"], "--lambdas"),
    "demo-bad-seeds": (lambda w: ["demo", "--out", str(w.tmp / "d"), "--seeds", "0,one"], "--seeds"),
    "demo-zero-problems": (lambda w: ["demo", "--out", str(w.tmp / "d"), "--problems", "0"], "--problems"),
    "demo-out-is-a-file": (
        lambda w: ["demo", *_model(w), "--out", str(w.file("taken.txt", "keep me"))],
        "taken.txt",
    ),
    "demo-missing-model": (
        lambda w: ["demo", "--model", str(w.tmp / "no-such-model"), "--out", str(w.tmp / "d")],
        "no-such-model",
    ),
}


def _template(w: World, answer: str) -> Path:
    annotated = "{name,Mira} has {x,12} beads.\n#init:\n- name = sample(['Mira', 'Ada'])\n- $x = range(2, 9)\n"
    return w.file("hostile.json", json.dumps({"id": "hostile", "question_annotated": annotated + f"#answer: {answer}"}))


def _broken_meta(w: World) -> World:
    (w.run / "meta.json").write_text('{"model": "x", "task": ')
    return w


def _retargeted(w: World) -> Path:
    """The adapter with its config's circuit edited to other rows than the weights were trained for."""
    path = w.adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["circuit"]["layers"]["0"]["mlp"] = [4]
    path.write_text(json.dumps(config))
    return w.adapter


def _not_utf8(w: World) -> Path:
    (w.run / "records.jsonl").write_bytes(json.dumps(_record()).encode() + b"\n\xff\xfe\x00oops\n")
    return w.run


def _finished(w: World, folder: str, *files: str) -> Path:
    """An output folder holding the files of an earlier finished run, which a refused run must leave as they are."""
    for name in files:
        w.file(f"{folder}/{name}", f"finished earlier: {name}")
    return w.tmp / folder


def _empty_folder(w: World) -> Path:
    (w.tmp / "no-templates").mkdir()
    return w.tmp / "no-templates"


def _other_tokenizer(w: World) -> Path:
    (w.run / "meta.json").write_text(json.dumps({"tokenizer": {"name": "other", "vocab_size": 5}}))
    return w.run


def _without_weights(w: World) -> Path:
    (w.adapter / "adapter_model.safetensors").unlink()
    return w.adapter


def _corrupted_weights(w: World) -> Path:
    path = w.adapter / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    return w.adapter


def _nan_weights(w: World) -> Path:
    path = w.adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: t.fill_(float("nan")) if t.is_floating_point() else t for k, t in tensors.items()}, path)
    return w.adapter


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch):
    """A name that is not local must fail at once, never after hub retries; progress bars are not error lines."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.mark.parametrize("case", sorted(CASES))
def test_command_refuses_bad_input_with_one_line(case, world, capsys):
    build, keyword = CASES[case]
    command, *rest = build(world)
    argv = [command, *CHEAP[command], *rest]
    before = _snapshot(world.tmp)
    start = time.monotonic()
    code, err = _run(argv, capsys)
    elapsed = time.monotonic() - start
    _assert_one_clear_line(code, err, keyword)
    after = _snapshot(world.tmp)
    for path, data in before.items():
        assert after.get(path) == data, f"{path} was changed or removed by a refused run"
    assert not [p for p in after if p.name.endswith(".tmp")], "a half-written temporary file was left behind"
    for typo in ("no-run", "no-such-model", "no-adapter", "nothing", "gone.json"):
        assert not (world.tmp / typo).exists(), f"the refused run created the mistyped path {typo}"
    assert elapsed < 30, f"refusing took {elapsed:.1f} s"


# -- the Python API -----------------------------------------------------------------------------------------------


API_CASES: dict[str, tuple[Callable[[World], object], tuple[str, ...]]] = {
    "circuit-load-empty": (lambda w: peft_cca.Circuit.load(w.file("empty.json", "")), ("empty.json",)),
    "circuit-load-truncated": (
        lambda w: peft_cca.Circuit.load(w.file("cut.json", (w.run / "circuit.json").read_text()[:60])),
        ("cut.json",),
    ),
    "circuit-load-wrong-version": (
        lambda w: peft_cca.Circuit.load(w.circuit(lambda d: d.update(format="peft-cca/circuit@0"))),
        ("edited-circuit.json", "format"),
    ),
    "circuit-load-another-model": (
        lambda w: peft_cca.Circuit.load(w.run / "circuit.json", tiny_model("gemma2")),
        ("circuit.json", "head_dim"),
    ),
    "circuit-bool-index": (
        lambda w: peft_cca.Circuit.load(w.circuit(lambda d: d["layers"]["0"].update(q=[True]))),
        ("edited-circuit.json", "True"),
    ),
    "config-of-another-model": (
        lambda w: get_peft_model(
            tiny_model("gemma2"), peft_cca.CCAConfig(circuit=peft_cca.Circuit.load(w.run / "circuit.json"))
        ),
        ("head_dim",),
    ),
    "config-unknown-mlp-target": (
        lambda w: peft_cca.CCAConfig(circuit=peft_cca.Circuit.load(w.run / "circuit.json"), mlp_targets=["sideways"]),
        ("mlp_targets", "sideways"),
    ),
    "records-desired-equals-undesired": (
        lambda w: load_records(w.records(_record(undesired_token_id=10))),
        ("records.jsonl", "desired_token_id == undesired_token_id"),
    ),
    "records-out-of-vocabulary": (
        lambda w: load_records(w.records(_record(prefix_ids=[5, 500])), vocab_size=VOCAB),
        ("500", "vocabulary"),
    ),
    "adapter-without-weights": (lambda w: load_adapter(tiny_model("llama"), _without_weights(w)), ("safetensors",)),
    "adapter-truncated-weights": (
        lambda w: load_adapter(tiny_model("llama"), _corrupted_weights(w)),
        ("adapter_model.safetensors",),
    ),
    "adapter-nan-weights": (lambda w: load_adapter(tiny_model("llama"), _nan_weights(w)), ("NaN",)),
    "adapter-for-another-model": (lambda w: load_adapter(tiny_model("gemma2"), w.adapter), ("adapter_config.json",)),
    "task-unknown-kind": (lambda w: load_problems("nope:thing"), ("nope",)),
    "task-unknown-rg-task": (lambda w: load_problems("rg:not_a_task_xyz?size=2"), ("not_a_task_xyz",)),
    "task-size-zero": (lambda w: load_problems("rg:chain_sum?size=0"), ("size",)),
    "task-hostile-template": (
        lambda w: load_problems(f"template:{_template(w, HOSTILE_EXPRESSIONS['huge-power'])}?size=1"),
        ("hostile.json",),
    ),
    "model-unknown-name": (lambda w: resolve("no-such-model-anywhere"), ("no-such-model-anywhere", "offline")),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_python_api_refuses_bad_input_with_one_line(case, world):
    call, keywords = API_CASES[case]
    start = time.monotonic()
    with pytest.raises(UsageError) as caught:
        call(world)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    for keyword in keywords:
        assert keyword.lower() in message.lower(), f"{keyword!r} not named in: {message}"


# -- a refused run leaves nothing that blocks the corrected one ---------------------------------------------------

# (command, the folder flags, the output, a mistake, its correction): the corrected run into the same --out must not
# be refused as "made with other settings" because the refused run recorded its mistake there.
CORRECTED_RUNS = {
    "amplify-model": ("amplify", "--run", "a", ["--model", "smolm2-135m"], lambda w: _model(w)),
    "amplify-circuit": (
        "amplify",
        "--run",
        "a",
        ["--model", "{model}", "--circuit", "{tmp}/typo.json"],
        lambda w: [*_model(w), "--circuit", str(w.run / "circuit.json")],
    ),
    "circuit-model": ("circuit", "--data", "c", ["--model", "smolm2-135m"], lambda w: _model(w)),
    "lora-model": ("lora", "--run", "l", ["--model", "smolm2-135m"], lambda w: _model(w)),
    "evaluate-model": ("evaluate", "--run", "e.json", ["--model", "smolm2-135m"], lambda w: _model(w)),
    "evaluate-adapter": (
        "evaluate",
        "--run",
        "e.json",
        ["--model", "{model}", "--adapter", "{tmp}/typo-adapter"],
        lambda w: [*_model(w), "--adapter", str(w.adapter)],
    ),
}


@pytest.mark.parametrize("case", sorted(CORRECTED_RUNS))
def test_a_refused_run_does_not_block_its_corrected_rerun(case, world, capsys):
    command, flag, out, mistake, correction = CORRECTED_RUNS[case]
    common = [command, *CHEAP[command], flag, str(world.run), "--out", str(world.tmp / out)]
    wrong = [part.format(model=world.model, tmp=world.tmp) for part in mistake]
    code, err = _run([*common, *wrong], capsys)
    assert code == 2, err
    code, err = _run([*common, *correction(world)], capsys)
    assert "other settings" not in err, err
    assert code == 0, err


# Mistakes that need no model to find are refused before one loads (on a 9B model that is minutes saved).
BEFORE_MODEL_LOAD: dict[str, tuple[Callable[[World], list[str]], str]] = {
    "evaluate-unknown-retention-task": (
        lambda w: ["evaluate", "--run", str(w.run), *_model(w), "--retention-tasks", "nope_retention"],
        "nope_retention",
    ),
    "amplify-damaged-circuit": (
        lambda w: ["amplify", "--run", str(w.run), *_model(w), "--circuit", str(w.file("cut.json", "{"))],
        "cut.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BEFORE_MODEL_LOAD))
def test_mistakes_found_without_a_model_are_refused_before_it_loads(case, world, capsys, monkeypatch):
    import peft_cca.runtime.loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", no_load)
    build, keyword = BEFORE_MODEL_LOAD[case]
    command, *rest = build(world)
    code, err = _run([command, *CHEAP[command], *rest, "--out", str(world.tmp / "early")], capsys)
    _assert_one_clear_line(code, err, keyword)
