"""QA synthesis throughput: `tunelab synth qa` at concurrency 8 against a one-request-at-a-time loop (what the
course's students write: the `openai` client, one article after another), on the same `tunelab serve`.

One server process (`tunelab serve --max-batch 16`, the `tiny` preset, random init, with a byte-level BPE
trained here on the generated Chinese articles so an article and the default prompt fit its 512-token
context), one set of articles (generated encyclopedia articles cut to their first `--article-chars`
characters), the same messages (the default Chinese template, article in the user message), greedy,
`--max-tokens` per reply. A random model writes no JSON, so `synth qa` runs with `--retries 0`: every article
costs exactly one request in both setups, and each article ends failed with `no_json`; the loop parses each
reply with json.loads the way such a script does. Both report the completion tokens the server counted, so
the work compared is visibly the same. Rounds alternate the order (synth, loop, then loop, synth).

    python benchmarks/bench_synth.py [--articles 32] [--concurrency 8] [--max-tokens 64] [--rounds 2]
                                     [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_serve import Server
from common import HERE, add_threads_option, choose_threads, load_average, logger

log = logger("bench_synth")


def build_model(out: Path, articles: list[str], seed: int) -> Path:
    """The `tiny` preset, random init, with a BPE tokenizer trained on the articles and the default prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.presets import preset_config
    from tunelab.model.tokenizer import train_bpe_tokenizer
    from tunelab.synth.prompt import DEFAULT_TEMPLATE
    template = PromptTemplate("alpaca")
    tok = train_bpe_tokenizer(articles + [DEFAULT_TEMPLATE] * 20, vocab_size=3000,
                              chat_template=template.chat_template())
    config = preset_config("tiny", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    save_template(template, out)
    return out


def run_synth(url: str, inputs: Path, out: Path, concurrency: int, max_tokens: int) -> dict:
    """`tunelab synth qa` in this process; its report."""
    from tunelab.cli import main
    rc = main(["synth", "qa", "--corpus", str(inputs), "--endpoint", url + "/v1", "--model", "bench",
               "--out", str(out), "--concurrency", str(concurrency), "--retries", "0", "--temperature", "0",
               "--max-tokens", str(max_tokens), "--no-progress", "--min-chars", "1"])
    if rc != 0:
        raise RuntimeError(f"synth qa exited {rc}")
    report = json.loads(out.with_name("qa.report.json").read_text(encoding="utf-8"))
    if report["requests"]["failed_by_reason"]:        # e.g. a prompt over the context: not the work compared
        raise RuntimeError(f"requests failed: {report['requests']['failed_by_reason']}")
    n = report["articles"]["done"] + report["articles"]["failed"]
    return {"articles": n, "seconds": report["seconds"], "articles_per_s": n / report["seconds"],
            "completion_tokens": report["tokens"]["completion"], "requests": report["requests"]["sent"],
            "failed_by_reason": report["articles"]["failed_by_reason"]}


def run_loop(url: str, articles: list[str], max_tokens: int) -> dict:
    """The baseline: one request at a time with the sync `openai` client, the same messages."""
    import openai

    from tunelab.synth.prompt import Prompt
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    prompt = Prompt()
    tokens, parsed = 0, 0
    t0 = time.perf_counter()
    for text in articles:
        r = client.chat.completions.create(model="bench", messages=prompt.messages(text), temperature=0,
                                           max_tokens=max_tokens)
        tokens += r.usage.completion_tokens
        try:
            json.loads(r.choices[0].message.content)
            parsed += 1
        except ValueError:
            pass
    seconds = time.perf_counter() - t0
    client.close()
    return {"articles": len(articles), "seconds": seconds, "articles_per_s": len(articles) / seconds,
            "completion_tokens": tokens, "requests": len(articles), "parsed": parsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=32, help="articles per setup and round")
    ap.add_argument("--article-chars", type=int, default=160, help="each article cut to this many characters")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="the server's batch limit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "synth.json"))
    add_threads_option(ap, "server torch threads")
    args = ap.parse_args()
    threads, load0 = choose_threads(args.threads)

    from tunelab.data.synthetic.encyclopedia import generate_articles
    rows, _ = generate_articles(args.articles, seed=args.seed, noise=False)
    texts = [r["text"][: args.article_chars] for r in rows]
    work = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    inputs = work / "articles.jsonl"
    inputs.write_text("".join(json.dumps({"id": r["id"], "text": t}, ensure_ascii=False) + "\n"
                              for r, t in zip(rows, texts)), encoding="utf-8")
    log(f"{len(texts)} articles of ≤ {args.article_chars} characters; building the model; server threads "
        f"{threads}; load average {load0[0]:.2f}")
    model = build_model(work / "model", [r["text"] for r in generate_articles(400, seed=args.seed + 1,
                                                                              noise=False)[0]], args.seed)
    srv = Server(str(model), args.max_batch, threads)
    rounds = []
    try:
        srv.wait()
        run_loop(srv.url, texts[:2], args.max_tokens)            # warm-up: first requests pay one-off costs
        for k in range(args.rounds):
            order = ("synth", "loop") if k % 2 == 0 else ("loop", "synth")
            result = {}
            for setup in order:
                if setup == "synth":
                    result[setup] = run_synth(srv.url, inputs, work / f"round{k}" / "qa.jsonl", args.concurrency,
                                              args.max_tokens)
                else:
                    result[setup] = run_loop(srv.url, texts, args.max_tokens)
                log(f"round {k + 1} {setup:5s}: {result[setup]['articles_per_s']:.2f} articles/s "
                    f"({result[setup]['seconds']:.1f} s, {result[setup]['completion_tokens']} completion tokens)")
            result["ratio"] = result["synth"]["articles_per_s"] / result["loop"]["articles_per_s"]
            rounds.append(result)
        stats = srv.stats()
    finally:
        srv.stop()
    synth_rate = statistics.median(r["synth"]["articles_per_s"] for r in rounds)
    loop_rate = statistics.median(r["loop"]["articles_per_s"] for r in rounds)
    ratio = synth_rate / loop_rate
    load1 = load_average()
    print()
    print(f"| setup (same `tunelab serve`, {len(texts)} articles, greedy, ≤ {args.max_tokens} tokens a reply) "
          f"| articles/s (median of {args.rounds}) | completion tokens / article |")
    print("|---|---|---|")
    print(f"| `tunelab synth qa --concurrency {args.concurrency}` | {synth_rate:.2f} | "
          f"{statistics.mean(r['synth']['completion_tokens'] for r in rounds) / len(texts):.1f} |")
    print(f"| one request at a time (openai client loop) | {loop_rate:.2f} | "
          f"{statistics.mean(r['loop']['completion_tokens'] for r in rounds) / len(texts):.1f} |")
    print(f"\nratio synth / loop: {ratio:.2f}x (target >= 3x); per round: "
          + ", ".join(f"{r['ratio']:.2f}x" for r in rounds))
    print(f"server: largest batch {stats.get('max_batch')}, mean batch {stats.get('mean_batch', 0):.2f}; "
          f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ratio": ratio, "synth_articles_per_s": synth_rate, "loop_articles_per_s": loop_rate,
                               "rounds": rounds, "server_stats": stats, "args": vars(args), "threads": threads,
                               "load_average_start": load0, "load_average_end": load1,
                               "python": sys.version.split()[0], "machine": platform.machine()}, indent=2),
                   encoding="utf-8")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
