"""GPU acceptance: each shipped GPU recipe for a few steps on this machine's GPUs, and what was measured.

tunelab's GPU behaviour is proven by CPU tests of its logic; this script is the run on real hardware. For each
recipe (recipes/llama3-8b-math-lora, gemma-2b-glue-lora, minigpt-pretrain, minigpt-sft, internlm-7b-choice) it
trains `--steps` optimizer steps on one GPU and evaluates the last checkpoint on ~64 prompts, then writes one row:

  GPU name and count; peak memory of the training (torch.cuda.max_memory_allocated / max_memory_reserved, reset
  before it) next to `tunelab plan`'s estimate for this card (`plan_memory(recipe, card memory, 1).total`) and
  their ratio; tokens/s and MFU (medians of the logged steps after the first; MFU against the matmul peak the
  run measured at start, or train.peak_tflops if you --set it); eval prompts/s (model load excluded).

With 2 or more GPUs it also checks that DDP and FSDP (`train.strategy: fsdp`) train as one process does: the
shipped models/tiny-base, LoRA with dropout 0 (each rank draws its own masks), fp32, 10 steps under
`torch.distributed.run --nproc_per_node 2` with the per-rank micro-batch halved, against one process: the
largest relative difference of the logged losses (the CPU tests hold it within 1e-5; tests/test_resume_ddp.py,
tests/test_fsdp.py).

vLLM against the embedded engine: after the recipes, the first LoRA recipe that trained (llama3-8b-math-lora
unless --recipes leaves it out) has its run's checkpoints evaluated twice on its eval tasks, as `tunelab eval RUN`
evaluates them: by the embedded engine, then by vLLM (`--engine vllm`: one server, the base loaded once, each
checkpoint's adapter loaded by name; vLLM's own GPU defaults). The table gives each engine's wall seconds (vLLM's
server start included, and on its own), their ratio, each task's score under both with the largest difference in
points, and the share of greedy predictions that are identical. The interpreter is found as tunelab finds it
($TUNELAB_VLLM_PYTHON, vLLM in this interpreter, .venv-vllm/bin/python), or named with `--vllm-python`; without
one the step is reported as skipped, with why. `--no-vllm` skips it.

The recipes' data files (the competition's train.json, CoLA, a wiki dump) need not exist: every recipe trains and
evaluates on generated stand-ins of the same shape (same template, max_seq_len, packing, batch settings and
eval tasks): generated arithmetic (and reading questions for SQuAD), generated CoLA-style sentences, a corpus of
generated encyclopedia articles with a BPE trained on them (fewer merges than a wiki dump gives: a smaller
embedding than the real run's), and those articles' QA pairs. The models are the recipes' own (`model.path`: a
hub id, so network or a Hugging Face cache), or a local directory given with `--model RECIPE=DIR`. minigpt-sft
starts from a pretraining run that does not exist here: it builds the same architecture (minigpt-124m) from
scratch on the generated corpus's tokenizer, and the table says so (`--model minigpt-sft=DIR` takes a MiniGPT
model directory instead; its tokenizer then cuts the stand-in corpus). internlm-7b-choice trains on generated
choice questions (reading questions for SQuAD) from the organisers' .ckpt its recipe names (models/, converted into
the cache on first use), or from an HF directory given with `--model internlm-7b-choice=DIR`.

One GPU or eight, the same command: each recipe trains in one process on GPU 0 (choose another card with
CUDA_VISIBLE_DEVICES), and with 2 or more GPUs the DDP/FSDP check uses 2 of them:

    python benchmarks/gpu_acceptance.py
    python benchmarks/gpu_acceptance.py --model llama3-8b-math-lora=/models/Meta-Llama-3-8B \\
        --model gemma-2b-glue-lora=/models/gemma-2b --recipes llama3-8b-math-lora,gemma-2b-glue-lora

No GPU, the same code on the CPU:

    python benchmarks/gpu_acceptance.py --dry-run [--distributed]

`--dry-run` runs the same code path on the CPU with tiny stand-ins (models/tiny-base for the LoRA recipes, the
`micro` preset from scratch for MiniGPT; 2 steps, micro-batch 2, 8 eval prompts): memory columns read
"n/a (CPU)" and the plan is computed against a nominal 24 GiB card. The vLLM comparison runs vLLM's CPU build
(gpu_memory_utilization 0.1: the share of host memory it reserves), its figures marked as this CPU's.
`--distributed` adds the DDP/FSDP check on 2 CPU processes (gloo). No GPU figure is ever printed that was not
measured on a GPU in this run.

Output: a markdown table on stdout and in OUT/gpu_acceptance.md, everything in OUT/gpu_acceptance.json, runs in
OUT/runs/, generated data in OUT/data/ (default OUT: benchmarks/results/gpu_acceptance). `--set KEY=VALUE` goes
to every recipe (after the stand-ins), e.g. `--set train.gradient_checkpointing=false`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from common import HERE, add_threads_option, logger, machine, start_torch, tunelab_source, write_result

ROOT = HERE.parent
RECIPES = ("llama3-8b-math-lora", "gemma-2b-glue-lora", "minigpt-pretrain", "minigpt-sft", "internlm-7b-choice")
TINY_BASE = ROOT / "models" / "tiny-base"
GiB = 2 ** 30
NOMINAL_GPU = 24 * GiB        # the card the dry run plans for
CPU_BOUND = 1e-5              # DDP/FSDP vs one process, relative loss difference the CPU tests hold
NA_CPU = "n/a (CPU)"

log = logger("gpu_acceptance")


# --- stand-in data ---------------------------------------------------------------------------------

def cola_standin(path: Path, count: int, seed: int) -> Path:
    """A CoLA-shaped pre_data file (alpaca records, CoLA's instruction, label "1"/"0"): simple sentences, and the
    same words shuffled as the unacceptable half."""
    from tunelab.data.glue import INSTRUCTIONS
    from tunelab.records import write_json
    rng = random.Random(seed)
    subjects = ["the cat", "a student", "my neighbour", "the committee", "every child", "the old sailor"]
    verbs = ["saw", "praised", "followed", "wrote to", "ignored", "thanked"]
    objects = ["the dog", "her teacher", "the mayor", "a stranger", "the whole class", "his brother"]
    endings = ["yesterday", "at noon", "in the garden", "twice", "before dinner", ""]
    records = []
    for _ in range(count):
        words = " ".join([rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(endings)]).split()
        label = rng.random() < 0.5
        if not label:
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            words = shuffled
        sentence = " ".join(words)
        records.append({"instruction": INSTRUCTIONS["CoLA"], "input": sentence[0].upper() + sentence[1:] + ".",
                        "output": "1" if label else "0"})
    write_json(path, records)
    return path


def minigpt_corpus(data: Path, dry: bool, tokenizer: str | None) -> dict:
    """The stand-in for MiniGPT's wiki corpus: generated encyclopedia articles, a BPE trained on them (or the
    given model's tokenizer), sentence-aligned blocks, and the articles' QA pairs split as `tunelab data qa-split`
    splits them. Built once per output directory; returns the `build` section the pretraining recipe gets."""
    from tunelab.data.corpus.store import is_corpus_dir
    from tunelab.data.synthetic.qa_split import split_qa_by_corpus
    from tunelab.pipeline.build_corpus import build_corpus
    from tunelab.recipe import CorpusBuild
    shipped = yaml_recipe("minigpt-pretrain")["data"]["train"][0]["build"]
    build = {"encyclopedia": {"out": str(data / "articles"), "count": 80 if dry else 2000, "seed": 0},
             "tokenizer": tokenizer or {"out": str(data / "tokenizer"),
                                        "vocab_size": 400 if dry else shipped["tokenizer"]["vocab_size"]},
             "block_size": 128 if dry else shipped["block_size"], "val_fraction": 0.1 if dry else 0.05}
    if not is_corpus_dir(data / "corpus"):
        log(f"building the generated MiniGPT corpus in {data}")
        build_corpus(str(data / "corpus"), CorpusBuild.model_validate(build))
    if not (data / "sft-qa" / "summary.json").is_file():
        split_qa_by_corpus([data / "articles" / "qa.jsonl"], data / "corpus", data / "sft-qa")
    return build


def vocabulary(tokenizer_dir: Path) -> int:
    """Entries of a trained tokenizer.json (the generated articles give fewer merges than a wiki dump)."""
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    return len(vocab) + sum(1 for t in tok.get("added_tokens", []) if t["content"] not in vocab)


# --- the recipes with their stand-ins ----------------------------------------------------------------

def yaml_recipe(name: str) -> dict:
    import yaml
    return yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"))


def standin(name: str, args, data: Path) -> tuple[dict, str, str]:
    """(overrides {dotted key: value}, model shown in the table, data shown in the table) that turn the shipped
    recipe into the acceptance run. The eval entries keep their task, name, mode and options; their source is
    replaced and the total cut to --eval-prompts."""
    raw = yaml_recipe(name)
    dry, steps = args.dry_run, args.steps
    tasks = raw["eval"]["tasks"]
    per_task = max(1, args.eval_prompts // len(tasks))
    sets: dict = {}
    given = args.models.get(name)
    model_shown = given or raw["model"].get("path")
    if name == "llama3-8b-math-lora":
        count = max(200, steps * 64 * 8)  # 8 x 8 rows a step, 4-5 problems a packed row
        sets["data.train"] = [{"generate": "arithmetic", "count": count, "seed": 42}]
        sources = {"arithmetic": {"generate": "arithmetic", "count": per_task, "seed": 1001},
                   "squad": {"generate": "reading", "count": per_task, "seed": 1002}}
        data_shown = "generated arithmetic; reading questions as SQuAD"
    elif name == "gemma-2b-glue-lora":
        train = cola_standin(data / "cola" / "CoLA_train.json", max(200, steps * 16 * 6), seed=42)
        val = cola_standin(data / "cola" / "CoLA_val.json", per_task, seed=43)
        sets["data.train"] = [{"path": str(train), "format": "alpaca"}]
        sources = {"cola": {"path": str(val)}}
        data_shown = "generated CoLA-style sentences"
    elif name == "minigpt-pretrain":
        build = minigpt_corpus(data / "minigpt", dry, None)
        corpus = str(data / "minigpt" / "corpus")
        sets["data.train"] = [{"corpus": corpus, "build": build}]
        sources = {"ppl": {"corpus": corpus}, "continuation": {"corpus": corpus}}
        data_shown = f"generated encyclopedia articles (BPE of {vocabulary(data / 'minigpt' / 'tokenizer'):,})"
        model_shown = f"{raw['model']['preset']} from scratch"
        if dry:
            sets["model.preset"] = "micro"
            model_shown = f"micro from scratch (stand-in for {raw['model']['preset']})"
    elif name == "internlm-7b-choice":
        count = max(200, steps * 64 * 3)  # 64 rows a step, ~3 questions a packed 512-token row
        sets["data.train"] = [{"generate": "choice", "count": count, "seed": 31, "shuffle_options": True}]
        sources = {"choice": {"generate": "choice", "count": per_task, "seed": 1001},
                   "squad": {"generate": "reading", "count": per_task, "seed": 1002}}
        data_shown = "generated choice questions; reading questions as SQuAD"
        # the recipe's model is the organisers' .ckpt with its YAML and tokenizer: a directory replaces all three
        if given or dry:
            sets["model"] = {"path": given or str(TINY_BASE), "dtype": raw["model"]["dtype"]}
            given = None  # set whole above, not as model.path
            if dry:
                model_shown = f"models/tiny-base (stand-in for {model_shown})"
    else:  # minigpt-sft: the articles' QA pairs, the corpus replayed; the base model built from scratch
        folder = data / ("minigpt-sft-model" if given else "minigpt")
        minigpt_corpus(folder, dry, given)
        corpus = str(folder / "corpus")
        replay = raw["data"]["train"][1]["replay"]
        sets["data.train"] = [{"path": str(folder / "sft-qa" / "train.jsonl")}, {"corpus": corpus, "replay": replay}]
        sources = {"ppl": {"corpus": corpus}, "rougel": {"path": str(folder / "sft-qa" / "val.jsonl")}}
        data_shown = "generated encyclopedia QA pairs + corpus replay"
        if not given:
            preset = "micro" if dry else "minigpt-124m"
            sets["model"] = {"preset": preset, "from_scratch": True, "tokenizer": str(folder / "tokenizer")}
            model_shown = f"{preset} from scratch (stand-in for {raw['model']['path']})"
            data_shown += f" (BPE of {vocabulary(folder / 'tokenizer'):,})"
    sets["eval.tasks"] = [{**t, "source": sources[t["task"]], "limit": per_task} for t in tasks]
    if given:
        sets["model.path"] = given
    if dry:
        if name.startswith("minigpt"):
            sets["data.max_seq_len"] = 256  # the micro preset's positions: 512
        elif not given and "model" not in sets:
            sets["model.path"] = str(TINY_BASE)
            model_shown = f"models/tiny-base (stand-in for {model_shown})"
        sets.update({"train.device": "cpu", "eval.device": "cpu", "train.batch_size": 2, "train.grad_accum": 1,
                     "eval.max_new_tokens": min(32, raw["eval"].get("max_new_tokens", 32))})
        if args.threads:
            sets["train.threads"] = args.threads
    sets.update({"output_dir": str(args.out / "runs"), "train.max_steps": steps, "train.num_checkpoints": 1,
                 "train.log_every": 1, "eval.baseline": False})
    return sets, model_shown, data_shown


def as_set_flags(overrides: dict) -> list[str]:
    """The overrides as `--set` arguments: what a user would type to run the same thing with `tunelab train`."""
    return [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in overrides.items()]


# --- one recipe ------------------------------------------------------------------------------------

def run_recipe(name: str, args, gpu: dict | None) -> dict:
    import torch

    from tunelab.data.templates import PromptTemplate
    from tunelab.eval.runner import evaluate_examples, load_model, template_for
    from tunelab.eval.sets import eval_sets
    from tunelab.pipeline import prepare_inputs
    from tunelab.pipeline.evaluation import eval_placement
    from tunelab.recipe import load_recipe
    from tunelab.runs import list_checkpoints, model_dir_of
    from tunelab.train.loop import train
    from tunelab.train.plan.estimate import plan_memory
    from tunelab.train.plan.report import plan_to_json

    overrides, model_shown, data_shown = standin(name, args, args.out / "data")
    flags = as_set_flags(overrides) + args.set
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", flags)
    shutil.rmtree(recipe.run_dir, ignore_errors=True)  # this script's own output of an earlier invocation
    prepare_inputs(recipe)
    sets = eval_sets(recipe.eval)  # an eval mistake is found before training

    card = gpu["memory"] if gpu else NOMINAL_GPU
    plan = plan_memory(recipe, card, 1)
    log(f"{name}: plan {plan.total / GiB:.2f} GiB of {card / GiB:.0f} GiB; training {recipe.train.max_steps} steps")

    if gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(0)
    summary = train(recipe)
    peak = None
    if gpu:
        peak = {"allocated": torch.cuda.max_memory_allocated(0), "reserved": torch.cuda.max_memory_reserved(0)}
        gc.collect()
        torch.cuda.empty_cache()
    log(f"{name}: {summary['steps']} steps, loss {summary['final_loss']:.4f}, "
        f"{summary['tokens_per_s']:,.0f} tok/s" + (f", peak reserved {peak['reserved'] / GiB:.2f} GiB" if peak else ""))

    # the last checkpoint evaluated as `tunelab run` evaluates it (`evaluate_model_dir`'s steps, the load timed apart)
    model_dir = model_dir_of(list_checkpoints(recipe.run_dir)[-1])
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_dir, **eval_placement(recipe))
    load_s = time.perf_counter() - t0
    template = template_for(model_dir, PromptTemplate(recipe.data.template, recipe.data.instruction_prefix,
                                                      recipe.data.cot))
    per_set = {}
    for label, es in sets.items():
        t = time.perf_counter()
        metrics = evaluate_examples(model, tokenizer, template, es.task, es.examples,
                                    recipe.run_dir / "acceptance-eval", recipe.eval.batch_size,
                                    recipe.eval.max_new_tokens, label=label, mode=es.mode)
        per_set[label] = {"mode": es.mode, "prompts": len(es.examples), "seconds": time.perf_counter() - t,
                          "primary": metrics.get(metrics["primary_metric"])}
    del model, tokenizer
    if gpu:
        gc.collect()
        torch.cuda.empty_cache()
    prompts, seconds = sum(s["prompts"] for s in per_set.values()), sum(s["seconds"] for s in per_set.values())
    log(f"{name}: eval {prompts} prompts in {seconds:.1f}s (+{load_s:.1f}s model load)")
    keep = ("steps", "final_loss", "tokens_per_s", "mfu", "precision", "world_size", "train_seconds",
            "trainable_params", "total_params", "peak_tflops", "hardware", "padding_pct")
    return {"recipe": name, "model": model_shown, "data": data_shown, "set": flags,
            "train": {k: summary.get(k) for k in keep}, "peak_memory": peak, "plan": plan_to_json(plan),
            "plan_total": plan.total, "plan_card": card,
            "eval": {"prompts": prompts, "seconds": seconds, "prompts_per_s": prompts / seconds if seconds else None,
                     "model_load_seconds": load_s, "sets": per_set}}


# --- DDP / FSDP against one process ---------------------------------------------------------------

def distributed_check(args, out: Path) -> list[dict]:
    """DDP and FSDP on 2 processes against one process, same rows per optimizer step: max relative loss difference."""
    import yaml

    from tunelab.recipe import load_recipe
    from tunelab.train.loop import train
    from tunelab.train.plots import read_metrics
    shutil.rmtree(out, ignore_errors=True)
    steps = args.dist_steps

    def write(name: str, batch_size: int, strategy: str = "ddp") -> Path:
        raw = {"name": name, "seed": 0, "output_dir": str(out / "runs"), "model": {"path": str(TINY_BASE)},
               "data": {"template": "alpaca", "max_seq_len": 128, "packing": True,
                        "train": [{"generate": "arithmetic", "count": 400, "seed": 5,
                                   "options": {"kinds": ["int_mul"], "int_digits": 2}}]},
               "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},  # each rank draws its own dropout masks
               "train": {"max_steps": steps, "batch_size": batch_size, "grad_accum": 2, "lr": 1e-2,
                         "precision": "fp32", "log_every": 1, "num_checkpoints": 1, "strategy": strategy,
                         **({"device": "cpu", "threads": 1} if args.dry_run else {})},
               "eval": {"baseline": False}}
        path = out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path

    def losses(path: Path) -> dict[int, float]:
        run_dir = load_recipe(path).run_dir
        return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}

    log(f"distributed check: one process, {steps} steps")
    one = write("one-process", 4)
    train(load_recipe(one))
    want = losses(one)
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.dry_run else dict(os.environ)
    rows = []
    for strategy in ("ddp", "fsdp"):
        path = write(strategy, 2, strategy)
        log(f"distributed check: {strategy} on 2 processes")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tunelab.cli", "train", str(path)]
        with open(out / f"{strategy}.log", "w", encoding="utf-8") as f:
            rc = subprocess.run(cmd, cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        row = {"strategy": strategy, "steps": steps, "log": str(out / f"{strategy}.log")}
        if rc != 0:
            row["error"] = f"exit {rc}; see {row['log']}"
        else:
            summary = json.loads((load_recipe(path).run_dir / "train_summary.json").read_text(encoding="utf-8"))
            row.update(processes=summary["world_size"], hardware=summary["hardware"])
            got = losses(path)
            if sorted(got) != sorted(want):
                row["error"] = f"logged steps differ: {sorted(got)} vs {sorted(want)}"
            else:
                row["max_rel_loss_diff"] = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
        log(f"distributed check: {strategy}: " + (row.get("error") or f"max relative loss difference "
                                                   f"{row['max_rel_loss_diff']:.2e}"))
        rows.append(row)
    return rows


# --- the embedded engine against vLLM -------------------------------------------------------------

def vllm_interpreter(args) -> tuple[str | None, str | None]:
    """(the interpreter vLLM's server starts from, None) or (None, why the vLLM comparison is skipped); asked
    before any training, so a missing vLLM is said at the start, not after the recipes."""
    from tunelab.decoding.vllm_server import find_vllm_python
    from tunelab.errors import TunelabError
    if args.no_vllm:
        return None, "--no-vllm"
    try:
        return find_vllm_python(args.vllm_python, ROOT), None
    except TunelabError as e:  # its field (engine.python, engine.kind) is not what was typed here
        return None, e.message.strip().splitlines()[0]


class ServerStart(logging.Handler):
    """Seconds from vLLM's server process started to its first answer on /health, read from the two records
    `tunelab.decoding.vllm_server.VLLMServer.start` logs; None when no server was started (or they change)."""

    LOGGER = "tunelab.decoding.vllm_server"

    def __init__(self):
        super().__init__(logging.INFO)
        self.started = self.ready = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("starting vLLM's server"):
            self.started = record.created
        elif message.startswith("vLLM's server is ready"):
            self.ready = record.created

    def __enter__(self) -> "ServerStart":
        logger = logging.getLogger(self.LOGGER)
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)

    @property
    def seconds(self) -> float | None:
        return self.ready - self.started if self.started and self.ready else None


def in_points(metric: str, value: float) -> float:
    """A task's headline on a 0-100 scale: accuracy and ROUGE-L are fractions, SQuAD's F1/EM and base_agreement's
    agreement already percentages (perplexity is no score of 100 and stays as it is)."""
    return 100 * value if metric in ("accuracy", "rougeL_f") or metric.endswith("_acc") else value


def predictions(path: Path) -> list[tuple[str, str]]:
    """(id, prediction) of each row of a `<task>.predictions.jsonl`, in file order."""
    from tunelab.records import iter_records
    return [(str(r["id"]), r["prediction"]) for _, r in iter_records(path)]


def vllm_step(recipes: list[dict], args, gpu: dict | None, python: str | None, why_not: str | None) -> dict:
    """The vLLM comparison's entry in the result: its figures, {"skipped": why}, or {"error": ...}. It runs on
    the first recipe that trained a LoRA adapter (their runs are still in OUT/runs)."""
    if why_not:
        return {"skipped": why_not}
    name = None
    try:
        from tunelab.decoding.vllm_engine import unservable
        from tunelab.recipe import load_recipe
        from tunelab.runs import list_checkpoints, model_dir_of
        for r in recipes:
            if "error" in r:
                continue
            name = r["recipe"]
            recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", r["set"])
            if not recipe.lora.enabled:
                continue
            model_dir = model_dir_of(list_checkpoints(recipe.run_dir)[-1])
            why = unservable(model_dir, recipe.engine.max_lora_rank) if model_dir.name == "adapter" else None
            if why:
                return {"recipe": name, "skipped": f"{name}'s adapter: {why}"}
            log(f"vLLM comparison: {name}'s run, embedded engine then vLLM")
            return compare_engines(name, recipe, args, gpu, python)
    except Exception as e:  # noqa: BLE001 - a failed comparison is a line of the report, the rest still runs
        log(f"vLLM comparison failed: {one_line(e)}")
        return {"recipe": name, "error": one_line(e), "traceback": traceback.format_exc()}
    return {"skipped": "no LoRA recipe trained in this run (vLLM serves a checkpoint's adapter on its base)"}


def compare_engines(name: str, recipe, args, gpu: dict | None, python: str) -> dict:
    """`name`'s run evaluated by the embedded engine, then by vLLM, through `tunelab eval`'s own function
    (`tunelab.eval.evaluate.evaluate`: the same tasks, the same prompts, each engine's results in OUT/vllm/<engine>):
    wall seconds, scores, and the greedy predictions compared row by row. Tasks that score prompts (log-likelihood,
    perplexity) run on the embedded engine under both (`tunelab.eval.vllm_models`): they are marked, and left out
    of the identical share."""
    import torch

    from tunelab.eval.evaluate import evaluate
    from tunelab.eval.runner import scores_prompts
    from tunelab.eval.sets import eval_sets
    from tunelab.pipeline.evaluation import eval_placement
    from tunelab.recipe.engine import EngineConfig

    out = args.out / "vllm"
    shutil.rmtree(out, ignore_errors=True)
    config = recipe.eval.model_copy(update={"device": eval_placement(recipe)["device"]})
    sets = eval_sets(config)
    # the recipe's engine section as --set gave it (max_lora_rank, extra_args…), vLLM's GPU defaults on a GPU
    engine = EngineConfig.model_validate({**recipe.engine.model_dump(), "kind": "vllm", "python": python,
                                          **({"gpu_memory_utilization": 0.1} if args.dry_run else {})})
    docs, seconds = {}, {}
    with ServerStart() as start:
        for kind in ("embedded", "vllm"):
            if gpu:
                gc.collect()
                torch.cuda.empty_cache()
            t0 = time.perf_counter()
            docs[kind], _ = evaluate(recipe.run_dir, config, out / kind, engine=engine if kind == "vllm" else None)
            seconds[kind] = time.perf_counter() - t0
            log(f"vLLM comparison: {kind} {seconds[kind]:.1f}s")

    tasks, same, compared = {}, 0, 0
    checkpoints = list(docs["embedded"]["results"])
    for ckpt in checkpoints:
        for label, es in sets.items():
            ours, theirs = docs["embedded"]["results"][ckpt][label], docs["vllm"]["results"][ckpt][label]
            metric = ours["primary_metric"]
            key = label if len(checkpoints) == 1 else f"{ckpt} {label}"
            row = {"checkpoint": ckpt, "task": label, "mode": ours["mode"], "metric": metric,
                   "embedded": in_points(metric, ours[metric]), "vllm": in_points(metric, theirs[metric]),
                   "generated_by_vllm": not scores_prompts(es)}
            row["difference_points"] = row["vllm"] - row["embedded"]
            if row["generated_by_vllm"]:
                a = predictions(out / "embedded" / ckpt / f"{label}.predictions.jsonl")
                b = predictions(out / "vllm" / ckpt / f"{label}.predictions.jsonl")
                if [i for i, _ in a] != [i for i, _ in b]:
                    raise RuntimeError(f"{ckpt} {label}: the two engines' prediction rows are not the same examples")
                row.update(identical=sum(x == y for (_, x), (_, y) in zip(a, b)), compared=len(a))
                same, compared = same + row["identical"], compared + row["compared"]
            tasks[key] = row
    vllm_s, start_s = seconds["vllm"], start.seconds
    return {"recipe": name, "run": str(recipe.run_dir), "checkpoints": checkpoints, "out": str(out),
            "vllm_log": str(out / "vllm" / "vllm.log"),
            "measured_on": gpu["name"] if gpu else "cpu (dry run): vLLM's CPU build, not GPU figures",
            "python": python, "gpu_memory_utilization": engine.gpu_memory_utilization,
            "prompts": sum(len(es.examples) for es in sets.values()),
            "seconds": seconds, "vllm_server_start_seconds": start_s,
            "ratio_embedded_over_vllm": seconds["embedded"] / vllm_s,
            "ratio_without_server_start": seconds["embedded"] / (vllm_s - start_s) if start_s else None,
            "tasks": tasks, "max_score_difference_points": max(abs(t["difference_points"]) for t in tasks.values()),
            "identical": same, "compared": compared, "identical_share": same / compared if compared else None}


# --- the table -------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    gpu, dry = result["gpu"], result["dry_run"]
    lines = [f"# GPU acceptance ({result['date']})", ""]
    if dry:
        lines += [("**dry run (CPU): no GPU figures.** Memory is not measured on the CPU; the plan is for a "
                   "nominal 24 GiB card; tokens/s, MFU, prompts/s and the vLLM comparison's seconds are this "
                   "CPU's."), ""]
    else:
        lines += [(f"GPUs: {gpu['count']} x {gpu['name']} ({gpu['memory'] / GiB:.1f} GiB each); each recipe ran "
                   "in one process on GPU 0. Peak memory: torch.cuda.max_memory_* over the training; the plan "
                   "(`tunelab plan`) includes ~0.5 GiB of CUDA context that the allocator does not see."), ""]
    lines += [("| recipe | model | trained on | steps | peak allocated GiB | peak reserved GiB | plan GiB | "
               "reserved / plan | tokens/s | MFU | precision | eval prompts | eval prompts/s |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["recipes"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r.get('model', '')} | | failed: {r['error']} |" + " |" * 9)
            continue
        t, peak, ev = r["train"], r["peak_memory"], r["eval"]
        plan = f"{r['plan_total'] / GiB:.2f}" + (" (of 24 nominal)" if dry else "")
        if peak:
            alloc, reserved = f"{peak['allocated'] / GiB:.2f}", f"{peak['reserved'] / GiB:.2f}"
            ratio = f"{peak['reserved'] / r['plan_total']:.2f}"
        else:
            alloc = reserved = ratio = NA_CPU
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "–"
        pps = f"{ev['prompts_per_s']:.1f}" if ev["prompts_per_s"] else "–"
        where = t["hardware"] + ("" if dry else f" (1 of {gpu['count']})")
        lines.append(f"| {r['recipe']} | {r['model']} | {where} | {t['steps']} | {alloc} | {reserved} | {plan} | "
                     f"{ratio} | {t['tokens_per_s']:,.0f} | {mfu} | {t['precision']} | {ev['prompts']} | {pps} |")
    lines += ["", "Data (generated stand-ins of the recipes' shape): "
              + "; ".join(f"{r['recipe']}: {r['data']}" for r in result["recipes"] if "data" in r) + "."]
    lines += ["", *vllm_markdown(result["vllm"], gpu)]
    dist = result["distributed"]
    lines.append("")
    if isinstance(dist, str):
        lines.append(f"DDP/FSDP vs one process: {dist}.")
    else:
        tf32 = "" if dry else ("; on CUDA, fp32 matmuls run in TF32 (model/device.py), so a difference above the "
                               "CPU tests' bound is not by itself a failure")
        heading = f"DDP/FSDP vs one process (models/tiny-base, LoRA dropout 0, fp32, per-rank batch halved{tf32}):"
        header = "| strategy | trained on | steps | max relative loss difference | within 1e-5 (the CPU tests' bound) |"
        lines += [heading, "", header, "|---|---|---|---|---|"]
        for d in dist:
            if "error" in d:
                diff, ok = f"failed: {d['error']}", "no"
            else:
                diff, ok = f"{d['max_rel_loss_diff']:.2e}", "yes" if d["max_rel_loss_diff"] <= CPU_BOUND else "no"
            lines.append(f"| {d['strategy']} | {d.get('hardware', '')} | {d['steps']} | {diff} | {ok} |")
    return "\n".join(lines) + "\n"


def vllm_markdown(v: dict, gpu: dict | None) -> list[str]:
    """The vLLM comparison: one line when skipped or failed, else a table of the two engines and a summary."""
    title = "vLLM against the embedded engine"
    if "skipped" in v:
        return [f"{title}: skipped ({v['skipped']})."]
    if "error" in v:
        return [f"{title}" + (f" ({v['recipe']}'s run)" if v["recipe"] else "") + f": failed: {v['error']}."]
    where = (f"on {gpu['name']} (GPU 0), vLLM with its GPU defaults" if gpu else
             "**CPU figures (dry run)**: vLLM's CPU build and the embedded engine on this CPU, not GPU figures")
    tasks, start = v["tasks"], v["vllm_server_start_seconds"]
    header = ["engine", "wall s", "of which server start s",
              *(f"{k} {t['metric']}" + ("" if t["generated_by_vllm"] else " *") for k, t in tasks.items())]
    lines = [f"{title}: {v['recipe']}'s run ({', '.join(v['checkpoints'])}), {v['prompts']} prompts, evaluated as "
             f"`tunelab eval RUN` and `tunelab eval RUN --engine vllm` evaluate it, {where}. Scores in points of 100.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind, shown in (("embedded", "embedded"), ("vllm", "vLLM")):
        started = ("–" if start is None else f"{start:.1f}") if kind == "vllm" else "–"
        cells = [shown, f"{v['seconds'][kind]:.1f}", started, *(f"{t[kind]:.2f}" for t in tasks.values())]
        lines.append("| " + " | ".join(cells) + " |")
    without = v["ratio_without_server_start"]
    identical = (f"{v['identical']}/{v['compared']} ({v['identical_share']:.1%})" if v["compared"] else
                 "none compared (no task generates)")
    lines += ["", f"Embedded / vLLM wall time: {v['ratio_embedded_over_vllm']:.3g}"
              + ("" if without is None else f" ({without:.3g} without the server's start)")
              + f"; largest score difference {v['max_score_difference_points']:.2f} points; identical greedy "
              f"predictions {identical}."]
    if not all(t["generated_by_vllm"] for t in tasks.values()):
        lines.append("\\* scores prompts: the embedded engine under both (vLLM only generates here), so not in the "
                     "identical share.")
    return lines


def one_line(e: Exception) -> str:
    """An exception as one table cell."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}".replace("|", "/")


def find_gpu() -> dict | None:
    import torch
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory": props.total_memory, "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_acceptance")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per recipe (default 5; dry run 2)")
    ap.add_argument("--eval-prompts", type=int, default=None, help="eval prompts per recipe (default 64; dry run 8)")
    ap.add_argument("--model", action="append", default=[], metavar="RECIPE=DIR",
                    help="a local model directory for a recipe instead of its hub id")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to every recipe")
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny stand-in models")
    ap.add_argument("--distributed", action="store_true",
                    help="with --dry-run: the DDP/FSDP check on 2 CPU processes (on GPUs it runs whenever 2 are found)")
    ap.add_argument("--dist-steps", type=int, default=10, help="steps of the DDP/FSDP check")
    vllm = ap.add_mutually_exclusive_group()
    vllm.add_argument("--vllm-python", default=None, metavar="PYTHON",
                      help="the interpreter vLLM is in, for the vLLM comparison (default: $TUNELAB_VLLM_PYTHON, "
                           "vLLM in this interpreter, else .venv-vllm/bin/python; none found: the step is skipped)")
    vllm.add_argument("--no-vllm", action="store_true", help="skip the vLLM comparison")
    add_threads_option(ap)
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.dry_run else 5)
    args.eval_prompts = args.eval_prompts or (8 if args.dry_run else 64)
    args.out = args.out.resolve()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    args.models = {}
    for pair in args.model:
        name, sep, path = pair.partition("=")
        if not sep or name not in RECIPES or not Path(path).is_dir():
            ap.error(f"--model expects RECIPE=DIR with a recipe from {', '.join(RECIPES)} and an existing directory, "
                     f"got {pair!r}")
        args.models[name] = str(Path(path).resolve())
    if "minigpt-pretrain" in args.models:
        ap.error("minigpt-pretrain builds its model from scratch: --model does not apply to it")

    threads, load0 = start_torch(args.threads if args.dry_run else 0)
    gpu = None if args.dry_run else find_gpu()
    if not args.dry_run and gpu is None:
        log("no CUDA GPU found: nothing to accept (run with --dry-run to check the script on the CPU)")
        return 2
    log("dry run (CPU): no GPU figures" if args.dry_run else f"{gpu['count']} x {gpu['name']}")
    vllm_python, no_vllm = vllm_interpreter(args)
    log(f"vLLM comparison: skipped ({no_vllm})" if no_vllm else f"vLLM comparison: vLLM from {vllm_python}")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "data", ignore_errors=True)  # stand-ins are rebuilt: a dry run's must not serve a GPU run

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": args.dry_run, "gpu": gpu, "steps": args.steps,
              "recipes": [], "tunelab": tunelab_source()}
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name}")
        try:
            result["recipes"].append(run_recipe(name, args, gpu))
        except Exception as e:  # noqa: BLE001 - a failed recipe is a row of the table, and the others still run
            log(f"{name} failed: {one_line(e)}")
            result["recipes"].append({"recipe": name, "error": one_line(e), "traceback": traceback.format_exc()})

    result["vllm"] = vllm_step(result["recipes"], args, gpu, vllm_python, no_vllm)

    if args.dry_run and not args.distributed:
        result["distributed"] = "not run (add --distributed to run it on 2 CPU processes)"
    elif not args.dry_run and gpu["count"] < 2:
        result["distributed"] = f"not run (needs 2 GPUs, {gpu['count']} found)"
    else:
        try:
            result["distributed"] = distributed_check(args, args.out / "distributed")
        except Exception as e:  # noqa: BLE001
            log(f"distributed check failed: {one_line(e)}")
            result["distributed"] = [{"strategy": "ddp/fsdp", "steps": args.dist_steps, "error": one_line(e),
                                      "traceback": traceback.format_exc()}]

    result["machine"] = machine(threads, load0)
    table = markdown(result)
    print("\n" + table, flush=True)
    (args.out / "gpu_acceptance.md").write_text(table, encoding="utf-8")
    write_result(args.out / "gpu_acceptance.json", result, log)
    failed = [r["recipe"] for r in result["recipes"] if "error" in r]
    if "error" in result["vllm"]:
        failed.append("vLLM comparison")
    if isinstance(result["distributed"], list):
        failed += [f"{d['strategy']} check" for d in result["distributed"] if "error" in d]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
