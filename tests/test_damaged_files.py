"""Damaged input files: each is one UsageError (or CCAError) line naming the file and the line or key at fault."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tiny_models import tiny_model

from peft_cca import Circuit, describe
from peft_cca.errors import CCAError, UsageError
from peft_cca.localize.records import load_records
from peft_cca.method.arch import ModelShape
from peft_cca.runtime.loading import check_adapter_folder, load_adapter
from peft_cca.tasks.sources import load_problems

GOOD = {"prefix_ids": [1, 2, 3], "desired_token_id": 4, "undesired_token_id": 5, "split": "train"}


def _records(tmp_path, *lines: str):
    (tmp_path / "records.jsonl").write_text("".join(line + "\n" for line in (json.dumps(GOOD), *lines)))
    return tmp_path


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"prefix_ids": [1, 2', r"line 2: not valid JSON"),
        ("[1, 2, 3]", r"line 2: holds a JSON list, not a record object"),
        (json.dumps({"prefix_ids": [1]}), r"line 2: record lacks \['desired_token_id', 'undesired_token_id'\]"),
        (json.dumps({**GOOD, "desired_token_id": 504.7}), r"line 2: desired_token_id must be a whole .* 504\.7"),
        (json.dumps({**GOOD, "undesired_token_id": True}), r"line 2: undesired_token_id must be a whole .* True"),
        (json.dumps({**GOOD, "prefix_ids": [1, 2.0, 3]}), r"line 2: prefix_ids must be .* found 2\.0"),
        (json.dumps({**GOOD, "prefix_ids": [1, -3]}), r"line 2: prefix_ids must be .* found -3"),
        (json.dumps({**GOOD, "prefix_ids": [1, 96, 97]}), r"line 2 \(2\): token ids \[97\] are outside .* of 97"),
    ],
)
def test_a_damaged_record_names_the_file_and_the_line(tmp_path, line, expected):
    _records(tmp_path, line)
    with pytest.raises(UsageError, match=r"records\.jsonl: " + expected) as caught:
        load_records(tmp_path, vocab_size=97)
    _one_line(caught)


def test_a_record_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "records.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(UsageError, match=r"records\.jsonl: line 2: not UTF-8"):
        load_records(tmp_path)


def test_records_without_signal_are_refused_with_a_count_never_an_empty_circuit(tmp_path):
    same = json.dumps({**GOOD, "undesired_token_id": GOOD["desired_token_id"]})
    (tmp_path / "records.jsonl").write_text(f"{same}\n{same}\n{same}\n")
    with pytest.raises(UsageError, match=r"all 3 records have desired_token_id == undesired_token_id") as caught:
        load_records(tmp_path)
    _one_line(caught)


SHAPE = ModelShape("llama", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12, intermediate_size=80)


def _circuit_file(tmp_path, text: str):
    path = tmp_path / "circuit.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda text: "", r"the file is empty"),
        (lambda text: text[: len(text) // 2], r"line \d+: not valid JSON .*truncated"),
        (lambda text: "[1, 2]", r"holds a JSON list, not a circuit object"),
        (lambda text: text.replace("circuit@1", "circuit@9"), r"another version of peft-cca wrote it"),
        (lambda text: text.replace('"num_layers": 2', '"num_layers": 2.5'), r"key model\.num_layers: .* 2\.5"),
        (lambda text: text.replace('"num_heads": 4, ', ""), r"key model: missing \['num_heads'\]"),
        (lambda text: text.replace('"q": [1]', '"q": 1'), r"key layers\.0\.q: must be a list"),
        (lambda text: text.replace('"q": [1]', '"q": [true]'), r"layers\.0\.q: index True is not a whole number"),
        (lambda text: text.replace('"q": [1]', '"q": [1.5]'), r"layers\.0\.q: index 1\.5 is not a whole number"),
        (lambda text: text.replace('"0": {', '"zero": {'), r"key layers\.zero"),
    ],
)
def test_a_damaged_circuit_file_names_the_file_and_the_key(tmp_path, mutate, expected):
    text = Circuit(SHAPE, {0: {"q": [1]}}).save(tmp_path / "good.json").read_text()
    path = _circuit_file(tmp_path, mutate(text))
    with pytest.raises(UsageError, match=r"circuit\.json: " + expected) as caught:
        Circuit.load(path)
    _one_line(caught)


def test_a_circuit_of_another_model_shape_names_the_file_and_every_difference(tmp_path):
    other = ModelShape("gemma2", num_layers=2, num_heads=8, num_kv_heads=2, head_dim=12, intermediate_size=80)
    path = Circuit(other, {0: {"q": [7]}}).save(tmp_path / "circuit.json")
    model = tiny_model("llama")
    assert Circuit.load(path).shape == other  # without a model: the file itself is fine
    with pytest.raises(UsageError, match=r"circuit\.json: .*another model shape.*model_type.*num_heads: 8 != 4"):
        Circuit.load(path, model)
    assert Circuit.load(Circuit(describe(model).shape).save(tmp_path / "mine.json"), model) == Circuit.empty(model)


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    return folder


def test_a_saved_adapter_loads(lora_adapter):
    assert type(load_adapter(tiny_model("llama"), lora_adapter)).__name__.startswith("PeftModel")


def test_an_adapter_without_weights_is_one_line_not_a_repo_id_error(lora_adapter, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text((lora_adapter / "adapter_config.json").read_text())
    with pytest.raises(UsageError, match=r"adapter_model\.safetensors is missing") as caught:
        load_adapter(tiny_model("llama"), tmp_path / "adapter")
    _one_line(caught)
    with pytest.raises(UsageError, match=r"adapter folder .*nowhere does not exist"):
        check_adapter_folder(tmp_path / "nowhere")
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": ')
    with pytest.raises(UsageError, match=r"adapter_config\.json: line 1: not valid JSON"):
        check_adapter_folder(tmp_path / "adapter")


def test_a_nan_filled_or_truncated_adapter_is_refused_before_evaluation(lora_adapter, tmp_path):
    from safetensors.torch import load_file

    broken = tmp_path / "adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((lora_adapter / "adapter_config.json").read_text())
    tensors = load_file(lora_adapter / "adapter_model.safetensors")
    save_file(
        {key: torch.full_like(value, float("nan")) for key, value in tensors.items()},
        broken / "adapter_model.safetensors",
    )
    with pytest.raises(CCAError, match=r"adapter_model\.safetensors: tensor .*lora.* holds NaN or inf") as caught:
        load_adapter(tiny_model("llama"), broken)
    _one_line(caught)
    data = (lora_adapter / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"adapter_model\.safetensors: not a readable safetensors file"):
        check_adapter_folder(broken)


def test_a_gsm_symbolic_row_without_its_gold_line_is_refused_never_read_as_a_word(tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = {"id": 0, "instance": 0, "question": "q?", "answer": "2 + 3 = 5\n#### 5"}
    rows.write_text(json.dumps(good) + "\n" + json.dumps({**good, "instance": 1, "answer": "seven"}) + "\n")
    with pytest.raises(UsageError, match=r"rows\.jsonl:2: the answer has no '#### <number>' line"):
        load_problems(f"gsm-symbolic-file:{rows}")


DEEP = "[" * 100_000  # json and tomllib recurse: a RecursionError, never a one-line error, unless caught


def test_deeply_nested_json_in_any_input_file_is_one_line_within_a_second(tmp_path):
    import time

    from peft_cca.localize.problems import stage_problems
    from peft_cca.tasks.templates import TemplateError, read_templates

    files = {
        "records.jsonl": lambda path: load_records(path.parent),
        "circuit.json": Circuit.load,
        "rows.jsonl": lambda path: load_problems(f"gsm-symbolic-file:{path}"),
        "templates.json": read_templates,
        "templates.toml": read_templates,
        "meta.json": lambda path: stage_problems(path.parent, "test"),
    }
    for name, load in files.items():
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        path = folder / name
        path.write_text(("a = " if name.endswith(".toml") else "") + DEEP)
        start = time.monotonic()
        with pytest.raises((UsageError, TemplateError), match=r"nested too deeply") as caught:
            load(path)
        assert time.monotonic() - start < 1.0 and name in str(caught.value)
        _one_line(caught)


def test_a_template_file_that_is_not_utf8_or_a_record_that_is_not_an_object(tmp_path):
    import random

    from peft_cca.tasks.templates import TemplateError, instantiate, read_templates

    (tmp_path / "t.json").write_bytes(b'{"question_annotated": "\xff"}')
    with pytest.raises(TemplateError, match=r"t\.json: not UTF-8 text"):
        read_templates(tmp_path / "t.json")
    with pytest.raises(TemplateError, match=r"template 0: a template is an object, not list"):
        instantiate(["not a template"], random.Random(0))
