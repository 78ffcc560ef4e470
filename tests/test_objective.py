"""The margin objective: a record past the margin contributes no gradient, one below it exactly the paper's."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from test_cca_trainer import PAD, circuit_of, id_rows, one_step
from tiny_models import tiny_model

from peft_cca import CCAConfig, CCATrainingArguments
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.objective import Objective
from peft_cca.amplify.records import PivotCollator
from peft_cca.cli import main
from peft_cca.errors import UsageError


def base_differences(rows) -> list[float]:
    model = tiny_model("llama")
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit_of(model)))
    with torch.no_grad():
        return [float(logit_difference(peft_model, PivotCollator(PAD)([row]))[0]) for row in rows]


def paper_gradient(rows, n: int) -> dict[str, torch.Tensor]:
    """Minus the gradient of sum(-diff) / n over ``rows``: what one SGD step at lr 1 moves the deltas by."""
    model = tiny_model("llama")
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit_of(model)))
    (-logit_difference(peft_model, PivotCollator(PAD)(rows)).sum() / n).backward()
    return {name: -p.grad for name, p in peft_model.named_parameters() if p.requires_grad}


def leading(row: dict, diff: float) -> dict:
    """``row`` with its tokens swapped where the undesired one leads."""
    if diff >= 0:
        return row
    return {**row, "desired_token_id": row["undesired_token_id"], "undesired_token_id": row["desired_token_id"]}


def test_records_past_the_margin_add_nothing_and_the_rest_step_as_in_the_paper(tmp_path):
    rows = [leading(row, diff) for row, diff in zip(id_rows(), base_differences(id_rows()), strict=True)]
    diffs = base_differences(rows)  # every desired token leads now: a margin > 0 can fall between them
    ordered = sorted(diffs)
    margin = (ordered[2] + ordered[3]) / 2  # three rows below the margin, four past it
    assert margin > 0
    below = [row for row, diff in zip(rows, diffs, strict=True) if diff < margin]
    assert len(below) == 3
    got = one_step(tmp_path, rows, objective=f"margin:{margin!r}")
    expected = paper_gradient(below, n=len(rows))
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)


def test_one_record_past_the_margin_has_zero_gradient_and_one_below_the_papers(tmp_path):
    rows = id_rows()
    diffs = base_differences(rows)
    lead = max(range(len(rows)), key=lambda i: abs(diffs[i]))
    past = leading(rows[lead], diffs[lead])
    margin = abs(diffs[lead]) / 2
    assert margin > 0
    for value in one_step(tmp_path / "past", [past], objective=f"margin:{margin!r}").values():
        assert torch.count_nonzero(value) == 0
    below = rows[1]
    got = one_step(tmp_path / "below", [below], objective=f"margin:{max(diffs[1], 0.0) + 5.0!r}")
    paper = one_step(tmp_path / "paper", [below])
    for name, value in paper.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", ["margin", "margin:0", "margin:-1", "margin:nan", "hinge:2", "Paper"])
def test_an_objective_that_is_not_paper_or_a_positive_margin_is_one_line(spec, tmp_path):
    with pytest.raises(UsageError, match="margin:M"):
        CCATrainingArguments(str(tmp_path), objective=spec)


def test_objective_names_are_normalised():
    assert Objective.parse("margin:2.0").name == "margin:2" and Objective.parse("paper").margin is None


def test_amplify_refuses_a_bad_objective_at_parse_time(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["amplify", "--run", "r", "--objective", "margin:0"])
    assert exit_info.value.code == 2 and "argument --objective" in capsys.readouterr().err
