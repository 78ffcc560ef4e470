"""The README's "your own script" examples run on the offline model at tiny counts, alone and under
`accelerate launch`, and the README shows them verbatim, so the docs cannot drift from code that runs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY = ["--problems", "12", "--epochs", "4", "--dcm-lr", "0.2", "--steps", "2"]


def _run(command: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_every_readme_python_block_is_an_example_file():
    """A snippet a user reads is a file a test runs: each ```python block of the README is an examples/ file."""
    files = {path.name: path.read_text() for path in EXAMPLES.glob("*.py")}
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README shows no Python"
    for block in blocks:
        assert block in files.values(), f"README block not in examples/: {block[:80]!r}"
    for name in ("cca_in_your_script.py", "sft_with_cca.py"):
        assert files[name] in blocks, f"the README does not show examples/{name}"


@pytest.fixture(scope="module")
def script_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("script")
    done = _run([sys.executable, str(EXAMPLES / "cca_in_your_script.py"), "--out", str(out), *TINY])
    return out, done.stdout


@pytest.mark.integration
def test_own_script_localizes_finds_trains_saves_reloads(script_run):
    out, stdout = script_run
    assert (out / "circuit" / "circuit.json").exists() and (out / "circuit" / "sweep.json").exists()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "CCA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "quantized" in (out / "adapter" / "README.md").read_text()
    metrics = [line for line in stdout.splitlines() if "eval_logit_difference" in line]
    assert metrics and "eval_desired_wins" in metrics[0]
    assert stdout.strip().splitlines()[-1].startswith("'")  # the merged model's generation, printed with repr


@pytest.mark.integration
def test_sft_swap_trains_on_the_found_circuit(script_run, tmp_path):
    circuit = script_run[0] / "circuit" / "circuit.json"
    args = ["--circuit", str(circuit), "--problems", "8", "--steps", "2", "--out", str(tmp_path)]
    _run([sys.executable, str(EXAMPLES / "sft_with_cca.py"), *args])
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "CCA" and config["task_type"] == "CAUSAL_LM"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.integration
def test_own_script_under_accelerate_launch(tmp_path):
    """The recipe: the same script, two CPU processes (gloo); one writes the circuit and the adapter."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port())]
    config = ["--config_file", str(ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml")]
    done = _run([*launch, *config, str(EXAMPLES / "cca_in_your_script.py"), "--out", str(tmp_path), *TINY])
    assert (tmp_path / "circuit" / "circuit.json").exists()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "CCA"
    assert done.stdout.count("eval_logit_difference") == 2  # evaluate's metrics reach every process


def test_custom_layout_example_trains_exactly_the_described_rows():
    done = _run([sys.executable, str(EXAMPLES / "custom_layout.py")], timeout=120)
    assert "trainable params: 2,176 " in done.stdout and "torch.Size([1, 3, 256])" in done.stdout
