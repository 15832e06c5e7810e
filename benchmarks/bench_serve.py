"""Serving throughput and latency: `tunelab serve` batching concurrent requests vs the same server taking
one request at a time.

Same model for both (by default the `tiny` preset, hidden 256 and 4 layers, random init, with a byte-level BPE
tokenizer trained here; or `--model DIR`), same engine code: the baseline is `tunelab serve --max-batch 1`,
so requests wait in line and are decoded one by one. Each server runs in its own process (as in use), and the
clients are threads streaming chat completions over HTTP (`stream: true`, `ignore_eos`, a fixed number of
new tokens, greedy). For 1, 4 and 16 concurrent clients it measures generated tokens per second over the
wall time and the time to first token (TTFT, p50 / p95), and prints batched / one-at-a-time ratios.

    python benchmarks/bench_serve.py [--concurrency 1,4,16] [--requests-per-client 2] [--max-tokens 64]
                                     [--max-batch 16] [--rounds 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import HERE, add_threads_option, choose_threads, load_average, logger


log = logger("bench_serve")


def build_model(out: Path, preset: str, seed: int) -> Path:
    """A random-init preset model with a BPE tokenizer trained on generated prompts, saved as a model dir."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data import arithmetic
    from tunelab.data.formats import examples_from_records
    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.presets import preset_config
    from tunelab.model.tokenizer import train_bpe_tokenizer
    template = PromptTemplate("alpaca")
    examples = examples_from_records(arithmetic.generate(3000, seed=seed, lang="mix"), "competition")
    corpus = [template.render(e.instruction, e.input) + e.output for e in examples]
    tok = train_bpe_tokenizer(corpus, vocab_size=1500, chat_template=template.chat_template())
    config = preset_config(preset, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    save_template(template, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, max_batch: int, threads: int):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "serve", model, "--port", str(self.port), "--max-batch",
             str(max_batch), "--name", "bench", "--log-level", "warning", "--dtype", "float32", "--device", "cpu",
             "--threads", str(threads)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300) -> None:
        import httpx
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def stats(self) -> dict:
        import httpx
        return httpx.get(self.url + "/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(TTFT, total seconds, generated tokens) of one streamed chat completion."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and c.get("delta", {}).get("content"):
                    ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else time.perf_counter() - t0), time.perf_counter() - t0, tokens


def run_level(url: str, clients: int, per_client: int, max_tokens: int, prompts: list[str]) -> dict:
    import httpx
    barrier = threading.Barrier(clients)
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            for i in range(per_client):
                try:
                    res = one_request(client, url, prompts[(k * per_client + i) % len(prompts)], max_tokens)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    results.append(res)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")
    return {"clients": clients, "requests": len(results), "errors": errors[:3], "n_errors": len(errors),
            "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall if wall else 0.0,
            "ttft_p50_s": pct(ttfts, 0.5), "ttft_p95_s": pct(ttfts, 0.95),
            "latency_mean_s": statistics.mean(r[1] for r in results) if results else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (batched/serial order alternates)")
    ap.add_argument("--model", default=None, help="model dir/run to serve (default: build the tiny preset)")
    ap.add_argument("--preset", default="tiny")
    add_threads_option(ap, "torch threads of the server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    threads, load0 = choose_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    model = args.model or str(build_model(Path(tmp.name) / "model", args.preset, args.seed))
    rng = random.Random(args.seed)
    prompts = [f"{rng.randint(1, 999)} {rng.choice('+-')} {rng.randint(1, 999)} = ?" for _ in range(256)]
    log(f"model {model}; levels {levels}; {args.requests_per_client} requests/client, {args.max_tokens} tokens "
        f"each; server threads {threads} (load average {load0[0]:.1f})")

    runs: dict[str, dict[int, list[dict]]] = {"batched": {c: [] for c in levels}, "serial": {c: [] for c in levels}}
    max_batch_seen = 0
    for rnd in range(args.rounds):
        order = ["batched", "serial"] if rnd % 2 == 0 else ["serial", "batched"]
        for setup in order:
            srv = Server(model, args.max_batch if setup == "batched" else 1, threads)
            try:
                srv.wait()
                run_level(srv.url, 1, 2, 8, prompts)   # warm-up
                for c in levels:
                    res = run_level(srv.url, c, args.requests_per_client, args.max_tokens, prompts)
                    runs[setup][c].append(res)
                    log(f"round {rnd + 1} {setup:8s} {c:3d} clients: {res['tok_per_s']:8.1f} tok/s, "
                        f"TTFT p50 {res['ttft_p50_s'] * 1000:7.1f} ms p95 {res['ttft_p95_s'] * 1000:7.1f} ms"
                        + (f", {res['n_errors']} errors" if res["n_errors"] else ""))
                if setup == "batched":
                    max_batch_seen = max(max_batch_seen, srv.stats()["max_batch"])
            finally:
                srv.stop()

    def med(setup, c, key):
        return statistics.median(r[key] for r in runs[setup][c])

    print()
    print("| clients | batched tok/s | one-at-a-time tok/s | throughput ratio | TTFT p50 batched / serial (ms) "
          "| TTFT p95 batched / serial (ms) | TTFT p95 ratio serial/batched |")
    print("|---|---|---|---|---|---|---|")
    summary = []
    for c in levels:
        b, s = med("batched", c, "tok_per_s"), med("serial", c, "tok_per_s")
        b50, s50 = med("batched", c, "ttft_p50_s"), med("serial", c, "ttft_p50_s")
        b95, s95 = med("batched", c, "ttft_p95_s"), med("serial", c, "ttft_p95_s")
        summary.append({"clients": c, "batched_tok_per_s": b, "serial_tok_per_s": s, "throughput_ratio": b / s,
                        "ttft_p50_batched_s": b50, "ttft_p50_serial_s": s50, "ttft_p95_batched_s": b95,
                        "ttft_p95_serial_s": s95, "ttft_p95_ratio": s95 / b95 if b95 else float("nan")})
        print(f"| {c} | {b:.0f} | {s:.0f} | {b / s:.2f}× | {b50 * 1000:.0f} / {s50 * 1000:.0f} | "
              f"{b95 * 1000:.0f} / {s95 * 1000:.0f} | {s95 / b95:.2f}× |")
    print(f"\nlargest decode batch seen by the batched server: {max_batch_seen}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": vars(args) | {"threads": threads, "model": model if args.model else f"{args.preset} (random init)"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": load0,
                    "loadavg_at_end": load_average()},
        "summary": summary, "max_batch_seen": max_batch_seen,
        "runs": {k: {str(c): v for c, v in d.items()} for k, d in runs.items()}}, indent=2), encoding="utf-8")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
