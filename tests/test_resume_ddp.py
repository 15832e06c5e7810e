"""Resume after a hard kill gives the same run as no interruption; DDP under torchrun matches one process.

Both start real `python -m tunelab.cli` processes, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import lora_sections, write_recipe

from tunelab.cli import main
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from tunelab.train.plots import read_metrics

STEP_DIR = re.compile(r"step-\d+")
# what must agree between two runs (tokens_per_s and elapsed_s are wall-clock)
KEYS = ("step", "epoch", "loss", "lr", "grad_norm")


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _finished_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.fullmatch(p.name) and (p / "state.json").exists())


def _start_and_kill_after(recipe_path: Path, n_ckpts: int, run_dir: Path, timeout: float = 120) -> int:
    """Start `tunelab train` in a subprocess and SIGKILL it once `n_ckpts` checkpoints are complete."""
    log = open(recipe_path.parent / "killed.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "train", str(recipe_path)],
                            cwd=recipe_path.parent, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while len(_finished_checkpoints(run_dir)) < n_ckpts:
            assert proc.poll() is None, (recipe_path.parent / "killed.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no checkpoints in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _metrics(run_dir: Path) -> list[tuple]:
    return [tuple(r[k] for k in KEYS) for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.mark.parametrize("kind", ["lora", "scratch"])
def test_resume_after_sigkill_matches_the_uninterrupted_run(kind, tmp_path, tiny_base, capsys):
    from tunelab.train.loop import train
    # log_every 7 does not divide the checkpoint spacing (10): a resumed run must carry the log window over
    train_cfg = {"max_steps": 120, "num_checkpoints": 12, "log_every": 7, "batch_size": 2}
    if kind == "lora":
        sections = lora_sections(tiny_base, **train_cfg)  # LoRA dropout 0.1: the RNG state must be restored
        assert sections["lora"]["dropout"] > 0
    else:
        sections = {"train": train_cfg}

    ref_path = write_recipe(tmp_path / "ref", kind, **sections)
    ref = train(load_recipe(ref_path))
    ref_dir = load_recipe(ref_path).run_dir

    path = write_recipe(tmp_path / "killed", kind, **sections)
    run_dir = load_recipe(path).run_dir
    rc = _start_and_kill_after(path, 2, run_dir)
    assert rc == -signal.SIGKILL
    at_kill = _finished_checkpoints(run_dir)
    assert 2 <= len(at_kill) < 12, "the run finished before it could be killed"
    assert not (run_dir / "train_summary.json").exists()

    assert main(["train", str(path), "--resume"]) == 0
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from"] == int(at_kill[-1].name.split("-")[1]) >= 20
    assert summary["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
    # every metrics line, including the one whose window straddles the resume point, as if never killed
    got, want = _metrics(run_dir), _metrics(ref_dir)
    assert [g[0] for g in got] == [w[0] for w in want] == list(range(7, 120, 7)) + [120]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-6)
    assert [c.name for c in list_checkpoints(run_dir)] == [c.name for c in list_checkpoints(ref_dir)]
    a = torch.load(list_checkpoints(run_dir)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    b = torch.load(list_checkpoints(ref_dir)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)

    # resuming needs the same recipe
    capsys.readouterr()
    assert main(["train", str(path), "--resume", "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "recipe differs" in err and "recipe.yaml" in err and err.count("\n") == 1


def test_resume_with_nothing_to_resume_is_a_clear_error(make_recipe, capsys):
    assert main(["train", str(make_recipe("never")), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from tunelab.train.loop import train
    steps = 20
    # 2 ranks x batch 1 x grad_accum 2 (exercises DDP's no_sync on the first micro-batch) against
    # 1 process x batch 2 x grad_accum 2: the same 4 rows per optimizer step
    ddp_path = write_recipe(tmp_path / "ddp", "ddp",
                            train={"max_steps": steps, "batch_size": 1, "grad_accum": 2, "num_checkpoints": 4})
    one_path = write_recipe(tmp_path / "one", "one",
                            train={"max_steps": steps, "batch_size": 2, "grad_accum": 2, "num_checkpoints": 4})

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tunelab.cli", "train", str(ddp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    ddp_dir = load_recipe(ddp_path).run_dir
    ddp = json.loads((ddp_dir / "train_summary.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == steps
    # rank 0 alone writes: each checkpoint and each metrics line exactly once, nothing left half-written
    names = sorted(p.name for p in (ddp_dir / "checkpoints").iterdir())
    assert names == [f"step-{s:06d}" for s in (5, 10, 15, 20)]
    assert [r["step"] for r in read_metrics(ddp_dir / "metrics.jsonl")] == list(range(1, steps + 1))

    one = train(load_recipe(one_path))
    # Same rows per optimizer step, same init, same token-weighted loss: the two runs differ only in float
    # summation order (per-rank partial sums, then all-reduce). Measured on this CPU: loss within 2e-7
    # relative over these 20 steps (6e-7 over 60), pre-clip grad norm within 1e-7 (2e-5 over 60, as Adam
    # amplifies the rounding). The bounds below leave ~50x headroom for other BLAS kernels, and are still
    # far tighter than any real mistake: dropping the x world_size that undoes DDP's gradient averaging
    # halves grad_norm, and both ranks reading the same rows moves the step-1 loss by 8e-4 relative.
    got, want = _metrics(ddp_dir), _metrics(one_path.parent / "runs" / "one")
    assert len(got) == len(want) == steps
    for g, w in zip(got, want):
        assert g[:2] == w[:2]  # step, epoch
        assert g[2] == pytest.approx(w[2], rel=1e-5), (g, w)  # loss
        assert g[4] == pytest.approx(w[4], rel=1e-4), (g, w)  # grad_norm
    assert ddp["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    assert want[-1][2] < 0.7 * want[0][2]  # and it is a run that learns, not a flat line


def test_resume_after_the_last_checkpoint_reports_the_real_final_loss(make_recipe):
    """Killed after the final checkpoint but before the summary: --resume has no step left to run and must
    still write the run's true final loss (not NaN) and its loss curve."""
    from tunelab.train.loop import train
    recipe = load_recipe(make_recipe("end", train={"max_steps": 6, "num_checkpoints": 2}))
    first = train(recipe)
    (recipe.run_dir / "train_summary.json").unlink()
    (recipe.run_dir / "loss.png").unlink()
    again = train(recipe, resume=True)
    assert again["resumed_from"] == 6 and again["final_loss"] == first["final_loss"]
    assert (recipe.run_dir / "loss.png").exists()
    assert [r["step"] for r in read_metrics(recipe.run_dir / "metrics.jsonl")] == list(range(1, 7))


def test_resume_of_a_run_saved_before_a_schema_key_was_added(make_recipe):
    """A run started by an older tunelab has no key the schema gained since (here eval.mode, at its
    default): that is no difference, and --resume continues it; a real change still is one."""
    import yaml

    from tunelab.train.loop import train
    recipe = load_recipe(make_recipe("older", train={"max_steps": 4, "num_checkpoints": 2}))
    train(recipe)
    saved = recipe.run_dir / "recipe.yaml"
    raw = yaml.safe_load(saved.read_text(encoding="utf-8"))
    assert raw["eval"].pop("mode", "absent") is None
    saved.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert train(recipe, resume=True)["steps"] == 4  # a finished run: nothing left to train, no error
    raw["train"]["lr"] = 0.5
    saved.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    from tunelab.errors import TunelabError
    with pytest.raises(TunelabError, match="recipe differs"):
        train(recipe, resume=True)


def test_under_torchrun_every_rank_evaluates_its_share_of_checkpoints(tmp_path):
    """`tunelab run` under a 2-process torchrun: rank 1 evaluates checkpoints too (each on its own device), and
    rank 0's report has every checkpoint and the base, as one process's would."""
    path = write_recipe(tmp_path, "shared", train={"max_steps": 8, "batch_size": 1, "num_checkpoints": 4},
                        eval={"baseline": False, "batch_size": 8, "max_new_tokens": 8,
                              "tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 6,
                                                                          "seed": 9}}]},
                        score={"accuracy_task": "arithmetic"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tunelab.cli", "run", str(path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    shares = {r: re.findall(rf"rank {r}: evaluating (step-\d+)", proc.stderr) for r in (0, 1)}
    assert shares == {0: ["step-000002", "step-000006"], 1: ["step-000004", "step-000008"]}
    metrics = json.loads((load_recipe(path).run_dir / "metrics.json").read_text())
    assert sorted(metrics["checkpoints"]) == ["step-000002", "step-000004", "step-000006", "step-000008"]
