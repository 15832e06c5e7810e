"""Run evaluation sets over a model: batched generation, log-likelihood or perplexity scoring, grading, a
predictions JSONL per task and a metrics dict per task.

What to run comes from `tunelab.eval.sets` (a recipe's `eval:` section or `tunelab eval`'s flags); `tunelab
run` calls `evaluate_model_dir` for the base model and every checkpoint, `tunelab eval`
(`tunelab.eval.evaluate`) for a model, a checkpoint or a whole run.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from tunelab.data.examples import Example
from tunelab.data.templates import AUTO, PromptTemplate, load_template
from tunelab.decoding.engines import DecodingEngine
from tunelab.errors import TunelabError
from tunelab.eval.sets import EvalSet, Sampling
from tunelab.records import write_json, write_jsonl
from tunelab.tasks.registry import Task, get_task


def evaluate_examples(model, tokenizer, template: PromptTemplate, task: str | Task, examples: list[Example],
                      out_dir: Path, batch_size: int = 32, max_new_tokens: int = 32, desc: str = "",
                      label: str | None = None, mode: str | None = None, shots: list[Example] | tuple = (),
                      sampling: Sampling | None = None) -> dict:
    """Run one task in its mode, grade, write `<label>.predictions.jsonl`; returns the task's metrics
    (plus `mode` and `primary_metric`). `shots`: worked examples before every prompt, as earlier turns.
    `sampling`: k answers drawn a prompt besides the greedy one, each graded: pass@1…pass@k and maj@k join the
    metrics, the samples and their verdicts each prediction row."""
    task = get_task(task) if isinstance(task, str) else task
    label = label or task.name
    mode = task.resolve_mode(mode)
    desc = desc or label
    if mode == "generate":
        prompts = [task.prompt(ex, template, shots) for ex in examples]  # rendered once: greedy and samples
        max_new_tokens = getattr(task, "max_new_tokens", None) or max_new_tokens  # a task's own length wins
        graded, rows = _run_generate(model, tokenizer, task, examples, prompts, batch_size, max_new_tokens, desc)
        if sampling is not None:
            sampled = _run_samples(model, tokenizer, task, examples, prompts, batch_size, max_new_tokens, desc,
                                   sampling, rows)
    elif mode == "loglik":
        graded, rows = _run_loglik(model, tokenizer, template, task, examples, batch_size, desc, shots)
    elif mode == "perplexity":  # the task as it scored this model: the window and stride it used filled in
        graded, rows, task = _run_perplexity(model, tokenizer, task, examples, batch_size, desc)
    else:
        raise TunelabError(f"unknown mode '{mode}' (choose from generate, loglik)", field="mode")
    summary = task.summarize(graded)
    if mode == "generate" and sampling is not None:  # beside the greedy score, what k samples reach
        summary.update(sampled, sampled=sampling.samples, temperature=sampling.temperature, top_p=sampling.top_p)
    write_jsonl(out_dir / f"{label}.predictions.jsonl", rows)
    out = {**summary, "mode": mode, "primary_metric": task.primary_metric}
    if task.ability:  # what a retention verdict judges, read from the results alone (`tunelab.eval.retention`)
        out["retained_by"] = dict(task.retention_metrics)
    return out


def _run_generate(model, tokenizer, task, examples, prompts, batch_size, max_new_tokens, desc):
    completions = complete_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
    graded, rows = [], []
    for ex, c in zip(examples, completions):
        # why the answer ended ("stop": a stop token or string; "length": max_new_tokens), for a stop rate
        g = {**task.grade(c.text, ex), "finish_reason": c.finish_reason}
        graded.append(g)
        rows.append({"id": ex.id, "problem": ex.instruction, "prediction": c.text, "reference": ex.output, **g})
    return graded, rows


def _run_samples(model, tokenizer, task, examples, prompts, batch_size, max_new_tokens, desc, sampling: Sampling,
                 rows: list[dict]) -> dict:
    """k drawn answers a prompt, graded as the greedy one is; their texts and verdicts go into `rows` (the
    prediction rows), the measures over them are returned (`tunelab.metrics.sampled`)."""
    from tunelab.decoding.embedded import sample_batched
    from tunelab.metrics.sampled import sampled_metrics
    drawn = sample_batched(model, tokenizer, prompts, sampling.samples, sampling.temperature, sampling.top_p,
                           sampling.seed, max_new_tokens, batch_size, desc=f"{desc} ×{sampling.samples}")
    right, votes = [], []
    for ex, completions, row in zip(examples, drawn, rows):
        graded = [task.grade(c.text, ex) for c in completions]
        right.append([bool(g["correct"]) for g in graded])
        votes.append([_vote(g.get(task.vote)) for g in graded] if task.vote else None)
        row.update(samples=[c.text for c in completions], samples_correct=right[-1])
        if ex.input:  # the rest of the user turn: `tunelab data prefs --from-samples` rebuilds the prompt
            row["input"] = ex.input
    return sampled_metrics(right, votes if task.vote else None)


def _vote(answer):
    """An extracted answer as a vote: the task's own normalised form (arithmetic's value as one spelling), made
    hashable."""
    return answer if answer is None or isinstance(answer, (str, int, float)) else str(answer)


def _run_loglik(model, tokenizer, template, task, examples, batch_size, desc, shots=()):
    from tunelab.metrics.loglik import loglikelihood
    per_example = [task.loglik_requests(ex, task.prompt(ex, template, shots)) for ex in examples]
    flat = [req for reqs in per_example for req in reqs]
    scores = loglikelihood(model, tokenizer, flat, batch_size=batch_size, progress=True, desc=desc)
    graded, rows, pos = [], [], 0
    for ex, reqs in zip(examples, per_example):
        results = scores[pos: pos + len(reqs)]
        pos += len(reqs)
        g = task.grade_loglik(results, ex)
        graded.append(g)
        best = max(range(len(reqs)), key=lambda i: results[i].logprob)
        rows.append({"id": ex.id, "problem": ex.instruction, "prediction": reqs[best][1],
                     "reference": ex.output, "continuations": [c for _, c in reqs], **g})
    return graded, rows


def _run_perplexity(model, tokenizer, task, examples, batch_size, desc):
    """(graded, prediction rows, the task as it scored: `scored_with` the window and stride used, which its
    summary records; the task given is not changed)."""
    from tunelab.metrics.perplexity import score_token_ids
    ids = task.token_ids(examples, tokenizer)
    scores, window, stride = score_token_ids(
        model, tokenizer, ids, window=task.window, stride=task.stride, batch_size=batch_size,
        max_batch_tokens=int(task.max_batch_tokens), progress=True, desc=desc)
    task = task.scored_with(window, stride)
    graded, rows = [], []
    for ex, score, seq in zip(examples, scores, ids):
        g = task.grade_perplexity(score, ex, seq)
        graded.append(g)
        text = task.document(ex)
        rows.append({"id": ex.id, "where": ex.kind, "text": text[:200] + ("…" if len(text) > 200 else ""), **g})
    return graded, rows, task


def complete_batched_for(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
    from tunelab.decoding.embedded import complete_batched
    return complete_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            desc=desc)


def template_for(model_dir: str | Path, fallback: PromptTemplate | None = None, tokenizer=None) -> PromptTemplate:
    """The template saved with the model, else the fallback, else `auto` (the model's own chat template when it
    has one, else alpaca); resolved and bound to `tokenizer` when one is given."""
    template = load_template(model_dir) or fallback or PromptTemplate(AUTO)
    return template.resolve(tokenizer, model_dir) if tokenizer is not None else template


def load_model(model_dir: str | Path, device: str | None = None, precision: str = "auto"):
    """(model, tokenizer) of a full or adapter directory (merged for speed), loaded straight onto `device` in the
    precision the device policy gives (`model.device`): a GPU's own, never fp32 on the host unless asked."""
    from tunelab.model.device import inference_dtype, resolve_device
    from tunelab.model.loading import load_for_inference, quiet_transformers
    quiet_transformers()
    dev = resolve_device(device, field="eval.device")
    return load_for_inference(str(model_dir), dtype=inference_dtype(precision, dev), merge=True, device=dev)


def evaluate_model_dir(model_dir: str | Path, sets: dict[str, EvalSet], out_dir: Path,
                       batch_size: int, max_new_tokens: int, template: PromptTemplate | None = None,
                       label: str = "", write_results: bool = True, device: str | None = None,
                       precision: str = "auto", models=None) -> dict:
    """Run every set on one model (full or adapter) on `device`; {label: metrics}. `models` is the pass's
    `tunelab.eval.resident` source (a base kept on a GPU across checkpoints); by default one for this call.

    With `write_results`, `out_dir/results.json` is removed first and written last, so its presence means
    the evaluation is complete.
    """
    from tunelab.eval.resident import model_source
    if write_results:
        (Path(out_dir) / "results.json").unlink(missing_ok=True)
    results = {}
    source = models or model_source(device, precision)
    with source.open(model_dir) as (model, tokenizer), ExitStack() as scorers:
        tmpl = template_for(model_dir, template, tokenizer)
        scorer = None
        for name, es in sets.items():
            m, tok = model, tokenizer
            if isinstance(model, DecodingEngine) and scores_prompts(es):  # a remote engine generates only
                scorer = scorer or scorers.enter_context(source.open_scorer(model_dir))
                m, tok = scorer
            examples = es.examples
            if es.task.answers_from_base:
                examples = _with_base_answers(es, model_dir, m, tok, tmpl, batch_size, device, precision)
            results[name] = evaluate_examples(m, tok, tmpl, es.task, examples, out_dir, batch_size,
                                              max_new_tokens, desc=f"{label} {name}".strip(), label=name,
                                              mode=es.mode, shots=es.shots, sampling=es.sampling)
    if write_results:
        write_json(Path(out_dir) / "results.json", results)
    return results


def scores_prompts(es: EvalSet) -> bool:
    """Whether a set scores prompts (log-likelihood, perplexity) or needs a base's own answers: work for a
    model in this process, whichever engine generates (`tunelab.eval.vllm_models`)."""
    return es.task.answers_from_base or es.task.resolve_mode(es.mode) in ("loglik", "perplexity")


def _with_base_answers(es: EvalSet, model_dir, model, tokenizer, template, batch_size, device, precision):
    """The set's prompts with the base's own answers (`tunelab.eval.base_answers`): the base is the task's `base`
    setting, else the evaluated model's base; it is loaded only when its answers are not cached and it is not the
    model open here."""
    from tunelab.eval.base_answers import base_answers, default_base
    base = es.task.base or default_base(model_dir)
    same = Path(base).resolve() == Path(model_dir).resolve() if Path(base).exists() else str(base) == str(model_dir)
    return base_answers(base, es.examples, template, es.task.max_answer_tokens, batch_size,
                        model=model if same else None, tokenizer=tokenizer if same else None, device=device,
                        precision=precision, desc=f"{es.task.name}: the base's answers")


def answer_loss(model_dir, template, examples: list, batch_size: int, device: str | None = None,
                precision: str = "auto") -> dict:
    """The fine-tuning loss on held-out pairs: mean NLL per token of answer + EOS after the rendered question,
    exactly the positions the trainer scores (`data.packing.encode_examples`), accumulated in float32."""
    from tunelab.metrics.loglik import loglikelihood
    model, tokenizer = load_model(model_dir, device, precision)
    template = template_for(model_dir, template, tokenizer)
    requests = [(template.render(ex.instruction, ex.input), ex.output + tokenizer.eos_token) for ex in examples]
    results = loglikelihood(model, tokenizer, requests, batch_size=batch_size)
    tokens = sum(r.tokens for r in results)
    return {"loss": -sum(r.logprob for r in results) / max(1, tokens), "tokens": tokens, "pairs": len(results)}
