"""A course run: a fine-tuning whose `model.path` is a pretraining run directory (the MiniGPT course path:
pretrained, then fine-tuned on question-answer pairs). It starts from that run's best checkpoint and gets a
course report instead of a competition score: the pretrained model next to the fine-tuned one on every eval task
(as `eval/base`, each with its own saved template) — validation perplexity, held-out Rouge-L, exact answers and
stop rate —, the fine-tuning loss with the held-out answers' loss per checkpoint as its validation curve (the
best checkpoint is the lowest), every checkpoint, and sample answers of both.

A later stage of the course — an evaluated run whose `model.path` is a course run, such as GRPO on the SFT model
(`recipes/minigpt-cpu-grpo.yaml`) — gets the same report against that run's model, named by the two runs'
names, not the competition kind's: that one scores accuracy in 0..1 and a Rouge-L F is 0..100. Its best
checkpoint is its last unless it is an `sft` run: a `grpo` run does not optimise the held-out answers' loss,
and choosing it by the held-out exact answers would choose on the numbers it reports; its report shows the
sampled reward per logged window (`tunelab.pipeline.course_rewards`).

A pretraining run built from generated encyclopedia articles splits their QA pairs by the corpus's document split
for that fine-tuning (`<articles>/../sft-qa/`, `tunelab.pipeline.prepare.split_sft_qa`)."""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.pipeline.evaluation import eval_placement, evaluate_checkpoints, task_records
from tunelab.pipeline.pretraining import task_cell
from tunelab.pipeline.run_kind import RunKind, TrainedRun
from tunelab.recipe import Recipe
from tunelab.report import best_title, checkpoint_table, number, pct, results_with, table_cell
from tunelab.records import read_json_object
from tunelab.runs import best_results, list_checkpoints, model_dir_of, read_metrics


def _run_metrics(run_dir: Path | None) -> dict:
    metrics = run_dir / "metrics.json" if run_dir is not None else None
    return read_json_object(metrics) if metrics and metrics.is_file() else {}


def is_pretraining_run(run_dir: Path | None) -> bool:
    """Whether a base run directory holds a pretraining run (its metrics.json says so)."""
    return bool(_run_metrics(run_dir).get("pretraining"))


def is_course_stage(recipe: Recipe, base_run: Path | None) -> bool:
    """A course run: its base is a pretraining run, or it is evaluated and its base is a course run (a later
    stage; an unevaluated one, such as the DPO recipe, stays a plain run)."""
    return is_pretraining_run(base_run) or (bool(recipe.eval.tasks) and bool(_run_metrics(base_run).get("course")))


def _roles(metrics: dict) -> tuple[str, str]:
    """What the report calls the base model and the trained one."""
    return tuple(metrics.get("roles") or ("pretrained", "fine-tuned"))


def measure(run: TrainedRun) -> dict:
    """Both models on every eval task, the held-out answers' loss of the pretrained model (step 0) and of every
    checkpoint (the validation curve; the best checkpoint is the lowest), and the pretraining's own numbers."""
    recipe, sets, template = run.recipe, run.sets, run.template
    run_dir = recipe.run_dir
    ckpts = list_checkpoints(run_dir)
    qa_label = next((label for label, es in sets.items() if es.task.name == "rougel"), None)
    qa_loss: dict[str, dict] = {}
    if qa_label:
        from tunelab.eval.runner import answer_loss
        examples = sets[qa_label].examples
        for name, step, model_dir in [("base", 0, recipe.model.path),
                                      *((c.name, int(c.name.split("-")[-1]), model_dir_of(c)) for c in ckpts)]:
            qa_loss[name] = {"step": step, **answer_loss(model_dir, template, examples, recipe.eval.batch_size,
                                                          **eval_placement(recipe))}
    tuned = {n: v for n, v in qa_loss.items() if n != "base"}
    method = recipe.train.method
    if tuned and method == "sft":
        best, best_by = min(tuned, key=lambda n: tuned[n]["loss"]), f"{qa_label} answer loss"
    else:
        best, best_by = (ckpts[-1].name if ckpts else None), "last"
    later = not is_pretraining_run(run.base_run)
    roles = (run.base_run.name, recipe.name) if later else ("pretrained", "fine-tuned")
    chosen = ckpts if recipe.eval.checkpoints == "all" else [c for c in ckpts if c.name == best or c == ckpts[-1]]
    base, per_ckpt = evaluate_checkpoints(recipe, sets, template, chosen, run.models, base_label=roles[0])
    base_metrics = _run_metrics(run.base_run)
    metrics: dict = {
        "name": recipe.name, "course": True, "method": method, "later_stage": later, "roles": list(roles),
        "train": run.summary,
        "template": template.name, "base_run": str(run.base_run), "base_model": recipe.model.path,
        "best_checkpoint": best, "best_by": best_by,
        "qa_loss": qa_loss, "qa_task": qa_label, "base": base, "checkpoints": per_ckpt, "tasks": task_records(sets),
        "base_pretraining": {k: base_metrics.get(k) for k in ("name", "best_checkpoint", "best_val_loss", "train")}}
    if method == "grpo":
        from tunelab.pipeline.course_rewards import plot_stage_rewards, sampled_rewards
        metrics["sampled_reward"] = sampled_rewards(run_dir / "metrics.jsonl")
        plot_stage_rewards(run_dir / "metrics.jsonl", metrics, run_dir / "course.png", recipe.name)
    else:
        plot_course_curves(run_dir / "metrics.jsonl", qa_loss, run_dir / "course.png", recipe.name)
    return metrics


def _rate(value) -> str:
    return pct(value) if isinstance(value, (int, float)) else "–"


def _course_results(metrics: dict) -> tuple[dict, dict]:
    """(the pretrained model's results, the best fine-tuned checkpoint's), by task label."""
    return metrics.get("base") or {}, best_results(metrics)


def summary_lines(metrics: dict) -> list[str]:
    base, tuned = _course_results(metrics)
    pre = metrics.get("base_pretraining") or {}
    before, after = _roles(metrics)
    lines = [f"{before}: {metrics['base_run']} ({pre.get('best_checkpoint') or metrics['base_model']}); "
             f"{after}: {metrics.get('best_checkpoint')} (best by {metrics.get('best_by')}), "
             f"template {metrics.get('template')}"]
    for label, r in results_with(tuned, "unigram_perplexity").items():
        b = base.get(label, {})
        lines.append(f"{label}: validation perplexity {number(b.get('perplexity'), '.2f')} {before} -> "
                     f"{r['perplexity']:.2f} {after} (unigram {r['unigram_perplexity']:.2f})")
    for label, r in results_with(tuned, "stop_rate").items():
        b = base.get(label, {})
        lines.append(f"{label}: Rouge-L F {number(b.get('rougeL_f'), '.1f')} -> {r['rougeL_f']:.1f} over {r['n']} "
                     f"held-out pairs ({r['segmentation']}); exact {_rate(b.get('exact'))} -> {_rate(r['exact'])}; "
                     f"stop rate {_rate(b.get('stop_rate'))} -> {_rate(r['stop_rate'])}; answer length "
                     f"{number(b.get('answer_chars'), '.1f')} -> {r['answer_chars']:.1f} characters")
    losses = metrics.get("qa_loss") or {}
    best = metrics.get("best_checkpoint")
    if "base" in losses and best in losses:
        lines.append(f"held-out answer loss (answer + EOT after question + separator): {losses['base']['loss']:.3f} "
                     f"{before} -> {losses[best]['loss']:.3f} {after}")
    t = metrics["train"]
    if metrics.get("method", "sft") == "sft":
        lines.append(f"fine-tuning: {t['steps']} steps in {t['train_seconds']:.0f}s on {t['samples']:,} pairs, "
                     f"final loss {t['final_loss']:.4f}")
    else:
        from tunelab.pipeline.course_rewards import reward_line
        lines.append(f"{metrics['method']}: {t['steps']} steps in {t['train_seconds']:.0f}s on {t['samples']:,} "
                     f"prompts" + reward_line(metrics.get("sampled_reward")))
    return lines


def _answer_cell(sample: dict | None) -> str:
    if not sample:
        return "–"
    return table_cell(sample["answer"], 120) + (" ■" if sample.get("finish_reason") == "stop" else " …")


def report_sections(recipe: Recipe, metrics: dict, run_dir: Path) -> list[str]:
    base, tuned = _course_results(metrics)
    best = metrics.get("best_checkpoint")
    role, tuned_role = _roles(metrics)
    later = bool(metrics.get("later_stage"))  # after SFT: both models answer with the same template
    intro = (f"Both models answer after the separator (template `{metrics.get('template')}`); the best checkpoint "
             f"is the {metrics.get('best_by')} one." if later else
             "Each model with its own template: the pretrained one continues the question as text (template "
             f"`none`), the fine-tuned one answers after the separator (template `{metrics.get('template')}`).")
    lines = [f"## {f'{role} vs {tuned_role}' if later else 'Pretrained vs fine-tuned'} ({best})", "", intro, "",
             f"| task | measure | {role} | {tuned_role} |", "|---|---|---|---|"]
    for label, r in results_with(tuned, "unigram_perplexity").items():
        b = base.get(label, {})
        lines.append(f"| {label} | perplexity on the corpus's {r.get('split', 'val')} split ({r['tokens']:,} tokens; "
                     f"unigram {r['unigram_perplexity']:.2f}) | {number(b.get('perplexity'), '.2f')} | "
                     f"{r['perplexity']:.2f} |")
    for label, r in results_with(tuned, "stop_rate").items():
        b = base.get(label, {})
        lines += [f"| {label} | Rouge-L F ({r['n']} held-out pairs, {r['segmentation']}) | "
                  f"{number(b.get('rougeL_f'), '.1f')} | {r['rougeL_f']:.1f} |",
                  f"| {label} | exact answers (Rouge-L F = 1) | {_rate(b.get('exact'))} | {_rate(r['exact'])} |",
                  f"| {label} | stop rate (ended by a stop token before max_new_tokens) | "
                  f"{_rate(b.get('stop_rate'))} | {_rate(r['stop_rate'])} |",
                  f"| {label} | mean answer length (characters) | {number(b.get('answer_chars'), '.1f')} | "
                  f"{r['answer_chars']:.1f} |"]
    losses = metrics.get("qa_loss") or {}
    if "base" in losses and best in losses:
        lines.append(f"| {metrics.get('qa_task')} | answer loss per token (answer + EOT, {losses[best]['pairs']} "
                     f"pairs) | {losses['base']['loss']:.3f} | {losses[best]['loss']:.3f} |")
    lines.append("")
    if metrics.get("method", "sft") != "sft":
        from tunelab.pipeline.course_rewards import reward_section
        lines += reward_section(metrics)
    else:
        step0 = "the base model" if later else "the pretrained model, asked with the separator it never saw"
        lines += ["## Loss curves", "", "![fine-tuning loss and held-out answer loss](course.png)", "",
                  "Training loss: answer and EOT tokens of the training pairs (per logged window). Validation: the "
                  f"same loss on the held-out pairs at step 0 ({step0}) and at every checkpoint; the best checkpoint "
                  "is the lowest."]
    pre_png = Path(metrics["base_run"]) / "loss.png"
    if pre_png.is_file() and not later:
        rel = Path(os.path.relpath(pre_png.resolve(), Path(run_dir).resolve())).as_posix()
        lines += ["", f"Pretraining ({metrics['base_run']}): ![pretraining loss: training and validation]({rel})"]
    lines.append("")
    checkpoints = metrics.get("checkpoints") or {}
    names = list(dict.fromkeys([n for n in losses if n != "base"] + list(checkpoints)))
    labels = list(next(iter(checkpoints.values()))) if checkpoints else []
    if names:
        rows = []
        for name in ["base", *names]:
            res = base if name == "base" else checkpoints.get(name, {})
            title = f"{role} (step 0)" if name == "base" else best_title(name, best)
            rows.append(([title, number((losses.get(name) or {}).get("loss"), ".4f")],
                         [_course_cell(res.get(label)) for label in labels]))
        lines += checkpoint_table(["held-out answer loss"], labels, rows)
    for label in results_with(tuned, "stop_rate"):
        before = {s["id"]: s for s in (base.get(label) or {}).get("samples", [])}
        lines += [f"## Sample answers: {label}", "",
                  "■ the answer ended by itself (a stop token); … it was cut at max_new_tokens.", "",
                  f"| question | reference | {role} | {tuned_role} |", "|---|---|---|---|"]
        for sample in tuned[label].get("samples", []):
            lines.append(f"| {table_cell(sample['question'])} | {table_cell(sample['reference'])} | "
                         f"{_answer_cell(before.get(sample['id']))} | {_answer_cell(sample)} |")
        lines.append("")
    chat = (f"tunelab ui --model {metrics.get('method', 'sft')}={run_dir} --model {role}={metrics['base_run']}"
            if later else f"tunelab ui --model sft={run_dir} --model pretrained={metrics['base_run']}")
    lines += ["## Chat with both", "", "```bash", chat, "```", "",
              "Side by side, both answer after the separator and stop at EOT." if later else
              "Side by side, the fine-tuned model answers with its template and stops at EOT; the pretrained one "
              "continues the text.", "",
              "Recipe: `recipe.yaml` in this directory. Per-step log: `metrics.jsonl`; all numbers: `metrics.json`; "
              "every answer: `eval/*/*.predictions.jsonl`.", ""]
    return lines


def _course_cell(r: dict | None) -> str:
    if not r:
        return "–"
    if "stop_rate" in r:
        return f"Rouge-L {r['rougeL_f']:.1f}, exact {_rate(r['exact'])}, stop {_rate(r['stop_rate'])}"
    return task_cell(r)


def plot_course_curves(metrics_path: Path, qa_loss: dict, out_png: Path, title: str) -> Path | None:
    """The fine-tuning loss per logged window and the held-out answer loss at step 0 and every checkpoint."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows and not qa_loss:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if rows:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="training loss")
    points = sorted((v["step"], v["loss"]) for v in qa_loss.values())
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:green", marker="o", markersize=4,
                label="held-out answer loss (step 0: pretrained)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer/EOT token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: fine-tuning")
    from tunelab.train.plots import save_figure
    return save_figure(fig, out_png)


KIND = RunKind(owns_recipe=is_course_stage,
               owns_metrics=lambda metrics: bool(metrics.get("course")),
               measure=measure, summary_lines=summary_lines, report_sections=report_sections)
