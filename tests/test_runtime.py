"""One place decides where a model runs: resolution, refusals with one clear line, and every command's flags."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from peft_cca.errors import UsageError
from peft_cca.runtime import placement as rt
from peft_cca.runtime.placement import Runtime, resolve_runtime


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_on_a_cpu_is_fp32_with_transformers_choosing_attention(cpu_only):
    assert resolve_runtime() == Runtime("cpu", "float32", None, None, False)


def test_auto_prefers_cuda_with_bf16_where_it_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_runtime() == Runtime("cuda", "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_runtime().dtype == "float32"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "--device 'tpu' is not a device"),
        ({"device": "cpu:1"}, "is not a device"),
        ({"device": "cuda"}, "no CUDA GPU"),
        ({"device": "mps"}, "no Apple MPS"),
        ({"dtype": "int8"}, "--dtype 'int8' is not a dtype"),
        ({"attn_implementation": "flash"}, "--attn-implementation 'flash' is unknown"),
        ({"device_map": "everywhere"}, "--device-map 'everywhere' is unknown"),
    ],
)
def test_bad_placement_gets_one_line_naming_the_flag(cpu_only, kwargs, message):
    with pytest.raises(UsageError, match=message) as caught:
        resolve_runtime(**kwargs)
    assert "\n" not in str(caught.value)


def test_fp16_on_the_cpu_evaluates_but_does_not_train(cpu_only):
    assert resolve_runtime(dtype="fp16").dtype == "float16"
    with pytest.raises(UsageError, match=r"fp16 on the CPU cannot train.*bf16 or fp32"):
        resolve_runtime(dtype="fp16", training=True)
    assert resolve_runtime(dtype="bf16", training=True).dtype == "bfloat16"


def test_flash_attention_needs_its_package_a_gpu_and_half_precision(cpu_only, monkeypatch):
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="needs the 'flash_attn' package"):
        resolve_runtime(attn_implementation="flash_attention_2")
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(UsageError, match="CUDA GPUs only"):
        resolve_runtime(attn_implementation="flash_attention_2")


def test_device_map_is_refused_under_several_processes(cpu_only, monkeypatch):
    monkeypatch.setattr(rt, "_accelerate_device", lambda: torch.device("cpu"))
    with pytest.raises(UsageError, match="FSDP"):
        resolve_runtime(device_map="auto")
    with pytest.raises(UsageError, match="under accelerate launch"):
        resolve_runtime(device="mps")
    assert resolve_runtime().device == "cpu"


def test_place_moves_casts_and_checkpoints():
    from tiny_models import tiny_model

    model = tiny_model("llama")
    Runtime("cpu", "float32", gradient_checkpointing=True).place(model)
    assert model.is_activation_checkpointing
    record = rt.placement(model)
    assert record == {
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": "eager",
        "device_map": None,
        "gradient_checkpointing": True,
    }
    assert rt.trainer_use_cpu(model)


@pytest.mark.parametrize("command", ["localize", "circuit", "amplify", "evaluate", "lora", "demo"])
def test_every_stage_takes_the_placement_flags(command):
    from peft_cca.cli import build_parser

    argv = [command, "--device", "cpu", "--dtype", "bf16", "--attn-implementation", "eager"]
    required = {"localize": ["--out", "x"], "circuit": ["--data", "x", "--out", "y"], "demo": []}
    args = build_parser().parse_args(argv + required.get(command, ["--run", "x"]))
    assert (args.device, args.dtype, args.attn_implementation) == ("cpu", "bf16", "eager")
    training = command in ("amplify", "lora")
    assert hasattr(args, "gradient_checkpointing") == (training or command == "demo")


def test_runtime_argv_round_trips_through_the_parser():
    parser = argparse.ArgumentParser()
    from peft_cca.cli.runtime_flags import add_runtime_arguments, runtime_argv

    add_runtime_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--dtype", "fp32", "--device-map", "auto"])
    assert parser.parse_args(runtime_argv(args)) == args


def test_the_demo_passes_the_placement_to_every_stage_and_checkpointing_to_training_only(tmp_path):
    from peft_cca.cli.demo_plan import DemoSettings, plan

    flags = ("--device", "cpu", "--dtype", "bf16", "--attn-implementation", "eager", "--gradient-checkpointing")
    for name, argv in plan(DemoSettings(out=tmp_path, preset="quick", runtime=flags)):
        if argv[0] == "compare":
            assert "--dtype" not in argv
            continue
        assert argv[argv.index("--dtype") + 1] == "bf16", name
        assert ("--gradient-checkpointing" in argv) == (argv[0] in ("amplify", "lora")), name


def test_a_run_records_the_placement_it_ran_with(tmp_path):
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from peft_cca.cli import main

    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    run = tmp_path / "localize"
    placement = ["--device", "cpu", "--dtype", "bf16", "--attn-implementation", "eager"]
    argv = ["localize", "--model", str(model_dir), "--task", "rg:chain_sum?size=6&seed=0", "--out", str(run)]
    assert main([*argv, "--n-samples", "1", "--max-new-tokens", "4", "--max-group-accuracy", "1.01", *placement]) == 0
    recorded = json.loads((run / "meta.json").read_text())["runtime"]
    assert recorded["dtype"] == "bfloat16" and recorded["attn_implementation"] == "eager"
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run), "--retention-tasks", "--no-kl", "--max-new-tokens", "4", "--out", str(out)]
    assert main([*argv, *placement]) == 0
    assert json.loads(out.read_text())["runtime"] == {
        "device": "cpu",
        "dtype": "bfloat16",
        "attn_implementation": "eager",
        "device_map": None,
        "gradient_checkpointing": False,
    }


def _saved_tiny_model(folder):
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_a_bf16_base_through_dcm_gives_fp32_logit_differences_and_records_its_placement(tmp_path):
    from tiny_models import VOCAB
    from tiny_tokenizer import tiny_tokenizer

    from peft_cca.cli import main
    from peft_cca.localize.records import tokenizer_fingerprint

    model_dir = _saved_tiny_model(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    rows = [
        {
            "prefix_ids": torch.randint(4, VOCAB, (6 + i,), generator=generator).tolist(),
            "desired_token_id": 3,
            "undesired_token_id": 5,
            "split": "validation" if i >= 6 else "train",
        }
        for i in range(8)
    ]
    (data / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_fingerprint(tiny_tokenizer())}))
    out = tmp_path / "circuit"
    argv = ["circuit", "--data", str(data), "--model", str(model_dir), "--lambda", "0", "--epochs", "2"]
    assert main([*argv, "--lr", "0.2", "--batch-size", "3", "--out", str(out), "--dtype", "bf16"]) == 0
    assert json.loads((out / "runtime.json").read_text())["dtype"] == "bfloat16"
    assert (out / "circuit.json").is_file()
    row = json.loads((out / "sweep.json").read_text())["rows"][0]
    assert math.isfinite(row["train_logit_diff"])  # the fp32 logit difference of a bf16 forward


def test_a_bf16_base_through_amplify_and_lora_trains_fp32_deltas_and_records_its_placement(tmp_path):
    from safetensors.torch import load_file
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    import peft_cca
    from peft_cca.cli import main
    from peft_cca.localize.records import tokenizer_fingerprint

    model_dir = _saved_tiny_model(tmp_path / "model")
    run = tmp_path / "run"
    run.mkdir()
    meta = {"model": str(model_dir), "task": "rg:chain_sum?size=30&seed=0", "seed": 0, "prompt_style": "chat"}
    (run / "meta.json").write_text(json.dumps({**meta, "tokenizer": tokenizer_fingerprint(tiny_tokenizer())}))
    rows = [
        {"prefix_ids": [5 + i, 6 + i, 7 + i], "desired_token_id": 10 + i, "undesired_token_id": 20 + i}
        for i in range(4)
    ]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shape = peft_cca.describe(tiny_model("llama")).shape
    peft_cca.Circuit(shape, {0: {"q": [1], "mlp": [3]}, 1: {"v": [0]}}).save(run / "circuit.json")
    placement = ["--device", "cpu", "--dtype", "bf16", "--val-limit", "1", "--max-new-tokens", "2", "--lr", "0.01"]
    assert main(["amplify", "--run", str(run), "--steps", "1", "--out", str(tmp_path / "cca"), *placement]) == 0
    assert main(["lora", "--run", str(run), "--max-steps", "1", "--out", str(tmp_path / "lora"), *placement]) == 0
    for name in ("cca", "lora"):
        assert json.loads((tmp_path / name / "runtime.json").read_text())["dtype"] == "bfloat16", name
    deltas = load_file(next((tmp_path / "cca").rglob("adapter_model.safetensors")))
    assert deltas and all(t.dtype == torch.float32 for k, t in deltas.items() if "delta" in k)
    assert any("delta" in k for k in deltas)
