import pytest

from peft_cca.tasks import DEFAULT_TASK
from peft_cca.tasks.protocol import DEFAULT, PAPER, protocol_for, setting
from peft_cca.tasks.splits import split_counts


@pytest.mark.parametrize(
    "task",
    [
        "gsm-symbolic:main",
        "gsm-symbolic-file:/data/gsm.jsonl",
        "gsm-symbolic-templates:en",
        "gsm-symbolic:p1;gsm-symbolic:p2",
    ],
)
def test_gsm_symbolic_specs_follow_the_paper(task):
    assert protocol_for(task) is PAPER


@pytest.mark.parametrize("task", [None, DEFAULT_TASK, "template:t.json", "rg:chain_sum;gsm-symbolic:main"])
def test_other_specs_keep_the_offline_defaults(task):
    assert protocol_for(task) is DEFAULT


def test_paper_protocol_is_the_authors_settings():
    assert PAPER.prompt_style == "authors"
    assert (PAPER.localize_max_new_tokens, PAPER.eval_max_new_tokens) == (2500, 1500)
    assert (PAPER.temperature_when_wrong, PAPER.temperature_when_right, PAPER.top_k, PAPER.top_p) == (0.8, 1.2, 50, 1.0)
    assert (PAPER.dcm_decay_every, PAPER.dcm_decay_gamma) == (5, 0.9)
    assert split_counts(sum(PAPER.split)) == PAPER.split == (26, 4, 20)
    assert PAPER.max_group_accuracy == 0.8


def test_a_flag_the_user_set_wins_over_the_protocol():
    assert setting(None, "gsm-symbolic:main", "eval_max_new_tokens") == 1500
    assert setting(None, DEFAULT_TASK, "eval_max_new_tokens") == 256
    assert setting(64, "gsm-symbolic:main", "eval_max_new_tokens") == 64
    assert setting("chat", "gsm-symbolic:main", "prompt_style") == "chat"
