"""Every JSON file the package reads fails the same way: one message naming the file, the line and the fix."""

from __future__ import annotations

import pytest

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object, read_object
from peft_cca.localize.records import DatasetError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"a": 1', r"f\.jsonl: line 4: not valid JSON \(Expecting .*column 8\); fix it"),
        (b"\xff\xfe{}", r"f\.jsonl: line 4: not UTF-8 text \(invalid start byte\); fix it"),
        (b"[" * 100_000 + b"]" * 100_000, r"f\.jsonl: line 4: JSON nested too deeply; fix it"),
        (b"[1, 2]", r"f\.jsonl: line 4: holds a JSON list, not a record; fix it"),
        (b'"text"', r"f\.jsonl: line 4: holds a JSON str, not a record; fix it"),
    ],
)
def test_a_bad_line_names_the_file_the_line_and_the_fix(text, expected):
    with pytest.raises(DatasetError, match=expected):
        parse_object(text, "f.jsonl", "fix it", line=4, error=DatasetError, kind="a record")


def test_a_line_holding_an_object_is_returned_as_it_is():
    assert parse_object('{"a": [1, {"b": null}]}', "f.jsonl", "fix it", line=1) == {"a": [1, {"b": None}]}


def test_a_whole_file_reports_the_line_where_it_breaks(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(UsageError, match=r"meta\.json: line 4: not valid JSON .*; rerun it"):
        read_object(path, "rerun it")
    path.write_text('{"a": 1}')
    assert read_object(path, "rerun it") == {"a": 1}
