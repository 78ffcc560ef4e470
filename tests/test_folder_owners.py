"""Each file of stage 1's run folder, and each sweep's summary, has one owner module: only it names the file in
code, and only it reads the old keys of older folders. Read with ``ast`` over the whole package, so a new module that
opens ``meta.json`` by hand fails here, not on a user's folder after the format changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peft_cca"

# file (or old key) -> the one module allowed to name it in code
OWNERS = {
    "meta.json": "peft_cca/localize/folder.py",
    "summary.json": "peft_cca/localize/folder.py",
    "records.jsonl": "peft_cca/localize/records.py",
    "progress.jsonl": "peft_cca/localize/records.py",
    "amplify.json": "peft_cca/sweep/runs.py",
    "lora.json": "peft_cca/sweep/runs.py",
    # keys of format-1 folders, read by the typed reader only
    "task_spec": "peft_cca/localize/folder.py",
    "tokenizer_vocab_size": "peft_cca/localize/folder.py",
}


def names_in_code(tree: ast.AST, name: str) -> list[int]:
    """Lines where a string in code is ``name`` or a path ending in it (prose, such as help text, has spaces)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value == name or (node.value.endswith("/" + name) and " " not in node.value))
    ]


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_only_the_owner_names_the_file(name):
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if relative != OWNERS[name]:
            offenders += [f"{relative}:{line}" for line in names_in_code(ast.parse(path.read_text()), name)]
    assert not offenders, f"{name} is {OWNERS[name]}'s to read and write; ask its reader instead: {offenders}"


def test_the_check_finds_a_module_that_opens_the_file_by_hand():
    """The rule itself can fail: a by-hand read is caught, a help string is not."""
    by_hand = ast.parse('meta = json.loads((run / "meta.json").read_text())\nhelp = "run folder (meta.json)"')
    assert names_in_code(by_hand, "meta.json") == [1]


def test_the_sweep_summary_reader_takes_both_formats(tmp_path):
    """A summary written before format 2 has no arm and no version: the file's name says the arm."""
    import json

    from peft_cca.sweep.runs import SUMMARY_FORMAT, read_sweep_summary

    assert read_sweep_summary(tmp_path) is None
    (tmp_path / "lora.json").write_text(json.dumps({"runs": [], "best": {}}))
    old = read_sweep_summary(tmp_path)
    assert old["arm"] == "lora" and old["format_version"] == 1
    (tmp_path / "lora.json").unlink()
    (tmp_path / "amplify.json").write_text(json.dumps({"format_version": SUMMARY_FORMAT, "arm": "cca", "runs": []}))
    assert read_sweep_summary(tmp_path)["format_version"] == SUMMARY_FORMAT == 2
