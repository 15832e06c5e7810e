"""FSDP2 (`train.strategy: fsdp`) under a real 2-process `torchrun` on gloo: the same training as one process,
sharded checkpoints through torch.distributed.checkpoint that resume on the same or another number of
processes, and checkpoints that plain transformers / peft load.

In fp32 with the same rows per optimizer step, the two differ only in summation order: measured here, losses
within 4e-7 relative over these steps. LoRA dropout is off: each rank draws its own masks, so with dropout the
runs are equally valid but not equal. bf16 (`MixedPrecisionPolicy`) is not compared here: on a CPU without
fast bf16 the run trains in fp32 (`model/device.py`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lora_sections, write_recipe
from test_resume_ddp import _env, _metrics

from tunelab.cli import main
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints


def _torchrun(args: list[str], cwd: Path, n: int = 2) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "tunelab.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _close(got: list[tuple], want: list[tuple]) -> None:
    assert [g[:2] for g in got] == [w[:2] for w in want]  # step, epoch
    for g, w in zip(got, want):
        assert g[2] == pytest.approx(w[2], rel=1e-5), (g, w)  # loss
        assert g[4] == pytest.approx(w[4], rel=1e-4), (g, w)  # grad norm


def _forget_after(run_dir: Path, step: int) -> None:
    """The run as a kill after step `step`'s checkpoint leaves it: later checkpoints and the summary gone."""
    for ckpt in list_checkpoints(run_dir):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (run_dir / "train_summary.json").unlink()


def test_fsdp_lora_equals_one_process_and_resumes_on_any_world_size(tmp_path, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.train.loop import train
    sections = {"fsdp": lora_sections(tiny_base, max_steps=9, batch_size=1, grad_accum=2, num_checkpoints=3,
                                      log_every=1, strategy="fsdp"),
                "one": lora_sections(tiny_base, max_steps=9, batch_size=2, grad_accum=2, num_checkpoints=3,
                                     log_every=1)}
    for s in sections.values():
        s["lora"]["dropout"] = 0.0
    one = load_recipe(write_recipe(tmp_path / "one", "one", **sections["one"]))
    train(one)
    path = write_recipe(tmp_path / "fsdp", "fsdp", **sections["fsdp"])
    run_dir = load_recipe(path).run_dir
    _torchrun(["train", str(path)], tmp_path)
    want = _metrics(one.run_dir)
    _close(_metrics(run_dir), want)
    ckpt = list_checkpoints(run_dir)[-1]
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert json.loads((run_dir / "train_summary.json").read_text())["world_size"] == 2

    # the adapter is whole (gathered from the shards): plain peft loads it and it computes as one process's
    ids = torch.tensor([[5, 9, 13, 21, 34]])
    logits = []
    for d in (ckpt, list_checkpoints(one.run_dir)[-1]):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), d / "adapter")
        logits.append(model(ids).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)

    # resumed after the step-6 checkpoint, on one process (DCP reshards 2 -> 1) and on two
    for processes in (1, 2):
        _forget_after(run_dir, 6)
        if processes == 1:
            assert main(["train", str(path), "--resume"]) == 0
        else:
            _torchrun(["train", str(path), "--resume"], tmp_path)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        assert summary["resumed_from"] == 6 and summary["world_size"] == processes
        _close(_metrics(run_dir), want)


def test_fsdp_full_fine_tune_equals_one_process_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.train.loop import train
    one = load_recipe(write_recipe(tmp_path / "one", "full", train={"max_steps": 6, "batch_size": 2,
                                                                     "grad_accum": 2, "num_checkpoints": 2}))
    train(one)
    path = write_recipe(tmp_path / "fsdp", "full", train={"max_steps": 6, "batch_size": 1, "grad_accum": 2,
                                                           "num_checkpoints": 2, "strategy": "fsdp"})
    _torchrun(["train", str(path)], tmp_path)
    run_dir = load_recipe(path).run_dir
    _close(_metrics(run_dir), _metrics(one.run_dir))
    assert main(["export", str(run_dir), str(tmp_path / "exported"), "--dtype", "float32"]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").state_dict()
    b = AutoModelForCausalLM.from_pretrained(list_checkpoints(one.run_dir)[-1] / "model").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
