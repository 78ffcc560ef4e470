"""Stage 3 on the real offline model: a short amplify run raises the logit difference and saves an adapter."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def test_amplify_on_smollm2_raises_the_logit_difference(tmp_path):
    from peft_cca import Circuit, describe
    from peft_cca.amplify.loss import logit_difference
    from peft_cca.amplify.records import PivotCollator
    from peft_cca.amplify.settings import AmplifySettings
    from peft_cca.amplify.trainer import amplify
    from peft_cca.evaluation.settings import Scoring
    from peft_cca.runtime.loading import MissingModelPackageError, load_model
    from peft_cca.tasks.problem import Problem
    from peft_cca.tasks.prompts import build_prompt, encode_prompt

    try:
        model, tokenizer = load_model("smollm2-135m-instruct")
    except MissingModelPackageError as err:
        pytest.skip(str(err))
    questions = [
        ("Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
        ("A box holds 5 pens. How many pens are in 2 boxes?", "10"),
        ("Sara had 9 coins and lost 2. How many coins are left?", "7"),
    ]
    records = []
    for question, answer in questions:
        prefix = encode_prompt(tokenizer, build_prompt(tokenizer, question)) + tokenizer.encode("The answer is ")
        desired = tokenizer.encode(answer)[0]
        undesired = tokenizer.encode("8")[0]
        records.append({"prefix_ids": prefix, "desired_token_id": desired, "undesired_token_id": undesired})
    shape = describe(model).shape
    circuit = Circuit(shape, {layer: {"q": [0], "mlp": list(range(0, 1536, 64))} for layer in (20, 25)})
    val = [Problem(id="v0", group_id="g", question=questions[0][0], answer=questions[0][1])]
    batch = PivotCollator(tokenizer.pad_token_id)(records)
    with torch.no_grad():
        before = logit_difference(model, batch).mean()
    settings = AmplifySettings(lrs=(1e-2,), steps=2, scoring=Scoring(max_new_tokens=8))
    result = amplify(model, tokenizer, records, circuit, val, settings, output_dir=tmp_path)
    with torch.no_grad():
        after = logit_difference(result.model, batch).mean()
    assert after > before
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "amplify.json").read_text())["best"]["lr"] == 1e-2
