"""`peft-cca evaluate` under `accelerate launch` with two CPU processes (gloo) writes the file one process writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_folder(tmp_path: Path) -> tuple[Path, Path]:
    model_dir, run = tmp_path / "model", tmp_path / "localize"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    run.mkdir()
    meta = {"model": str(model_dir), "task": "rg:chain_sum?size=30&seed=0", "seed": 0, "prompt_style": "chat"}
    (run / "meta.json").write_text(json.dumps(meta))
    return model_dir, run


def test_two_processes_write_what_one_process_writes(tmp_path):
    _, run = _run_folder(tmp_path)
    argv = ["--run", str(run), "--retention-tasks", "letter_counting", "--retention-size", "3"]
    argv += ["--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu"]
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    assert main(["evaluate", *argv, "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"), "--main_process_port", str(_free_port())]
    command += [str(ROOT / "recipes" / "evaluate.py"), *argv, "--out", str(double)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert set(one.pop("seconds")) == set(two.pop("seconds"))  # wall times differ; what was timed does not
    assert two == one and double.read_text().count("\n") == single.read_text().count("\n")
    result = json.loads(single.read_text())
    assert result["test"]["n"] >= 8 and result["runtime"]["dtype"] == "float32"
    assert not (tmp_path / "one.json.parts").exists() and not (tmp_path / "two.json.parts").exists()
