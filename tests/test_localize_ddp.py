"""`localize` under `accelerate launch` (2 gloo processes on the CPU) writes exactly the files of one process,
and an interrupted two-process run resumes to them.

Run by pytest, this file launches itself as the worker: `accelerate launch ... tests/test_localize_ddp.py <out>`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("greedy.jsonl", "records.jsonl", "progress.jsonl", "meta.json", "summary.json")


def run_localize(out: Path) -> dict:
    from test_localize_run import CONFIG, _problems
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    from peft_cca.localize.run import localize

    return localize(tiny_model("llama", seed=3), tiny_tokenizer(), _problems(), CONFIG, out, model_name="tiny")


def _launch(out: Path, die_after: int | None = None) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if die_after is not None:
        env["LOCALIZE_DIE_AFTER"] = str(die_after)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"),
        "--main_process_port",
        str(port),
        str(Path(__file__)),
        str(out),
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_write_the_files_of_one_and_resume(tmp_path):
    single, double, resumed = tmp_path / "single", tmp_path / "double", tmp_path / "resumed"
    run_localize(single)
    done = _launch(double)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FILES:
        assert (double / name).read_bytes() == (single / name).read_bytes(), name

    killed = _launch(resumed, die_after=2)
    assert killed.returncode != 0
    progress = (resumed / "progress.jsonl").read_text().splitlines()
    assert 0 < len(progress) < len((single / "progress.jsonl").read_text().splitlines())
    done = _launch(resumed)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FILES:
        assert (resumed / name).read_bytes() == (single / name).read_bytes(), name


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if "LOCALIZE_DIE_AFTER" in os.environ:  # the main process is killed after writing that many problems
        from peft_cca.localize import records

        finish, calls = records.DatasetWriter.finish, []

        def dying_finish(self, *args):
            if len(calls) == int(os.environ["LOCALIZE_DIE_AFTER"]):
                os._exit(1)
            calls.append(1)
            finish(self, *args)

        records.DatasetWriter.finish = dying_finish
    run_localize(Path(sys.argv[1]))
