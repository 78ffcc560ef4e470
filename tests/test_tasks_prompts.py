import pytest
from tiny_tokenizer import tiny_tokenizer

from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import (
    build_prompt,
    encode_prompt,
    gsm8k_cot_exemplars,
    resolve_prompt_style,
    stop_strings,
)


def test_fewshot_exemplars_come_from_lm_eval():
    exemplars = gsm8k_cot_exemplars()
    assert len(exemplars) == 8
    assert exemplars[0][0].startswith("There are 15 trees in the grove.")
    assert all(target.rstrip().endswith(".") and "The answer is" in target for _, target in exemplars)


def test_fewshot_prompt_format():
    tokenizer = tiny_tokenizer()
    prompt = build_prompt(tokenizer, Problem(id="1", group_id="g", question="What is 2+2?", answer="4"), "fewshot")
    assert prompt.count("Q: ") == 9
    assert prompt.endswith("Q: What is 2+2?\nA:")
    assert "\n\n" in stop_strings("fewshot") and stop_strings("chat") == ()


def test_chat_prompt_uses_template_and_encodes_without_extra_specials():
    tokenizer = tiny_tokenizer()
    prompt = build_prompt(tokenizer, "What is 2+2?", "chat")
    assert prompt.startswith("user: What is 2+2?") and prompt.endswith("assistant: ")
    assert tokenizer.decode(encode_prompt(tokenizer, prompt)) == prompt


def test_auto_style_follows_the_chat_template():
    tokenizer = tiny_tokenizer()
    assert resolve_prompt_style(tokenizer) == "chat"
    assert build_prompt(tokenizer, "What is 2+2?") == build_prompt(tokenizer, "What is 2+2?", "chat")
    tokenizer.chat_template = None  # a base model's tokenizer, like the offline gemma3-270m's
    assert resolve_prompt_style(tokenizer, "auto") == "fewshot"
    assert build_prompt(tokenizer, "What is 2+2?").endswith("Q: What is 2+2?\nA:")
    assert resolve_prompt_style(tokenizer, "chat") == "chat"
    with pytest.raises(ValueError, match="unknown prompt style"):
        resolve_prompt_style(tokenizer, "zero-shot")
    with pytest.raises(ValueError, match="resolve the 'auto' prompt style"):
        stop_strings("auto")
