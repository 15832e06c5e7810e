"""GRPO's and RFT's rollouts through vLLM (`engine.kind: vllm`) on the shipped tiny base, in fp32: the server
holds the base, the policy's adapter is written and loaded under a new name after every optimizer step (never
merged), GRPO's loss is weighted by trainer / sampler (its metrics logged), RFT trains on what vLLM drew, the
server tunelab started is gone when the run ends, and a run vLLM cannot sample for says so in one line and
samples itself. Skips without a vLLM interpreter (.venv-vllm, TUNELAB_VLLM_PYTHON)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import lora_sections, write_recipe
from test_vllm_engine import TINY_BASE, needs_vllm, server  # noqa: F401  (the module's server fixture)

from tunelab.train.loop import train


def _recipe(tmp_path: Path, method: str, engine: dict, steps: int = 3, **lora) -> Path:
    sections = lora_sections(TINY_BASE, max_steps=steps, batch_size=4, log_every=1, num_checkpoints=1,
                             precision="fp32")
    sections["lora"].update(dropout=0.0, **lora)
    sections["data"] = {"max_seq_len": 96, "train": [
        {"generate": "arithmetic", "count": 32, "seed": 3, "options": {"kinds": ["int_add", "int_mul"],
                                                                        "int_digits": 2}}]}
    settings = {"num_generations": 4, "max_completion_length": 12, "temperature": 1.0}
    if method == "grpo":   # the tiny base's answers are near certain: a high temperature (the sampler's
        # log-probabilities then must be vLLM's processed ones to agree), a reward that spreads, a KL term
        (tmp_path / "brevity.py").write_text(BREVITY, encoding="utf-8")
        settings.update(beta=0.04, temperature=2.0, rewards=[{"task": "arithmetic"}, {"function": f"{tmp_path}/brevity.py:brevity"}])
    sections["train"].update(method=method, lr=1e-2, **{method: settings})
    return write_recipe(tmp_path, method, **sections, engine=engine, report_to=[])


BREVITY = '''
def brevity(prompts, completions, **columns):
    return [-len(c) / 20 for c in completions]
'''


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open(encoding="utf-8")]


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@needs_vllm
def test_a_grpo_run_samples_through_a_vllm_server_it_starts_and_stops(tmp_path, caplog):
    """tunelab starts the server (its log in the run), loads the adapter after each step under a new name, weighs
    the loss by the sampler's mismatch (small on fp32: the same weights in two engines' kernels), and stops it."""
    from tunelab.recipe import load_recipe
    recipe = load_recipe(_recipe(tmp_path, "grpo", {"kind": "vllm", "gpu_memory_utilization": 0.1,
                                                    "startup_timeout": 300}))
    with caplog.at_level(logging.INFO, logger="tunelab"):
        train(recipe, rewards=_rewards(recipe))
    run_dir = Path(recipe.run_dir)
    said = _said(caplog)
    for step in range(3):   # one adapter a step, each the weights after that many optimizer steps
        assert any(f"answers drawn by vLLM with policy-step{step} " in m for m in said), said
    lines = _lines(run_dir)
    assert len(lines) == 3
    for x in lines:
        assert 0 <= x["sampling/sampling_logp_difference/mean"] < 0.05, x
        assert 0 < x["sampling/importance_sampling_ratio/mean"] <= 3.0
    # the two engines' kernels differ in the last bits: a mismatch is measured, and it is small
    assert any(x["sampling/sampling_logp_difference/max"] > 0 for x in lines), lines
    assert any(x["frac_reward_zero_std"] < 1 and x["grad_norm"] > 0 for x in lines), lines   # it learnt
    # the policy moved away from the base (KL > 0) while vLLM's probabilities stayed the trainer's: vLLM drew
    # from the adapter as it was after each step, not from the base
    assert lines[-1]["kl"] > 1e-5 and lines[-1]["sampling/sampling_logp_difference/mean"] < lines[-1]["kl"], lines
    log = (run_dir / "vllm.log").read_text()
    assert "--logprobs-mode processed_logprobs" in log and "policy-step2" in log
    assert not (run_dir / "policy_adapters").exists()       # the synced adapters' files are gone with the run
    assert "vLLM's server on" in " ".join(said) and "stopped" in " ".join(said)


@needs_vllm
def test_an_rft_run_trains_on_what_a_running_server_drew(tmp_path, caplog, server):  # noqa: F811
    """`engine.url`: a server someone else runs; the adapter is loaded and unloaded on it, and it keeps running."""
    from tunelab.decoding.vllm_engine import VLLMEngine
    from tunelab.recipe import load_recipe
    recipe = load_recipe(_recipe(tmp_path, "rft", {"kind": "vllm", "url": server.url}, steps=2))
    with caplog.at_level(logging.INFO, logger="tunelab"):
        summary = train(recipe, rewards=_rewards(recipe))
    said = _said(caplog)
    assert any("answers drawn by vLLM with policy-step1 " in m for m in said), said
    lines = _lines(Path(recipe.run_dir))
    assert all("frac_accepted" in x for x in lines) and summary
    assert VLLMEngine(server.url, server.name).served_models() == [server.name]   # unloaded, still serving


def test_a_run_vllm_cannot_sample_for_samples_itself_and_says_so(tmp_path, caplog):
    """A full fine-tune (no adapter to sync): one warning line, the run trains with the embedded engine, and no
    server is started (so this runs without vLLM)."""
    from tunelab.recipe import load_recipe
    path = _recipe(tmp_path, "rft", {"kind": "vllm", "python": "/nonexistent/python"}, steps=1)
    recipe = load_recipe(path)
    recipe = recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"enabled": False})})
    with caplog.at_level(logging.WARNING, logger="tunelab"):
        train(recipe, rewards=_rewards(recipe))
    said = [m for m in _said(caplog) if m.startswith("engine vllm:")]
    assert len(said) == 1 and "full fine-tune" in said[0] and "embedded engine" in said[0], said
    assert not (Path(recipe.run_dir) / "vllm.log").exists()


def _rewards(recipe):
    from tunelab.pipeline import training_rewards
    return training_rewards(recipe)
