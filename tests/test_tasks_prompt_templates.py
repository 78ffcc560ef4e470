import json

import pytest
from tiny_tokenizer import tiny_tokenizer

from peft_cca.errors import UsageError
from peft_cca.tasks import (
    PromptOptions,
    PromptTemplate,
    answer_target,
    assign_splits,
    build_prompt,
    load_problems,
    prompt_options,
)
from peft_cca.tasks.problem import Problem

MCQ = [
    {"question": f"Capital number {i}?", "choices": ["Paris", "Rome", "Berlin"], "answer": i % 3, "meta": {"n": i}}
    for i in range(10)
]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the arrow caches `datasets` writes for loaded files inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture
def mcq(tmp_path) -> list[Problem]:
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MCQ))
    return load_problems(f"file:{path}?format=choice")


def _numbered(n: int) -> list[Problem]:
    return [
        Problem(id=f"p{i:02d}", group_id="g", question=f"What is {i} + 1?", answer=str(i + 1), solution=f"{i} + 1")
        for i in range(n)
    ]


def test_a_template_renders_question_choices_and_nested_fields(mcq):
    template = PromptTemplate("#{meta.n}: {question}\n{choices}\nAnswer:")
    assert template.render(mcq[1]) == "#1: Capital number 1?\nA. Paris\nB. Rome\nC. Berlin\nAnswer:"
    assert PromptTemplate("{choices.2} or {question!r:.8}").render(mcq[0]) == "Berlin or 'Capital"
    assert PromptTemplate("{{literal}} {question}").render(mcq[0]) == "{literal} Capital number 0?"


def test_a_template_names_the_problem_and_its_fields_when_one_is_missing(mcq):
    with pytest.raises(UsageError) as caught:
        PromptTemplate("{passage} {question}").render(mcq[0])
    assert str(caught.value) == (
        f"prompt template: problem 'file:mcq.jsonl:0' ({mcq[0].source}): no value for {{passage}}; its fields are "
        "question, choices, answer, meta"
    )
    plain = Problem(id="x", group_id="g", question="q?", answer="1")
    with pytest.raises(UsageError, match=r"names \{choices\}, but problem 'x' has none; add choices=<field>"):
        PromptTemplate("{question} {choices}").render(plain)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Q: {question", r"expected '\}' before end of string; write \{\{ and \}\} for braces"),
        ("no fields at all", r"names no field"),
        ("Q: {} A:", r"name each field"),
        ("Q: {0}", r"name each field"),
    ],
)
def test_bad_templates_are_refused_when_built(text, message):
    with pytest.raises(UsageError, match=message):
        PromptTemplate(text)


def test_template_option_is_text_or_a_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Question: {question}\nAnswer:\n")
    assert PromptTemplate.from_option(str(path)).text == "Question: {question}\nAnswer:"
    assert PromptTemplate.from_option("Q: {question}").text == "Q: {question}"
    with pytest.raises(UsageError, match=r"--prompt-template 'nofile.txt' names no file and has no \{field\}"):
        PromptTemplate.from_option("nofile.txt")


def test_choice_questions_list_their_choices_in_every_default_prompt(mcq):
    tokenizer = tiny_tokenizer()
    listing = "Capital number 0?\nA. Paris\nB. Rome\nC. Berlin"
    assert build_prompt(tokenizer, mcq[0], "chat") == f"user: {listing}\nassistant: "
    assert build_prompt(tokenizer, mcq[0], "fewshot").endswith(f"Q: {listing}\nA:")


def test_chat_and_fewshot_prompts_with_a_template():
    tokenizer = tiny_tokenizer()
    problem = _numbered(1)[0]
    options = PromptOptions(template=PromptTemplate("Solve: {question}"))
    assert build_prompt(tokenizer, problem, "chat", options=options) == "user: Solve: What is 0 + 1?\nassistant: "
    fewshot = build_prompt(tokenizer, problem, "fewshot", shots=2, options=options)
    blocks = fewshot.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == "Solve: What is 0 + 1?"
    assert blocks[0].startswith("Solve: There are 15 trees") and blocks[0].endswith("The answer is 6.")
    with pytest.raises(UsageError, match=r"authors prompt style is their fixed GSM prompt"):
        build_prompt(tokenizer, problem, "authors", options=options)


def test_builtin_exemplars_cannot_fill_a_template_over_other_fields(mcq):
    options = PromptOptions(template=PromptTemplate("{question}\n{choices}\nAnswer:"))
    with pytest.raises(
        UsageError, match=r"names choices, which the built-in GSM8K exemplars lack .* with --num-fewshot K"
    ):
        build_prompt(tiny_tokenizer(), mcq[0], "fewshot", options=options)
    assert build_prompt(tiny_tokenizer(), mcq[0], "fewshot", shots=0, options=options) == PromptTemplate(
        "{question}\n{choices}\nAnswer:"
    ).render(mcq[0])


def test_kshot_exemplars_come_from_the_training_split_with_a_seed():
    problems = _numbered(40)
    split_of = assign_splits(problems, seed=0)
    options = prompt_options(problems, split_of, shots=3, seed=7)
    assert len(options.exemplars) == 4 and all(split_of[e.id] == "train" for e in options.exemplars)
    assert options == prompt_options(list(reversed(problems)), split_of, shots=3, seed=7)  # order does not matter
    assert options.exemplars != prompt_options(problems, split_of, shots=3, seed=8).exemplars
    test_problem = next(p for p in problems if split_of[p.id] == "test")
    assert options.exemplars_for(test_problem) == options.exemplars[:3]
    own = options.exemplars[0]  # a training problem never sees its own answer
    assert options.exemplars_for(own) == options.exemplars[1:]
    assert options.to_dict() == {
        "prompt_template": None,
        "num_fewshot": 3,
        "fewshot_seed": 7,
        "exemplar_ids": [e.id for e in options.exemplars],
    }


def test_kshot_prompts_in_each_style():
    tokenizer = tiny_tokenizer()
    problems = _numbered(20)
    options = prompt_options(problems, assign_splits(problems, seed=0), shots=2, seed=0)
    first, second = options.exemplars[:2]
    target = problems[-1]
    fewshot = build_prompt(tokenizer, target, "fewshot", options=options)
    assert fewshot == (
        f"Q: {first.question}\nA: {first.solution} The answer is {first.answer}.\n\n"
        f"Q: {second.question}\nA: {second.solution} The answer is {second.answer}.\n\n"
        f"Q: {target.question}\nA:"
    )
    authors = build_prompt(tokenizer, target, "authors", options=options)
    assert authors.count("Q: ") == 3 and f"The final answer is {first.answer}." in authors
    chat = build_prompt(tokenizer, target, "chat", options=options)
    assert chat == (
        f"user: {first.question}\nassistant: {answer_target(first, 'chat')}\n"
        f"user: {second.question}\nassistant: {answer_target(second, 'chat')}\n"
        f"user: {target.question}\nassistant: "
    )


def test_kshot_with_a_template_renders_each_exemplar_with_it(mcq):
    split_of = assign_splits(mcq, seed=0)
    options = prompt_options(mcq, split_of, template="Q{meta.n}: {question}\n{choices}\nAnswer:", shots=1, seed=0)
    [exemplar] = options.exemplars_for(mcq[-1])
    prompt = build_prompt(tiny_tokenizer(), mcq[-1], "fewshot", options=options)
    n = exemplar.fields["meta"]["n"]
    assert prompt.startswith(f"Q{n}: Capital number {n}?\nA. Paris\nB. Rome\nC. Berlin\nAnswer: The answer is ")
    assert prompt.endswith("Q9: Capital number 9?\nA. Paris\nB. Rome\nC. Berlin\nAnswer:")
    assert options.to_dict()["prompt_template"] == "Q{meta.n}: {question}\n{choices}\nAnswer:"


def test_kshot_needs_enough_training_problems():
    problems = _numbered(4)
    split_of = assign_splits(problems, seed=0)
    with pytest.raises(
        UsageError, match=r"--num-fewshot 5: the training split has only 2 problems; lower --num-fewshot"
    ):
        prompt_options(problems, split_of, shots=5)
    with pytest.raises(UsageError, match=r"--num-fewshot -1"):
        prompt_options(problems, split_of, shots=-1)
    assert prompt_options(problems, split_of).exemplars == ()


def test_answer_target_drops_calculator_notes_and_joins_lines():
    problem = Problem(id="x", group_id="g", question="q", answer="5", solution="2 + 3 = <<2+3=5>>5\nso five")
    assert answer_target(problem) == "2 + 3 = 5 so five The answer is 5."
    assert answer_target(problem, "authors") == "2 + 3 = 5 so five The final answer is 5."
    assert answer_target(Problem(id="y", group_id="g", question="q", answer="B")) == "The answer is B."


def test_default_options_keep_every_style_as_it_was():
    tokenizer = tiny_tokenizer()
    problem = _numbered(1)[0]
    for style in ("chat", "fewshot", "authors"):
        assert build_prompt(tokenizer, problem, style, options=PromptOptions()) == build_prompt(
            tokenizer, problem, style
        )
    assert build_prompt(tokenizer, "What is 2+2?", "chat") == "user: What is 2+2?\nassistant: "
