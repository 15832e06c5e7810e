"""A run's whole evaluation, embedded engine against vLLM, in one run: wall time (vLLM's start included) and scores.

What `tunelab run` does after training, done twice over a finished run's base and checkpoints with its own
recipe's `eval:` section (`tunelab.pipeline.evaluation.evaluate_checkpoints`, the run's code path): once with
`engine.kind: embedded`, once with `engine.kind: vllm` (a server started from `--vllm-python`, else
$TUNELAB_VLLM_PYTHON or `.venv-vllm/bin/python`; each checkpoint's LoRA adapter loaded by name). Each engine's
results go to a folder of their own, never into the run's. Printed: each engine's minutes, the ratio
(target: vLLM ≥ 1.5× faster), and every task's headline metric per model under both, with the largest difference
(target: within 1 point); tasks vLLM leaves to the embedded engine (scoring prompts) are marked.

    python benchmarks/bench_eval_engines.py runs/smollm2-math [--vllm-python PY] [--order vllm,embedded]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import HERE, load_average, logger, machine, run_main, start_torch, write_result

log = logger("bench_eval_engines")


def headline(results: dict) -> dict[str, float]:
    """{task: its primary metric in points} of one model's results.json."""
    out = {}
    for task, metrics in results.items():
        value = metrics.get(metrics.get("primary_metric", ""), None)
        if isinstance(value, (int, float)):
            out[task] = 100 * value if value <= 1 else value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished run directory (its recipe.yaml and checkpoints)")
    ap.add_argument("--vllm-python", default=None, help="the interpreter vLLM is in (default: as tunelab finds it)")
    ap.add_argument("--order", default="embedded,vllm", help="which engine goes first")
    ap.add_argument("--out", default=str(HERE / "results" / "eval_engines.json"))
    args = ap.parse_args()
    threads, load0 = start_torch(0)
    from tunelab.data.templates import recipe_template
    from tunelab.eval.sets import eval_sets
    from tunelab.pipeline import judge_against_run_base
    from tunelab.pipeline.evaluation import evaluate_checkpoints, run_models
    from tunelab.pipeline.prepare import resolve_base_run
    from tunelab.recipe import load_recipe
    from tunelab.runs import list_checkpoints

    run = Path(args.run)
    recipe = load_recipe(run / "recipe.yaml")
    checkpoints = list_checkpoints(run)
    scratch = Path(tempfile.mkdtemp(prefix="bench-eval-engines-"))
    seconds, scores = {}, {}
    try:
        for kind in args.order.split(","):
            engine = {"kind": kind, **({"python": args.vllm_python} if kind == "vllm" and args.vllm_python else {})}
            r = recipe.model_copy(update={"output_dir": str(scratch / kind), "engine": type(recipe.engine)(**engine)})
            resolve_base_run(r)                # model.path as the run resolved it (a GGUF: its converted directory)
            sets = eval_sets(r.eval)
            judge_against_run_base(r, sets)    # base_agreement's answers from the run's base
            models = run_models(r)
            log(f"{kind}: the base and {len(checkpoints)} checkpoints of {run}")
            t0 = time.perf_counter()
            try:
                base, per_ckpt = evaluate_checkpoints(r, sets, recipe_template(r.data), checkpoints, models,
                                                      base_label="base")
            finally:
                models.close()
            seconds[kind] = time.perf_counter() - t0
            scores[kind] = {"base": headline(base or {}), **{k: headline(v) for k, v in per_ckpt.items()}}
            log(f"{kind}: {seconds[kind] / 60:.2f} min")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = seconds["embedded"] / seconds["vllm"]
    diffs = {m: {t: scores["vllm"][m][t] - v for t, v in tasks.items() if t in scores["vllm"].get(m, {})}
             for m, tasks in scores["embedded"].items()}
    worst = max((abs(d) for tasks in diffs.values() for d in tasks.values()), default=0.0)
    for m, tasks in scores["embedded"].items():
        log(f"{m}: " + ", ".join(f"{t} {v:.1f} / {scores['vllm'][m].get(t, float('nan')):.1f}"
                                 for t, v in tasks.items()) + "  (embedded / vllm)")
    log(f"whole evaluation: embedded {seconds['embedded'] / 60:.2f} min, vllm {seconds['vllm'] / 60:.2f} min "
        f"(start included): vllm {ratio:.2f}x (target >= 1.5); largest score difference {worst:.2f} points "
        f"(target <= 1)")
    write_result(args.out, {"run": str(run), "seconds": seconds, "ratio_embedded_over_vllm": ratio,
                            "scores": scores, "differences": diffs, "largest_difference": worst,
                            "load_at_end": load_average(), "machine": machine(threads, load0)}, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
