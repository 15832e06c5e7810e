"""Evaluation over mixed tasks: `tunelab eval` vs a plain one-example-at-a-time loop.

A tiny Llama (preset `tiny`, random init, BPE tokenizer trained here on the data, alpaca template) is saved
as a HF directory. The data: ≥ 500 examples split evenly over four tasks, written as the files users have:

* arithmetic  competition JSONL (zh/en), generate + numeric grading
* squad       SQuAD v1.1 JSON built from the reading generator (zh/en), generate + EM/F1
* choice      JSONL questions with options A–D, **log-likelihood** of each option (the letters)
* cola        a CoLA TSV (no header) of short sentences and word-shuffled ones, generate + strict label parser

tunelab: `tunelab.cli.main(["eval", ...])`, one call per task (model load included), batched engine /
batched log-likelihood (each question's prompt runs once, its options from the KV cache). Baseline, what a Hugging Face user writes: for every generate example
`tokenizer(prompt)` + `model.generate(max_new_tokens, greedy)` one prompt at a time; for every choice
question one forward pass per option (log-softmax, sum over the option's tokens, argmax). Both sides use
the same prompts, tokenisation (no special tokens), grading code and weights; both sides load the model
once per task, and each task runs on both sides back to back (a change in background load hits both). Metrics and per-example
agreement are reported (random weights: near-tied logits can flip under another batch shape, so agreement
is reported, not asserted). Throughput is examples per second; the ratio is tunelab / baseline.

    python benchmarks/bench_eval_tasks.py [--per-task 130] [--batch-size 64] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, add_threads_option, load_average, logger, machine, start_torch, write_result
TASKS = ("arithmetic", "squad", "choice", "cola")
NOUNS = ["the dog", "the cat", "my friend", "the teacher", "a child", "the farmer", "our neighbour", "the pilot"]
VERBS = ["saw", "likes", "helped", "found", "painted", "called", "visited", "followed"]
OBJECTS = ["the house", "a red car", "the old man", "the river", "her sister", "a small bird", "the city"]

log = logger("bench_eval_tasks")


def write_data(root: Path, per_task: int, seed: int) -> tuple[dict[str, Path], list[str]]:
    """The four task files, and texts to train the tokenizer on."""
    from tunelab.data.synthetic import arithmetic, reading
    from tunelab.records import write_jsonl
    rng = random.Random(seed)
    files = {t: root / name for t, name in zip(TASKS, ("arith.jsonl", "dev-v1.1.json", "choice.jsonl", "dev.tsv"))}
    corpus: list[str] = []

    arith = arithmetic.generate(per_task, seed=seed, lang="mix")
    write_jsonl(files["arithmetic"], arith)
    corpus += [r["problem"] + " " + r["solution"] for r in arithmetic.generate(3000, seed=seed + 1, lang="mix")]

    paragraphs = []
    for i, r in enumerate(reading.generate(per_task, seed=seed + 2, lang="mix")):
        start = r["context"].find(r["answer"])
        paragraphs.append({"context": r["context"], "qas": [{"id": f"q{i}", "question": r["question"],
                                                              "answers": [{"text": r["answer"], "answer_start": start}]}]})
    files["squad"].write_text(json.dumps({"version": "1.1", "data": [{"title": "bench", "paragraphs": paragraphs}]},
                                         ensure_ascii=False), encoding="utf-8")
    corpus += [f"{r['context']} {r['question']} {r['answer']}" for r in reading.generate(1500, seed=seed + 3)]

    questions = []
    for i in range(per_task):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        options = [a + b, a + b + 1, a + b - 10, a + b + 10]
        rng.shuffle(options)
        q = f"计算 {a} + {b} 等于多少？" if i % 2 else f"What is {a} + {b}?"
        questions.append({"id": f"c{i}", "question": q, "choices": [str(o) for o in options],
                          "answer": options.index(a + b)})
    write_jsonl(files["choice"], questions)

    rows = []
    for i in range(per_task):
        words = f"{rng.choice(NOUNS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}".split()
        label = rng.random() < 0.7
        if not label:
            rng.shuffle(words)
        sentence = " ".join(words).capitalize() + "."
        rows.append(f"bench\t{int(label)}\t{'' if label else '*'}\t{sentence}")
        corpus.append(sentence)
    files["cola"].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return files, corpus


def build_model(d: Path, corpus: list[str], seed: int) -> None:
    import torch

    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.loading import build_from_scratch, load_tokenizer
    from tunelab.model.tokenizer import train_bpe_tokenizer
    template = PromptTemplate("alpaca")
    texts = corpus + [template.render("x")]
    train_bpe_tokenizer(texts, 2000).save_pretrained(d)
    tok = load_tokenizer(str(d))
    torch.manual_seed(seed)
    model = build_from_scratch("tiny", len(tok), {}, tok)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    save_template(template, d)


def run_tunelab(model_dir: Path, files: dict, out: Path, args, tasks=TASKS) -> dict:
    from tunelab.cli import main
    timings, results = {}, {}
    for task in tasks:
        argv = ["eval", "--model", str(model_dir), "--tasks", task, "--data", f"{task}={files[task]}",
                "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
                "--out", str(out / task), "--mode", "loglik" if task == "choice" else "generate"]
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the verb's own table; this script prints its own
            rc = main(argv)
        if rc != 0:
            raise SystemExit(f"tunelab eval failed for {task}")
        timings[task] = time.perf_counter() - t
        doc = json.loads((out / task / "results.json").read_text(encoding="utf-8"))
        results[task] = next(iter(doc["results"].values()))[task]
        preds = [json.loads(x) for x in (out / task / f"{task}.predictions.jsonl").read_text(encoding="utf-8")
                 .splitlines()]
        results[task]["_predictions"] = [p["pred"] if task == "choice" else p["prediction"] for p in preds]
        log(f"tunelab {task}: {len(preds)} examples in {timings[task]:.1f} s")
    return {"seconds": timings, "results": results}


def run_baseline(model_dir: Path, files: dict, args, tasks=TASKS, limit: int = 0) -> dict:
    """One prompt at a time with model.generate; one forward per option for choice."""
    import torch

    from tunelab.data.templates import load_template
    from tunelab.model.loading import load_for_inference
    from tunelab.tasks.registry import get_task
    t0 = time.perf_counter()
    model, tok = load_for_inference(str(model_dir))
    template = load_template(model_dir)
    load_s = time.perf_counter() - t0  # counted, like tunelab's model load per task
    timings, results = {}, {}
    for task_name in tasks:
        task = get_task(task_name)
        examples = task.load_examples(files[task_name])[:limit or None]
        t = time.perf_counter()
        graded = []
        with torch.inference_mode():
            for ex in examples:
                prompt = template.render(ex.instruction, ex.input)
                if task_name == "choice":
                    from tunelab.metrics.loglik import LoglikResult
                    results_ex = []
                    for _, cont in task.loglik_requests(ex, prompt):
                        ctx = tok(prompt, add_special_tokens=False)["input_ids"]
                        cid = tok(cont, add_special_tokens=False)["input_ids"]
                        logits = model(torch.tensor([ctx + cid])).logits[0].float()
                        lp = torch.log_softmax(logits, -1)
                        total = sum(lp[len(ctx) - 1 + j, c].item() for j, c in enumerate(cid))
                        results_ex.append(LoglikResult(total, False, len(cid)))
                    graded.append(task.grade_loglik(results_ex, ex))
                else:
                    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
                    out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                         use_cache=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    g = task.grade(text, ex)
                    g["_text"] = text
                    graded.append(g)
        timings[task_name] = time.perf_counter() - t + load_s
        summary = task.summarize(graded)
        summary["_predictions"] = [g["pred"] if task_name == "choice" else g["_text"] for g in graded]
        results[task_name] = summary
        log(f"baseline {task_name}: {len(examples)} examples in {timings[task_name]:.1f} s")
    return {"seconds": timings, "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-task", type=int, default=130, help="examples per task (4 tasks; default 520 in all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    add_threads_option(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "eval_tasks.json"))
    args = ap.parse_args()

    threads, load0 = start_torch(args.threads)
    log(f"torch threads {threads}; load average {load0}")

    with tempfile.TemporaryDirectory(prefix="bench_eval_tasks_") as tmp:
        root = Path(tmp)
        files, corpus = write_data(root, args.per_task, args.seed)
        model_dir = root / "model"
        build_model(model_dir, corpus, args.seed)
        n = {t: args.per_task for t in TASKS}
        log(f"{sum(n.values())} examples ({args.per_task} per task: {', '.join(TASKS)}); model {model_dir}")
        # warm-up (not timed): a few examples of a generate and a loglik task through both paths
        warm = root / "warm"
        warm.mkdir()
        from tunelab.cli import main as cli
        with contextlib.redirect_stdout(io.StringIO()):
            cli(["eval", "--model", str(model_dir), "--tasks", "cola,choice", "--data", f"cola={files['cola']}",
                 "--data", f"choice={files['choice']}", "--mode", "choice=loglik", "--limit", "8",
                 "--out", str(warm), "--max-new-tokens", "4"])
        run_baseline(model_dir, files, args, ("cola", "choice"), limit=8)
        ours, base = {"seconds": {}, "results": {}}, {"seconds": {}, "results": {}}
        for task in TASKS:  # interleaved per task, so a change in background load hits both alike
            for side, run in ((ours, lambda: run_tunelab(model_dir, files, root / "tunelab", args, (task,))),
                              (base, lambda: run_baseline(model_dir, files, args, (task,)))):
                r = run()
                side["seconds"].update(r["seconds"])
                side["results"].update(r["results"])

    total_ours, total_base = sum(ours["seconds"].values()), sum(base["seconds"].values())
    total_n = sum(n.values())
    print()
    print(f"Mixed evaluation, tiny Llama (random init), {total_n} examples, greedy {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {threads} thread(s)")
    print(f"{'task':<12}{'mode':<10}{'tunelab ex/s':>14}{'baseline ex/s':>15}{'ratio':>8}   metric (tunelab / baseline)"
          f"   agreement")
    per_task = {}
    for t in TASKS:
        r_ours, r_base = ours["results"][t], base["results"][t]
        primary = "f1" if t == "squad" else "accuracy"
        agree = sum(a == b for a, b in zip(r_ours["_predictions"], r_base["_predictions"])) / n[t]
        rate_o, rate_b = n[t] / ours["seconds"][t], n[t] / base["seconds"][t]
        per_task[t] = {"examples": n[t], "tunelab_s": ours["seconds"][t], "baseline_s": base["seconds"][t],
                       "tunelab_per_s": rate_o, "baseline_per_s": rate_b, "ratio": rate_o / rate_b,
                       "metric": primary, "tunelab_metric": r_ours[primary], "baseline_metric": r_base[primary],
                       "agreement": agree}
        mode = "loglik" if t == "choice" else "generate"
        print(f"{t:<12}{mode:<10}{rate_o:>14.1f}{rate_b:>15.1f}{rate_o / rate_b:>7.1f}x   "
              f"{primary} {r_ours[primary]:.3g} / {r_base[primary]:.3g}   {agree:.1%}")
    ratio = total_base / total_ours
    print(f"all {total_n} examples: tunelab {total_ours:.1f} s, one at a time {total_base:.1f} s -> {ratio:.1f}x")
    load1 = load_average()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (on {os.cpu_count()} cores)")
    out = {"benchmark": "eval_tasks", "examples": total_n, "per_task": per_task, "batch_size": args.batch_size,
           "max_new_tokens": args.max_new_tokens, "tunelab_seconds": total_ours, "baseline_seconds": total_base,
           "ratio": ratio,
           "machine": machine(threads, load0),
           "note": "both sides include one model load per task; ratio from one run on a shared machine"}
    write_result(args.out, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
