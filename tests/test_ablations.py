"""The two "w/o mask" ablations train exactly the parameters they claim, are labelled as the reports expect,
and a sweep keeps only the best learning rate's state."""

from __future__ import annotations

import json
import random

import torch
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import tiny_tokenizer
from transformers import AutoModelForCausalLM

import peft_cca  # noqa: F401 - registers the "cca" method
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.amplify.trainer import amplify
from peft_cca.defaults import NO_MASK_LABELS
from peft_cca.reports import tables as report


def records(n: int = 5, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prefix_ids": [rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 9))],
            "desired_token_id": rng.randrange(4, VOCAB),
            "undesired_token_id": rng.randrange(4, VOCAB),
        }
        for _ in range(n)
    ]


def constant(_model) -> float:
    return 0.0


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_labels_are_the_reports():
    assert NO_MASK_LABELS == {"sites": report.NOMASK_SITES, "all": report.NOMASK_ALL}


def test_no_mask_sites_trains_every_qkv_row_and_up_neuron_and_nothing_else(tmp_path):
    model = tiny_model("llama")
    before = snapshot(model)
    settings = AmplifySettings(lrs=(0.5,), steps=1, no_mask="sites")
    result = amplify(
        model, tiny_tokenizer(), records(), None, None, settings, evaluate_fn=constant, output_dir=tmp_path
    )
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("cca_delta" in n for n in trainable)
    merged = result.model.merge_and_unload()
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p.detach(), before[n])}
    expected = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.q_proj", "self_attn.k_proj")}
    expected |= {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.v_proj", "mlp.up_proj")}
    assert changed == expected
    # every row of those tensors moved: the full circuit
    for name in expected:
        assert ((merged.get_parameter(name) - before[name]).abs().sum(dim=1) > 0).all(), name
    saved = json.loads((tmp_path / "amplify.json").read_text())
    assert saved["label"] == report.NOMASK_SITES and saved["no_mask"] == "sites"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_no_mask_all_trains_every_parameter_and_saves_a_full_model(tmp_path):
    model = tiny_model("llama")
    before = snapshot(model)
    settings = AmplifySettings(lrs=(0.5,), steps=1, no_mask="all")
    result = amplify(
        model, tiny_tokenizer(), records(), None, None, settings, evaluate_fn=constant, output_dir=tmp_path
    )
    params = dict(result.model.named_parameters())
    assert set(params) == set(before) and all(p.requires_grad for p in params.values())
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    assert changed == set(before)  # embeddings, norms, o/gate/down and lm_head too
    assert any("norm" in n for n in changed) and "lm_head.weight" in changed
    assert "model.embed_tokens.weight" in changed and any("o_proj" in n or "down_proj" in n for n in changed)
    saved = json.loads((tmp_path / "amplify.json").read_text())
    assert saved["label"] == report.NOMASK_ALL and saved["no_mask"] == "all"
    assert result.adapter_dir == tmp_path / "model"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    for name, value in reloaded.named_parameters():
        torch.testing.assert_close(value, params[name].detach())


def test_no_mask_all_restarts_every_lr_from_the_base_and_keeps_only_the_best_state():
    model = tiny_model("llama")
    base = snapshot(model)
    scores = iter([0.0, 0.2, 0.7, 0.4])  # base, lr 1 at step 2, lr 2 at step 2 (best), lr 3 at step 2
    seen = []

    def scripted(m) -> float:
        seen.append({n: p.detach().clone() for n, p in m.named_parameters()})
        return next(scores)

    settings = AmplifySettings(lrs=(0.3, 0.1, 0.05), steps=2, no_mask="all")
    result = amplify(model, tiny_tokenizer(), records(), None, None, settings, evaluate_fn=scripted)
    assert result.best.lr == 0.1
    assert [r.state is None for r in result.runs] == [True, False, True]
    assert all(v.device.type == "cpu" for v in result.best.state.values())
    # the best state is the lr-0.1 step-2 weights; the model holds them at the end
    for name, value in result.model.named_parameters():
        torch.testing.assert_close(value.detach(), seen[2][name])
    # lr 0.1 started from the base model, not from where lr 0.3 ended: one SGD step of lr 0.1 from the base
    # reaches less far than two steps of lr 0.3 did
    far = sum((seen[1][n] - base[n]).abs().sum() for n in base)
    near = sum((seen[2][n] - base[n]).abs().sum() for n in base)
    assert near < far


def test_cli_no_mask_all_writes_a_loadable_model_and_its_label(tmp_path, capsys):
    from peft_cca.cli import main
    from peft_cca.localize.records import tokenizer_fingerprint

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    run = tmp_path / "run"
    run.mkdir()
    meta = {
        "model": str(tmp_path / "base"),
        "task": "rg:chain_sum?size=30&seed=0",
        "seed": 0,
        "prompt_style": "chat",
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(4)))
    argv = ["amplify", "--run", str(run), "--no-mask", "all", "--lr", "0.5", "--steps", "2", "--val-limit", "2"]
    assert main([*argv, "--max-new-tokens", "2", "--micro-batch", "auto"]) == 0
    out = run / "amplify-nomask-all"
    saved = json.loads((out / "amplify.json").read_text())
    assert (saved["label"], saved["micro_batch"]) == (report.NOMASK_ALL, 4)
    assert not (out / "adapter").exists()
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters(), strict=True))
    assert "micro-batch: 4" in capsys.readouterr().out
    # evaluate takes the saved whole model as the "w/o mask (all parameters)" row
    evaluated = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run), "--adapter", str(out / "model"), "--retention-tasks", "--no-kl"]
    assert main([*argv, "--max-new-tokens", "2", "--test-limit", "2", "--val-limit", "0", "--out", str(evaluated)]) == 0
    row = json.loads(evaluated.read_text())
    assert (row["config"], row["label"], row["mask_percent"]) == ("CCA w/o mask", report.NOMASK_ALL, 100.0)
    assert report.config_label(row) == report.NOMASK_ALL


def test_no_mask_all_warns_when_the_weights_cannot_hold_small_steps(caplog):
    from peft_cca.amplify.trainer import train_every_parameter

    with caplog.at_level("WARNING", logger="peft_cca.amplify.trainer"):
        train_every_parameter(tiny_model("llama"))
    assert not caplog.records
    with caplog.at_level("WARNING", logger="peft_cca.amplify.trainer"):
        train_every_parameter(tiny_model("llama").to(torch.bfloat16))
    assert "in bfloat16" in caplog.text and "--dtype float32" in caplog.text
