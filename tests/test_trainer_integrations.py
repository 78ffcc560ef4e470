"""Trainer integrations keep working under CCATrainer: tensorboard logging, push_to_hub (against a local folder
standing in for the hub), torch_compile."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from test_cca_trainer import PAD, circuit_of, config, id_rows
from tiny_models import tiny_model

from peft_cca import CCAConfig, CCATrainer


def _trainer(tmp_path, **overrides) -> CCATrainer:
    model = tiny_model("llama")
    return CCATrainer(
        model,
        args=config(tmp_path, max_steps=2, learning_rate=0.1, **overrides),
        train_dataset=id_rows(),
        peft_config=CCAConfig(circuit=circuit_of(model)),
        pad_token_id=PAD,
    )


def test_report_to_tensorboard_writes_the_loss_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _trainer(tmp_path, report_to="tensorboard").train()
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2]


class LocalHub:
    """The two hub calls Trainer makes, writing into a local folder: create_repo and upload_folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create_repo(self, repo_id: str, **_kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id: str, folder_path: str, ignore_patterns=None, **_kwargs):
        shutil.copytree(
            folder_path, self.root / repo_id, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*ignore_patterns or [])
        )
        return SimpleNamespace(commit_url=f"local://{repo_id}")


def test_push_to_hub_uploads_an_adapter_that_loads(tmp_path, monkeypatch):
    import transformers.trainer

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    trainer = _trainer(tmp_path, push_to_hub=True, hub_model_id="me/cca-adapter", save_strategy="no")
    trainer.train()
    trainer.push_to_hub()
    pushed = tmp_path / "hub" / "me" / "cca-adapter"
    assert (pushed / "adapter_config.json").exists() and (pushed / "adapter_model.safetensors").exists()
    card = (pushed / "README.md").read_text()
    assert "peft-cca" in card and "import peft_cca" in card  # our card survives Trainer's own
    again = PeftModel.from_pretrained(tiny_model("llama"), pushed)
    for name, value in again.named_parameters():
        if "cca_" in name:
            torch.testing.assert_close(value, dict(trainer.model.named_parameters())[name].detach())


@pytest.mark.integration
def test_torch_compile_trains_as_eager(tmp_path):
    eager = _trainer(tmp_path / "eager")
    eager.train()
    compiled = _trainer(tmp_path / "compiled", torch_compile=True)
    compiled.train()
    want = {n: p for n, p in eager.model.named_parameters() if p.requires_grad}
    got = {n.replace("_orig_mod.", ""): p for n, p in compiled.model.named_parameters() if p.requires_grad}
    assert set(want) == set(got)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)
