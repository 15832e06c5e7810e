"""Training across machines: two `torchrun` launchers (`--nnodes 2`, one process each) meeting at a c10d rendezvous
endpoint train the same run, bit for bit, as one launcher with two processes, and only global rank 0 writes it.

Both launchers run here on the loopback (127.0.0.1) over gloo, as two machines would over the network: each
process is LOCAL_RANK 0 of its own "node", so code that took LOCAL_RANK (or LOCAL_WORLD_SIZE) for the global rank
would write the run twice, pick the wrong data shard or hang. They share this machine's filesystem, as the nodes of a
real run share the run directory (tunelab's requirement, docs/gpus.md "Across machines"). Not proven here: NCCL,
a second machine, a network between them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file
from test_resume_ddp import _env, _metrics

from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from tunelab.train.plots import read_metrics

STEPS = 6
TRAIN = {"max_steps": STEPS, "batch_size": 1, "grad_accum": 2, "num_checkpoints": 2}
LIMIT = 240  # seconds for one launch, then every process it started is killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launchers: list[list[str]], cwd: Path, log_dir: Path) -> None:
    """Start every launcher at once (each in its own process group, so its workers can be killed with it), wait
    for all, and assert each exited 0; on a timeout or a failure every one still running is killed, workers too."""
    procs = []
    try:
        for i, args in enumerate(launchers):
            log = open(log_dir / f"launcher-{i}.log", "wb")
            procs.append((subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                                           cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True), log))
        deadline = time.monotonic() + LIMIT
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    for i, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (i, (log_dir / f"launcher-{i}.log").read_text(errors="replace")[-4000:])


def _final_weights(run_dir: Path) -> dict:
    return load_file(list_checkpoints(run_dir)[-1] / "model" / "model.safetensors")


def test_two_launchers_on_a_rendezvous_train_as_one_launcher_with_two_processes(tmp_path):
    one_path = write_recipe(tmp_path / "one", "ddp", train=TRAIN)
    two_path = write_recipe(tmp_path / "two", "ddp", train=TRAIN)
    train = ["-m", "tunelab.cli", "train"]

    _launch([["--standalone", "--nnodes", "1", "--nproc_per_node", "2", *train, str(one_path)]],
            tmp_path / "one", tmp_path / "one")

    endpoint = f"127.0.0.1:{_free_port()}"
    _launch([["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
              "--rdzv_id", "multinode-test", "--rdzv_conf", f"is_host={int(node == 0)}", "--local_addr",
              "127.0.0.1", "--max_restarts", "0", *train, str(two_path)] for node in (0, 1)],
            tmp_path / "two", tmp_path / "two")

    one_dir, two_dir = load_recipe(one_path).run_dir, load_recipe(two_path).run_dir
    summary = json.loads((two_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    # written once, by global rank 0: each metrics line once, each checkpoint once, nothing half-written beside
    assert [r["step"] for r in read_metrics(two_dir / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (two_dir / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    # the same run: same processes, same rows per rank, same reductions -> the same bits
    assert _metrics(two_dir) == _metrics(one_dir)
    a, b = _final_weights(two_dir), _final_weights(one_dir)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and a run that moved: the final weights are not the initial ones
    first = load_file(list_checkpoints(one_dir)[0] / "model" / "model.safetensors")
    assert any(not torch.equal(first[k], b[k]) for k in b)


def test_a_node_that_does_not_see_the_run_directory_stops_every_rank(tmp_path, monkeypatch):
    """A node with its own disk at output_dir (no shared filesystem): the rank there does not see rank 0's
    recipe.yaml and says so, and the sum of that tells rank 0 to stop too (here one process plays each rank in
    turn, the collectives replaced by what they would return)."""
    from tunelab.errors import TunelabError
    from tunelab.train import run_dir as rd
    from tunelab.train.distributed import Dist
    recipe = load_recipe(write_recipe(tmp_path, "local"))
    monkeypatch.setattr(rd, "barrier", lambda dist: None)
    monkeypatch.setattr(rd, "SHARED_WAIT_SECONDS", 0.2)
    sent = []
    monkeypatch.setattr(rd, "all_sum", lambda dist, values: sent.append(values) or values)
    with pytest.raises(TunelabError, match="filesystem every node shares") as err:
        rd.prepare_run_dir(recipe, False, Dist(rank=1, world=2))   # rank 0 never wrote this node's disk
    assert "rank 1 on" in str(err.value) and sent == [[1.0]]
    monkeypatch.setattr(rd, "all_sum", lambda dist, values: [1.0])   # rank 1's 1 in the sum
    with pytest.raises(TunelabError, match="other processes do not see"):
        rd.prepare_run_dir(recipe, False, Dist(rank=0, world=2))
    # shared: rank 1 sees what rank 0 wrote, and nobody stops
    monkeypatch.setattr(rd, "all_sum", lambda dist, values: values)
    assert rd.prepare_run_dir(recipe, False, Dist(rank=1, world=2)) == recipe.run_dir


def test_the_engine_sections_docs_gpus_shows_are_valid():
    """docs/gpus.md's `engine:` examples (a vLLM server at a URL; one tunelab starts, tensor-parallel) validate."""
    import re

    import yaml

    from tunelab.recipe.engine import EngineConfig
    text = (Path(__file__).resolve().parents[1] / "docs" / "gpus.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b)["engine"] for b in re.findall(r"^```yaml\n(engine:.*?)^```", text, re.S | re.M)]
    assert [b.get("url") for b in blocks] == ["http://vllm-host:8000", None]
    started = EngineConfig.model_validate(blocks[1])
    assert (started.tensor_parallel, started.max_lora_rank) == (4, 64) and started.extra_args
    assert EngineConfig.model_validate(blocks[0]).kind == "vllm"
    with pytest.raises(ValueError, match="start a server"):  # a server someone else runs keeps its own settings
        EngineConfig.model_validate({**blocks[0], "tensor_parallel": 8})
