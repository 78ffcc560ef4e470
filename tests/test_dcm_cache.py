"""The shared-prefix KV cache is the plain computation: same keys/values, loss, gradients and mask as whole prefixes."""

from __future__ import annotations

import pytest
import torch
from test_dcm_paths import _loss_and_grad
from tiny_models import ARCHITECTURES, VOCAB, tiny_model

from peft_cca.dcm import cache as cache_module
from peft_cca.dcm.cache import PrefixCache, auto_device_budget, compute_prefix_kv, free_bytes, group_by_shared_prefix
from peft_cca.dcm.interventions import ComponentMask, MaskIntervention
from peft_cca.dcm.paths import FullSequencePath, OneTokenPath
from peft_cca.dcm.train import DCMConfig, train_mask
from peft_cca.localize.records import Record
from peft_cca.method.arch import describe


def shared_prompt_records(problems: int = 3, per_problem: int = 3, seed: int = 0) -> list[Record]:
    """Records as stage 1 makes them: one few-shot prompt for all, one question per problem, then a trace cut
    at different pivots (so the records of a problem share even more than the prompt)."""
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> list[int]:
        return torch.randint(2, VOCAB, (n,), generator=g).tolist()

    prompt = draw(20)
    records = []
    for p in range(problems):
        trace = prompt + draw(6 + p) + draw(14)
        for r in range(per_problem):
            cut = len(prompt) + 4 + 5 * r + p
            records.append(Record(tuple(trace[:cut]), 3, 5, problem_id=f"{p}-{r}"))
    records.append(Record(tuple(draw(9)), 3, 5, problem_id="alone"))  # shares nothing
    records.append(Record((7,), 3, 5, problem_id="one token"))  # nothing to cache
    return records


def test_groups_cover_every_prefix_once_and_store_fewer_tokens():
    prefixes = [list(r.prefix_ids[:-1]) for r in shared_prompt_records()]
    groups = group_by_shared_prefix(prefixes)
    members = sorted(i for group, _ in groups for i in group)
    assert members == [i for i, p in enumerate(prefixes) if p]
    for group, shared in groups:
        assert shared >= 1 and all(prefixes[i][:shared] == prefixes[group[0]][:shared] for i in group)
    stored = sum(shared + sum(len(prefixes[i]) - shared for i in group) for group, shared in groups)
    assert stored < 0.6 * sum(len(p) for p in prefixes)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prefix_cache_equals_whole_prefix_keys_and_values(arch):
    model = tiny_model(arch)
    records = shared_prompt_records()
    path = OneTokenPath(model, records, progress=False)
    summary = path.cache.summary()
    assert summary["tokens_stored"] < summary["tokens_whole"] and summary["recomputed_blocks"] == 0
    for index, record in enumerate(records[:-1]):
        whole = compute_prefix_kv(model, [list(record.prefix_ids[:-1])])[0]
        parts = path.cache.parts(index)
        for layer, (k, v) in enumerate(whole):
            torch.testing.assert_close(torch.cat([p[layer][0] for p in parts], dim=-2), k, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.cat([p[layer][1] for p in parts], dim=-2), v, rtol=1e-5, atol=1e-5)
    assert path.cache.parts(len(records) - 1) == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("form", ["paper", "authors"])
def test_shared_prefix_path_gives_full_sequence_loss_and_gradients(arch, form):
    model = tiny_model(arch)
    for p in model.parameters():
        p.requires_grad_(False)
    records = shared_prompt_records()
    full = _loss_and_grad(model, FullSequencePath(model, records), records, form)
    fast = _loss_and_grad(model, OneTokenPath(model, records, progress=False), records, form)
    torch.testing.assert_close(fast[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], full[1], rtol=1e-5, atol=1e-5)
    assert full[2].abs().max() > 1e-3
    torch.testing.assert_close(fast[2], full[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # gemma3_text: sliding window 6 < shared prompt of 20
def test_same_mask_after_training_with_shared_prefixes(arch):
    model = tiny_model(arch)
    records = shared_prompt_records(4, 3)
    config = DCMConfig(lam=0.0, lr=0.2, epochs=4, batch_size=4, early_stop_fraction=None)
    fast = train_mask(model, records, DCMConfig(**{**config.__dict__, "path": "fast"}), progress=False)
    full = train_mask(model, records, DCMConfig(**{**config.__dict__, "path": "full"}), progress=False)
    torch.testing.assert_close(fast.mask.flat(), full.mask.flat(), rtol=0, atol=1e-4)
    assert fast.circuit == full.circuit and len(fast.circuit) > 0
    assert fast.history["cache"]["groups"] < len(records)


def test_bf16_model_keeps_an_fp32_mask_and_fp32_logit_differences():
    model = tiny_model("llama", dtype=torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    records = shared_prompt_records()
    full = _loss_and_grad(model, FullSequencePath(model, records), records)
    fast = _loss_and_grad(model, OneTokenPath(model, records, progress=False), records)
    assert fast[1].dtype == full[1].dtype == torch.float32 and fast[2].dtype == torch.float32
    torch.testing.assert_close(fast[1], full[1], rtol=0.05, atol=0.05)
    path = OneTokenPath(model, records, progress=False)
    assert path.cache.parts(0)[0][0][0].dtype == torch.bfloat16  # activations stay in the model's dtype


def test_budget_defaults_to_the_free_memory():
    assert free_bytes(torch.device("cpu")) > 0
    model = tiny_model("llama")
    path = OneTokenPath(model, shared_prompt_records(), progress=False)
    assert path.cache.summary()["device_mb"] > 0 and path.cache.layer_devices == [torch.device("cpu")] * 2


GIB = 2**30
CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


def _fake_free(free: dict[torch.device, int]):
    return lambda device: free[device]


def test_auto_device_budget_is_bound_by_the_device_with_the_least_room_per_layer(monkeypatch):
    # cuda:0 holds 1 of 4 layers with 10 GiB free, cuda:1 holds 3 with 12 GiB: each block puts 3/4 of its
    # bytes on cuda:1, so half of its 12 GiB bounds the total at 8 GiB (not min(free) x half x 2 devices = 10)
    monkeypatch.setattr(cache_module, "free_bytes", _fake_free({CUDA0: 10 * GIB, CUDA1: 12 * GIB}))
    assert auto_device_budget([CUDA0, CUDA1, CUDA1, CUDA1]) == pytest.approx(8 * GIB)
    assert auto_device_budget([CUDA0, CUDA0, CUDA1, CUDA1]) == pytest.approx(10 * GIB)


def _as_if_on(monkeypatch, devices: list[torch.device], free: dict[torch.device, int]) -> None:
    """Make the cache see its layers on ``devices`` (no tensor is moved there: every block fits elsewhere or
    the budget is set) with ``free`` bytes on each."""
    monkeypatch.setattr(cache_module, "layer_devices", lambda model: devices)
    monkeypatch.setattr(cache_module, "free_bytes", _fake_free(free))


def test_budgets_come_from_the_free_memory_of_the_layers_devices_and_the_host(monkeypatch):
    model = tiny_model("llama")
    cpu = torch.device("cpu")
    _as_if_on(monkeypatch, [CUDA0, CUDA1], {CUDA0: 64 * GIB, CUDA1: 64 * GIB, cpu: 100 * GIB})
    monkeypatch.setattr(PrefixCache, "_place", lambda self, kv, name: cache_module._Slot("device", kv=kv))
    cache = PrefixCache(model, [list(r.prefix_ids) for r in shared_prompt_records()], progress=False)
    assert cache._budget == {"device": int(64 * GIB), "host": int(50 * GIB)}


def test_what_exceeds_the_device_budget_stays_in_host_memory_and_never_on_disk(monkeypatch, tmp_path):
    model = tiny_model("llama")
    records = shared_prompt_records()
    whole = [compute_prefix_kv(model, [list(r.prefix_ids[:-1])])[0] for r in records[:-2]]
    _as_if_on(monkeypatch, [CUDA0, CUDA0], {})
    prefixes = [list(r.prefix_ids) for r in records]
    cache = PrefixCache(model, prefixes, budget_mb=0.002, host_budget_mb=100, spill_dir=tmp_path, progress=False)
    summary = cache.summary()
    assert 0 < summary["device_mb"] <= 0.002 and summary["host_mb"] > 0
    assert summary["spilled_blocks"] == summary["recomputed_blocks"] == 0 and not list(tmp_path.iterdir())
    assert {slot.tier for slot in [*cache.shared, *cache.suffix.values()]} == {"device", "host"}
    for index, kv in enumerate(whole):
        for layer, (k, _) in enumerate(kv):
            torch.testing.assert_close(torch.cat([p[layer][0] for p in cache.parts(index)], dim=-2), k)
    # past both budgets: recomputed when needed by default, written to disk only when asked
    full = PrefixCache(model, prefixes, budget_mb=0.002, host_budget_mb=0.002, spill_dir=tmp_path, progress=False)
    assert full.summary()["recomputed_blocks"] > 0 and full.summary()["spilled_blocks"] == 0
    assert not list(tmp_path.iterdir())
    spill = PrefixCache(model, prefixes, 0.002, "spill", tmp_path, progress=False, host_budget_mb=0.002)
    assert spill.summary()["spilled_blocks"] > 0 and list(tmp_path.iterdir())


def test_index_tensors_are_moved_once_per_run_not_every_forward():
    model = tiny_model("llama")
    for p in model.parameters():
        p.requires_grad_(False)
    records = shared_prompt_records()
    path = OneTokenPath(model, records, progress=False)
    spec = describe(model)
    with MaskIntervention(model, spec, ComponentMask(spec.shape)) as intervention:
        path.logit_diff([0, 1, 2], intervention)
        first = dict(intervention._index)
        path.logit_diff([3, 4, 5], intervention)
        assert first and all(intervention._index[key] is tensor for key, tensor in first.items())
        assert len(intervention._index) == len(first)
