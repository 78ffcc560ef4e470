"""Best-step states under FSDP2: sharded (DTensor) deltas are gathered whole and written back shard by shard.

Two gloo processes on the CPU shard a parameter row-wise; the saved state must be the full tensor on every
process, and loading it back must restore each process's own shard. Run by pytest, this file launches itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from peft_cca.sweep.callbacks import load_trainable_state, trainable_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    module = torch.nn.Linear(4, 6, bias=False)
    module.weight = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, [Shard(0)]))
    state = trainable_state(module)
    assert torch.equal(state["weight"], full), "the saved state is not the whole tensor"
    with torch.no_grad():
        module.weight.zero_()
    load_trainable_state(module, state)
    assert torch.equal(module.weight.to_local(), full.chunk(world)[rank]), "a shard was not restored"
    (out / f"ok-{rank}").write_text("ok")
    dist.destroy_process_group()


def test_sharded_deltas_are_saved_whole_and_restored_per_shard(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, __file__, str(rank), "2", str(port), str(tmp_path)], env=env, cwd=root)
        for rank in range(2)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok-0", "ok-1"]


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
