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


# The CCA authors' prompt for "What is 2+2?", exactly as their code builds it (cot_prompt_template.txt filled
# from their gsm8k-cot.json in apple/ml-constructive-circuit-amplification); tiny_tokenizer adds no BOS.
AUTHORS_PROMPT = (
    "As an expert problem solver, solve step by step the following mathematical questions.\n"
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
    "there will be 21 trees. How many trees did the grove workers plant today?\n"
    "A: Let's think step by step. There are 15 trees originally. Then there were 21 trees after some more were "
    "planted. So there must have been 21 - 15 = 6. The final answer is 6.\n"
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\n"
    "A: Let's think step by step. There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The final answer is "
    "5.\n"
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?\n"
    "A: Let's think step by step. Originally, Leah had 32 chocolates. Her sister had 42. So in total they had "
    "32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The final answer is 39.\n"
    "Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
    "Jason give to Denny?\n"
    "A: Let's think step by step. Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he "
    "gave Denny 20 - 12 = 8. The final answer is 8.\n"
    "Q: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
    "now?\n"
    "A: Let's think step by step. Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that "
    "is 4 more toys. 5 + 4 = 9. The final answer is 9.\n"
    "Q: There were nine computers in the server room. Five more computers were installed each day, from monday to "
    "thursday. How many computers are now in the server room?\n"
    "A: Let's think step by step. There were originally 9 computers. For each of 4 days, 5 more computers were "
    "added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The final answer is 29.\n"
    "Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
    "balls did he have at the end of wednesday?\n"
    "A: Let's think step by step. Michael started with 58 golf balls. After losing 23 on tuesday, he had "
    "58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The final answer is 33.\n"
    "Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
    "A: Let's think step by step. Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
    "So she has 23 - 15 dollars left. 23 - 15 is 8. The final answer is 8.\n"
    "Q: What is 2+2?\n"
    "A: Let's think step by step."
)


def test_authors_prompt_is_their_text_exactly():
    tokenizer = tiny_tokenizer()  # has a chat template: the authors' style must not use it
    assert build_prompt(tokenizer, "What is 2+2?", "authors") == AUTHORS_PROMPT
    assert resolve_prompt_style(tokenizer, "authors") == "authors"
    # single newlines inside the prompt, so a blank line must not stop their completions
    assert "\n\n" not in AUTHORS_PROMPT and stop_strings("authors") == ("Q:",)
