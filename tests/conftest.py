"""Shared fixtures for the training tests: tiny recipes written into tmp dirs, and one tiny trained base model.

Everything is CPU-sized: preset `micro` (hidden 64, 2 layers), a few hundred generated examples, 10-30 steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunelab.recipe.stages import merged  # a None value deletes a key, as a chain's stage does

# `train.precision: auto` trains in fp32 on every CPU here, with no bf16 race (`tunelab.model.device`): the suite's
# references (TRL's losses, HF Trainer, unbroken runs) are fp32, and CI hosts differ in whether bf16 pays. Child
# processes (torchrun, `tunelab` subprocesses) inherit it. Tests of the race itself unset it.
os.environ.setdefault("TUNELAB_CPU_AUTO_PRECISION", "fp32")


def _absl_writes_to_the_real_stderr() -> None:
    """absl (imported by rouge-score and TensorBoard) makes its log handler at import, on whatever `sys.stderr` is
    then: in a test, pytest's capture file. Its `close` closes any stream that is not the *current* stderr, and
    uvicorn's logging config (`tunelab ui`'s gradio launch) closes every handler the process has made: under a
    test's `capsys` that closed pytest's capture file, and every later test in the process errored with "I/O
    operation on closed file". Given the process's own stderr, which absl never closes, it leaves pytest's alone."""
    import sys
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


_absl_writes_to_the_real_stderr()


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A run's `train.threads` sets torch's thread count for its process, and in-process tests share one: each
    test gets the count back, so a later test's float sums (compared with TRL's to 1e-6) are not reordered."""
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

# One torch thread per process: the tests must coexist with other work on a 2-core machine, and the
# resume/DDP comparisons run recipes in several processes that must not oversubscribe the cores.
THREADS = 1


def recipe_dict(out_dir: Path, name: str = "run", **sections: Any) -> dict:
    """A small from-scratch recipe (preset micro, generated arithmetic), with `sections` deep-merged over it
    (a None value deletes the key)."""
    base = {
        "name": name,
        "seed": 0,
        "output_dir": str(out_dir),
        "model": {"preset": "micro", "from_scratch": True, "tokenizer_vocab_size": 400},
        "data": {"template": "alpaca", "max_seq_len": 128, "packing": True,
                 "train": [{"generate": "arithmetic", "count": 300, "seed": 1,
                            "options": {"kinds": ["int_add", "int_sub"], "int_digits": 2}}]},
        "lora": {"enabled": False},
        "train": {"max_steps": 10, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.1, "log_every": 1,
                  "threads": THREADS},
        "eval": {"baseline": False},
    }
    return merged(base, sections)


def write_recipe(directory: Path, name: str = "run", filename: str | None = None, **sections: Any) -> Path:
    """Write `recipe_dict(...)` as YAML into `directory` (runs go to `directory/runs`); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or f"{name}.yaml")
    raw = recipe_dict(directory / "runs", name, **sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def make_recipe(tmp_path):
    """`make_recipe(name, **sections)` -> path of a tiny recipe in this test's tmp dir."""
    def make(name: str = "run", **sections: Any) -> Path:
        return write_recipe(tmp_path, name, **sections)
    return make


@pytest.fixture(scope="session")
def scratch_run(tmp_path_factory):
    """One from-scratch training run (full fine-tune of a random micro Llama on arithmetic + reading).

    Shared: the from-scratch tests inspect its outputs, and its last checkpoint is the LoRA tests' base.
    """
    from tunelab.recipe import load_recipe
    from tunelab.train.loop import train
    root = tmp_path_factory.mktemp("scratch")
    path = write_recipe(
        root, "scratch",
        data={"train": [{"generate": "arithmetic", "count": 400, "seed": 1,
                         "options": {"kinds": ["int_add", "int_sub"], "int_digits": 2}},
                        {"generate": "reading", "count": 100, "seed": 2}]},
        train={"max_steps": 30, "batch_size": 4, "lr": 3e-3})
    recipe = load_recipe(path)
    summary = train(recipe)
    return {"recipe": recipe, "summary": summary, "run_dir": recipe.run_dir, "recipe_path": path}


@pytest.fixture(scope="session")
def tiny_base(scratch_run) -> Path:
    """A trained tiny base model: a plain HF directory (save_pretrained model + tokenizer) for `model.path`."""
    from tunelab.runs import list_checkpoints
    model_dir = list_checkpoints(scratch_run["run_dir"])[-1] / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    return model_dir


def lora_sections(base: Path, **train: Any) -> dict:
    """Recipe sections for a LoRA run on the tiny base (multiplication: a skill the base has not seen)."""
    return {
        "model": {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(base)},
        "data": {"train": [{"generate": "arithmetic", "count": 300, "seed": 5,
                            "options": {"kinds": ["int_mul"], "int_digits": 2}}]},
        "lora": {"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.1},
        "train": {"lr": 1e-2, **train},
    }


def sigkill_after_a_checkpoint(cmd: list[str], cwd: Path, run_dir: Path, limit: float = 300) -> None:
    """Start `cmd` (a `tunelab train`), kill -9 it as soon as its first checkpoint is whole, and check it died
    unfinished: the half of a kill-and-resume test that every training method shares."""
    import signal
    import subprocess
    import time

    from tunelab.runs import list_checkpoints
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    while not list_checkpoints(run_dir):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "train_summary.json").exists()


def pytest_configure(config):
    config.addinivalue_line("markers", "patched: tests one of model.patches itself (skipped under TUNELAB_NO_PATCHES=1)")


def pytest_collection_modifyitems(config, items):
    """Under `TUNELAB_NO_PATCHES=1` the tests of the patches themselves skip; every other test runs without them."""
    from tunelab.model.patches import disabled_by_env
    if not disabled_by_env():
        return
    skip = pytest.mark.skip(reason="tests a patch, and TUNELAB_NO_PATCHES=1 leaves every patch out")
    for item in items:
        if "patched" in item.keywords:
            item.add_marker(skip)


# Modules whose module-scoped fixture starts a vLLM server (~35-45 s on 2 cores): under `-n auto` each runs on one
# worker, so the server starts once, not once a worker.
ONE_WORKER_MODULES = ("tests/test_vllm_engine.py", "tests/test_vllm_serve.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's own scheduler but for `ONE_WORKER_MODULES`, each one unit of work. (`--dist loadgroup` with
    `xdist_group` marks would say the same, but pytest-xdist 3.8 groups by rewriting `item._nodeid`, which pytest
    9.2 no longer reads: its groups fell apart.) Scheduled biggest unit first, so the two modules start at once."""
    if config.getvalue("dist") != "load":
        return None   # an explicit --dist keeps its own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class ServerModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ServerModulesTogether(config, log)
