"""Run folders that cannot lie: a resume with other settings is refused naming them, damaged files are reported
with their line, and an unusable output location is refused before any model loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_localize_run import CONFIG, _problems
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca.cli.demo_plan
import peft_cca.runtime.loading
import peft_cca.tasks
from peft_cca.cli import main
from peft_cca.errors import UsageError
from peft_cca.localize.run import RUN_FILES, localize

QUICK = replace(CONFIG, n_samples=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=3), tiny_tokenizer()


@pytest.fixture(scope="module")
def finished(lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RUN_FILES if (folder / name).exists()}


def _copy(finished: Path, tmp_path: Path) -> Path:
    for name, data in _files(finished).items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 1}, "seed"), ({"method": "prefix"}, "method"), ({"max_new_tokens": 9}, "max_new_tokens")],
)
def test_localize_resume_with_other_settings_is_refused_and_loses_nothing(lm, finished, tmp_path, change, named):
    out = _copy(finished, tmp_path)
    before = _files(out)
    with pytest.raises(UsageError, match=rf"{named} .* \(recorded\) vs .* \(now\).*--overwrite"):
        localize(*lm, _problems()[:4], replace(QUICK, **change), out, model_name="tiny")
    assert _files(out) == before


def test_a_folder_from_before_settings_json_is_checked_against_its_meta_json(lm, finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "settings.json").unlink()
    before = _files(out)
    with pytest.raises(UsageError, match="seed 0 \\(recorded\\) vs 1 \\(now\\)"):
        localize(*lm, _problems()[:4], replace(QUICK, seed=1), out, model_name="tiny")
    assert {k: v for k, v in _files(out).items() if k != "settings.json"} == before
    localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")
    assert _files(out) == _files(finished)


def test_localize_other_problems_or_model_are_refused(lm, finished, tmp_path):
    out = _copy(finished, tmp_path)
    with pytest.raises(UsageError, match="problems_sha256"):
        localize(*lm, _problems()[1:5], QUICK, out, model_name="tiny")
    with pytest.raises(UsageError, match="model"):
        localize(*lm, _problems()[:4], QUICK, out, model_name="other")


def test_localize_same_settings_resume_and_overwrite_starts_afresh(lm, finished, tmp_path):
    out = _copy(finished, tmp_path)
    localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")
    assert _files(out) == _files(finished)  # a resume of a finished run changes nothing
    (out / "greedy.jsonl").write_text((out / "greedy.jsonl").read_text().replace('"correct": ', '"correct":  '))
    localize(*lm, _problems()[:4], replace(QUICK, seed=1), out, model_name="tiny", overwrite=True)
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["seed"] == 1 and json.loads((out / "meta.json").read_text())["seed"] == 1
    assert '"correct":  ' not in (out / "greedy.jsonl").read_text()  # regenerated, not kept


def _localize_main(monkeypatch, lm, out: Path, *flags: str) -> int:
    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", lambda name, *a, **kw: lm if name == "tiny" else 1 / 0)
    monkeypatch.setattr(peft_cca.tasks, "load_problems", lambda spec, limit=None: _problems()[:4])
    argv = ["localize", "--model", "tiny", "--task", "test", "--out", str(out), "--n-samples", "2"]
    return main(
        [*argv, "--max-new-tokens", "8", "--batch-size", "3", "--splits", "train", "validation", "test", *flags]
    )


def test_localize_command_refuses_drift_with_exit_2(monkeypatch, lm, finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    settings = json.loads((out / "settings.json").read_text())
    assert _localize_main(monkeypatch, lm, out, "--max-group-accuracy", "1.01", "--seed", "7") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was made with other settings" in err and "--overwrite" in err
    assert "seed 0 (recorded) vs 7 (now)" in err
    assert _localize_main(monkeypatch, lm, out, "--model", "unloadable", "--seed", "7") == 2  # before it loads
    assert 'model "tiny" (recorded) vs "unloadable" (now)' in capsys.readouterr().err
    assert json.loads((out / "settings.json").read_text()) == settings
    assert _localize_main(monkeypatch, lm, out, "--max-group-accuracy", "1.01") == 0  # the same settings resume
    assert _files(out) == _files(finished)


@pytest.mark.parametrize("name", ["records.jsonl", "progress.jsonl", "greedy.jsonl"])
def test_a_damaged_middle_line_is_reported_with_its_number(lm, finished, tmp_path, name):
    out = _copy(finished, tmp_path)
    # a line cut short is followed by complete ones (and ends in a newline): no kill leaves that
    (out / name).write_text('{"problem_id": "p1", "spl\n' + (out / name).read_text())
    before = _files(out)
    with pytest.raises(UsageError, match=rf"{name}: line 1: not valid JSON .*delete .* or rerun with --overwrite"):
        localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")
    assert _files(out) == before  # nothing dropped


def test_a_line_that_is_not_a_record_is_reported(lm, finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "progress.jsonl").write_text("[1, 2]\n" + (out / "progress.jsonl").read_text())
    with pytest.raises(UsageError, match=r"progress.jsonl: line 1: holds a JSON list, not a JSON object"):
        localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")


@pytest.mark.parametrize("name", ["records.jsonl", "progress.jsonl"])
def test_a_torn_last_line_is_dropped_and_regenerated(lm, finished, tmp_path, name):
    out = _copy(finished, tmp_path)
    text = (out / "progress.jsonl").read_text()
    last = text.splitlines(keepends=True)[-1]
    # a kill cut the last problem: its progress line is torn (and its record, if any, is the one to redo)
    (out / "progress.jsonl").write_text(text[: len(text) - len(last)] + last[: len(last) // 2])
    if name == "records.jsonl":
        records = (out / name).read_text()
        (out / name).write_text(records + '{"problem_id": "p3", "pre')
    localize(*lm, _problems()[:4], QUICK, out, model_name="tiny")
    assert _files(out) == _files(finished)


def test_evaluate_refuses_a_folder_as_out_before_the_model_loads(monkeypatch, finished, tmp_path, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the output was checked")

    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", no_model)
    assert main(["evaluate", "--run", str(finished), "--out", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert main(["evaluate", "--run", str(finished), "--out", str(blocker / "sub" / "eval.json")]) == 2
    assert "not writable" in capsys.readouterr().err and blocker.read_text() == "keep"


def test_circuit_refuses_an_unwritable_out_before_the_model_loads(monkeypatch, finished, tmp_path, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the output was checked")

    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", no_model)
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    for out, says in ((blocker, "is a file, not a folder"), (blocker / "sub", "not writable")):
        assert main(["circuit", "--data", str(finished), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err
    assert blocker.read_text() == "keep"


def test_demo_resume_with_other_counts_is_refused_naming_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peft_cca.cli.demo_plan, "plan", lambda settings: [])  # the stages are not what is tested here
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "quick", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["demo", "--preset", "quick", "--out", str(out), "--steps", "20", "--lrs", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "steps" in err and "lrs" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_mistyped_model_name_fails_at_once_listing_the_offline_names(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["localize", "--model", "smollm2-135m-instrcut", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "smollm2-135m-instrcut" in err and "smollm2-135m-instruct" in err and "gemma3-270m" in err


def test_a_folder_with_no_finished_work_gives_way_and_one_with_work_says_what_it_holds(tmp_path):
    from peft_cca.runtime.runfolder import check_settings

    folder = tmp_path / "run"
    assert check_settings(folder, {"lr": 1e-3}) is False
    (folder / "runtime.json").write_text("{}")  # bookkeeping, as a failed run leaves it
    (folder / "records.jsonl").write_text("")  # an empty file is no work either
    assert check_settings(folder, {"lr": 5e-3}) is False  # taken over: nothing to lose
    assert json.loads((folder / "settings.json").read_text()) == {"lr": 5e-3}
    (folder / "records.jsonl").write_text('{"problem_id": "p0"}\n')
    with pytest.raises(UsageError, match=r"lr 0\.005 \(recorded\) vs 0\.01 \(now\)\. It holds records\.jsonl: rerun"):
        check_settings(folder, {"lr": 1e-2})
    assert check_settings(folder, {"lr": 5e-3}) is True  # the recorded settings continue it


def test_a_failed_run_leaves_no_folder_but_keeps_one_with_work(monkeypatch, finished, tmp_path, capsys):
    """amplify with a model that does not exist fails after --out was made: the new folder goes, with its
    settings.json; a folder that already held work is left as it was."""
    out = tmp_path / "new" / "amplify"
    assert (
        main(["amplify", "--run", str(finished), "--no-mask", "all", "--model", "no-such-model", "--out", str(out)])
        == 2
    )
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "amplify.json").write_text("{}")
    assert (
        main(["amplify", "--run", str(finished), "--no-mask", "all", "--model", "no-such-model", "--out", str(kept)])
        == 2
    )
    assert (kept / "amplify.json").read_text() == "{}"
