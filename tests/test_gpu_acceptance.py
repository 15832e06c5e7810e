"""benchmarks/gpu_acceptance.py --dry-run: the GPU acceptance run's own code path on the CPU, as a user starts it.

The script runs as a subprocess (as `python benchmarks/gpu_acceptance.py`), once over the five GPU recipes, once
with the DDP/FSDP check on 2 gloo processes (one recipe, to stay cheap), and, where a vLLM interpreter is found
(.venv-vllm, TUNELAB_VLLM_PYTHON), once with the vLLM comparison on the arithmetic LoRA recipe's run. The first
two skip the comparison, each by one of its two ways (--no-vllm; an interpreter that has no vLLM). What is checked
is the report: one row per recipe, measured numbers where numbers belong, and no GPU figure on a machine that
measured none.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from test_vllm_engine import needs_vllm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
RECIPES = ["llama3-8b-math-lora", "gemma-2b-glue-lora", "minigpt-pretrain", "minigpt-sft", "internlm-7b-choice"]
# the dry run's 8 eval prompts a recipe, split evenly over its eval tasks (internlm-7b-choice has three: 2 each)
PROMPTS = {**dict.fromkeys(RECIPES, 8), "internlm-7b-choice": 6}
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?%?$")


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--threads", "1", "--out", str(out), *args],
                          cwd=out.parent, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _table(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first column is `first_header`, as {header: cell}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_dry_run_reports_every_recipe_with_cpu_numbers_and_no_gpu_figures(tmp_path):
    out = tmp_path / "acceptance"
    proc = _run(out, "--no-vllm")
    assert "dry run (CPU): no GPU figures" in proc.stdout
    markdown = (out / "gpu_acceptance.md").read_text(encoding="utf-8")
    assert markdown in proc.stdout  # the same table on stdout and in the file
    rows = _table(markdown, "recipe")
    assert [r["recipe"] for r in rows] == RECIPES
    for r in rows:
        for col in ("peak allocated GiB", "peak reserved GiB", "reserved / plan"):
            assert r[col] == "n/a (CPU)", r
        assert r["steps"] == "2"
        assert re.fullmatch(r"\d+\.\d\d \(of 24 nominal\)", r["plan GiB"]), r
        for col in ("tokens/s", "MFU", "eval prompts", "eval prompts/s"):
            assert NUMBER.match(r[col]), (col, r)
        assert int(r["eval prompts"]) == PROMPTS[r["recipe"]]
    assert "stand-in for google/gemma-2b" in rows[1]["model"]
    assert "from scratch (stand-in for runs/minigpt-pretrain)" in rows[3]["model"]
    assert "models/tiny-base (stand-in for models/internlm_7b.ckpt)" == rows[4]["model"]
    assert "DDP/FSDP vs one process: not run" in markdown
    assert "vLLM against the embedded engine: skipped (--no-vllm)." in markdown

    result = json.loads((out / "gpu_acceptance.json").read_text(encoding="utf-8"))
    assert result["dry_run"] is True and result["gpu"] is None
    for r in result["recipes"]:
        assert r["peak_memory"] is None and "error" not in r
        assert r["train"]["steps"] == 2 and r["train"]["world_size"] == 1 and r["train"]["tokens_per_s"] > 0
        assert 0 < r["plan_total"] < r["plan_card"] == 24 * 2 ** 30
        assert r["eval"]["prompts"] == sum(s["prompts"] for s in r["eval"]["sets"].values()) == PROMPTS[r["recipe"]]
    # the stand-ins are reproducible by hand: the overrides are `tunelab train` --set arguments
    assert any(s.startswith("data.train=") for s in result["recipes"][0]["set"])
    assert result["vllm"] == {"skipped": "--no-vllm"}


def test_dry_run_distributed_check_matches_one_process(tmp_path):
    out = tmp_path / "acceptance"
    # the one recipe beside the check: the cheapest (~2 s of micro preset; gemma's stand-in took ~8 s)
    # an interpreter without vLLM: the comparison is skipped with why, and the run goes on
    _run(out, "--distributed", "--dist-steps", "4", "--recipes", "minigpt-pretrain", "--vllm-python", "/nonexistent")
    markdown = (out / "gpu_acceptance.md").read_text(encoding="utf-8")
    assert "vLLM against the embedded engine: skipped (/nonexistent cannot import vllm" in markdown
    assert [r["recipe"] for r in _table(markdown, "recipe")] == ["minigpt-pretrain"]
    rows = _table(markdown, "strategy")
    assert [r["strategy"] for r in rows] == ["ddp", "fsdp"]
    assert all(r["within 1e-5 (the CPU tests' bound)"] == "yes" for r in rows), rows
    result = json.loads((out / "gpu_acceptance.json").read_text(encoding="utf-8"))
    for d in result["distributed"]:
        assert d["processes"] == 2 and d["steps"] == 4, d
        assert d["max_rel_loss_diff"] < 1e-5, d
    assert "/nonexistent cannot import vllm" in result["vllm"]["skipped"]


@needs_vllm
def test_dry_run_compares_the_embedded_engine_with_vllm(tmp_path):
    """The arithmetic LoRA recipe's run evaluated by both engines on its 8 prompts: the tiny base in fp32 gives the
    same greedy answers on both, so the same scores; the seconds are the CPU's, and said to be."""
    out = tmp_path / "acceptance"
    _run(out, "--recipes", "llama3-8b-math-lora")
    markdown = (out / "gpu_acceptance.md").read_text(encoding="utf-8")
    assert "**CPU figures (dry run)**" in markdown and "not GPU figures" in markdown
    rows = _table(markdown, "engine")
    assert [r["engine"] for r in rows] == ["embedded", "vLLM"]
    for r in rows:
        for col in ("wall s", "arithmetic accuracy", "squad f1"):
            assert NUMBER.match(r[col]), (col, r)
    assert rows[0]["of which server start s"] == "–" and NUMBER.match(rows[1]["of which server start s"])

    v = json.loads((out / "gpu_acceptance.json").read_text(encoding="utf-8"))["vllm"]
    assert v["recipe"] == "llama3-8b-math-lora" and v["checkpoints"] == ["step-000002"], v
    assert v["measured_on"].startswith("cpu (dry run)") and v["gpu_memory_utilization"] == 0.1
    assert v["prompts"] == 8 and v["compared"] == 8
    assert 0 < v["vllm_server_start_seconds"] < v["seconds"]["vllm"]
    assert v["ratio_embedded_over_vllm"] == v["seconds"]["embedded"] / v["seconds"]["vllm"]
    assert set(v["tasks"]) == {"arithmetic", "squad"}
    for t in v["tasks"].values():
        assert t["generated_by_vllm"] and t["mode"] == "generate", t
        assert isinstance(t["embedded"], float) and isinstance(t["vllm"], float), t
    assert v["identical_share"] >= 0.99, v["tasks"]
    assert v["max_score_difference_points"] == 0.0, v["tasks"]
