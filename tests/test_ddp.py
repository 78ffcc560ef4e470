"""Two CPU processes under `accelerate launch` (DDP, gloo) make the same CCA update as one process, and the
validation scorer, which splits its problems across the processes, gives every process the same completions.

Run by pytest, this file launches itself as the worker: `accelerate launch ... tests/test_ddp.py <out.pt>`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS, LR, BATCH, RECORDS = 3, 0.3, 2, 7  # 7 records over 2 processes x 2 rows: padding is exercised


def update() -> dict[str, torch.Tensor]:
    """The CCA deltas after a few full-batch steps on a tiny model (same in every process)."""
    import random

    from peft import get_peft_model
    from tiny_models import VOCAB, tiny_model

    from peft_cca import CCAConfig, Circuit, describe
    from peft_cca.amplify.trainer import train_one
    from peft_cca.sweep.callbacks import trainable_state

    rng = random.Random(0)
    records = [
        {
            "prefix_ids": [rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 9))],
            "desired_token_id": rng.randrange(4, VOCAB),
            "undesired_token_id": rng.randrange(4, VOCAB),
        }
        for _ in range(RECORDS)
    ]
    model = tiny_model("llama")
    circuit = Circuit(describe(model).shape, {0: {"q": [1], "k": [0]}, 1: {"mlp": [2, 7]}})
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit))
    from peft_cca.amplify.settings import AmplifySettings
    from peft_cca.sweep.runs import Readings

    settings = AmplifySettings(steps=STEPS, micro_batch=BATCH)
    train_one(peft_model, records, LR, 2, Readings(lambda _m: 0.0), settings, evaluate_at_start=False)
    return trainable_state(peft_model)


def validation_completions() -> list[dict]:
    """Exact match on a few problems (split across processes when launched with several)."""
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from peft_cca.evaluation.exact_match import evaluate_exact_match
    from peft_cca.tasks.problem import Problem

    problems = [Problem(id=f"p{i}", group_id=f"g{i % 2}", question=f"{i} + {i}?", answer=str(2 * i)) for i in range(5)]
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    return evaluate_exact_match(model, tokenizer, problems, max_new_tokens=4, batch_size=2, return_completions=True)[
        "completions"
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(Path(__file__)),
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = torch.load(out)
    assert distributed.pop("world_size") == 2
    single = update()
    assert set(distributed) == set(single)
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-4, atol=1e-6)
    every_process = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("completions-*.json"))]
    assert len(every_process) == 2 and every_process[0] == every_process[1] == validation_completions()


if __name__ == "__main__":
    from peft_cca.runtime.placement import process_state

    state = process_state()
    result = update()
    completions = validation_completions()
    Path(sys.argv[1]).with_name(f"completions-{state.process_index}.json").write_text(json.dumps(completions))
    if state.is_main_process:
        torch.save({**result, "world_size": torch.tensor(state.num_processes)}, sys.argv[1])
