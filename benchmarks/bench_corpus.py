"""Corpus preparation: `tunelab data corpus` vs a nanoGPT-style `prepare.py` loop, in MB/s of JSONL and peak memory.

Input: a generated Chinese encyclopedia-style JSONL corpus, one article a line as `{"id", "text": "标题\\n\\n正文…"}`
(`tunelab.data.synthetic.encyclopedia` when present, else the small generator below), `--mb` MB at 1x. Tokenizer: a
byte-level BPE trained here on the first part of the corpus (`train_bpe_tokenizer`) and saved as a Hugging
Face directory (`--tokenizer corpus`: `tunelab tokenizer train`'s CJK-aware pipeline instead); both sides load
that same directory.

  (a) baseline - one process, the loop students write in `prepare.py`: for each line json.loads ->
                 `AutoTokenizer.encode(text)` -> append EOT -> write uint16 to the output file, one line at a
                 time (streamed: a generous baseline; the seed's script reads the whole file into memory first).
  (b) tunelab  - `tunelab data corpus INPUT --tokenizer TOK --block-size N --out DIR --workers W`: cleaning,
                 dedup, sentence-aligned blocks, train/val split, index and meta.json; more work than (a).

Each run is its own subprocess, so memory never mixes. MB/s = input bytes / the child's time from after its
imports (the same heavy imports on both sides) to its end; the ratio with interpreter start and imports is
printed too, and MB per CPU-second (main + workers), which a loaded machine does not change. Peak memory:
the child's own VmHWM (a fresh address space after exec: `os.wait4`'s max RSS would count the parent's pages
at fork), the largest worker's max RSS (RUSAGE_CHILDREN), and the peak of the summed PSS of the child and its
workers, sampled every 0.1 s (PSS splits the pages forked workers share). tunelab also runs on a 10x corpus
(ten files, each a copy of the 1x articles with a one-sentence change so dedup keeps them) to show that its
memory stays flat as the corpus grows.

    python benchmarks/bench_corpus.py [--mb 30] [--rounds 2] [--threads 0] [--block-size 256] [--tokenizer bpe|corpus]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import HERE, add_threads_option, choose_threads, load_average, logger, tunelab_source, write_result

log = logger("bench_corpus")
VOCAB = 8000
TARGET = 4.0


# --- the corpus ------------------------------------------------------------------------------------------

def builtin_articles(seed: int):
    """Endless wiki-like articles: a title line, a blank line, 2-4 paragraphs of Chinese sentences built from a
    Zipf-distributed lexicon of 2-4 character words, with years, numbers, English terms in brackets and a little
    dump noise (empty brackets, wiki markup), so tokenisation and cleaning see text shaped like the real dump."""
    rng = random.Random(seed)
    chars = [chr(c) for c in rng.sample(range(0x4E00, 0x9FA6), 3000)]
    lexicon = ["".join(rng.choices(chars, k=rng.choice((1, 2, 2, 2, 3, 4)))) for _ in range(30000)]
    cum = []
    total = 0.0
    for i in range(len(lexicon)):
        total += 1.0 / (i + 1) ** 1.05
        cum.append(total)
    latin = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))).capitalize()
             for _ in range(2000)]
    punct = "，，，、；"
    n = 0
    while True:
        title = "".join(rng.choices(lexicon, cum_weights=cum, k=2))
        paras = []
        for _ in range(rng.randint(2, 4)):
            sents = []
            for _ in range(rng.randint(3, 9)):
                words = rng.choices(lexicon, cum_weights=cum, k=rng.randint(6, 22))
                r = rng.random()
                if r < 0.15:
                    words.insert(rng.randrange(len(words)), f"{rng.randint(1850, 2023)}年")
                elif r < 0.25:
                    words.insert(rng.randrange(len(words)), f"{rng.randint(2, 9999)}")
                elif r < 0.32:
                    words.insert(1, f"（英语：{rng.choice(latin)} {rng.choice(latin)}）")
                elif r < 0.35:
                    words.insert(1, "（）")
                elif r < 0.37:
                    words.insert(1, f"[[{rng.choice(lexicon)}]]")
                for _ in range(len(words) // 7):
                    i = rng.randrange(1, len(words))
                    words[i] = rng.choice(punct) + words[i]
                sents.append("".join(words) + rng.choice("。。。。！？"))
            paras.append("".join(sents))
        n += 1
        yield f"a{seed}-{n}", title + "\n\n" + "\n\n".join(paras)


def encyclopedia_articles(seed: int):
    """Articles of part C's generator (tunelab.data.synthetic.encyclopedia), a fresh world per batch of 2000."""
    from tunelab.data.synthetic.encyclopedia import generate_articles
    batch = 0
    while True:
        articles, _qa = generate_articles(2000, seed=seed * 100_003 + batch)
        for a in articles:
            yield f"{a['id']}-{batch}", a["text"]
        batch += 1


def articles(generator: str, seed: int):
    """(name, endless (id, text) iterator) of the generator asked for; `auto` prefers part C's."""
    if generator == "auto":
        try:
            from tunelab.data.synthetic.encyclopedia import generate_articles  # noqa: F401
            generator = "encyclopedia"
        except ImportError:
            generator = "builtin"
    return generator, encyclopedia_articles(seed) if generator == "encyclopedia" else builtin_articles(seed)


def make_corpus(tmp: Path, mb: float, copies: int, generator: str, seed: int) -> dict:
    """Write corpus-1x.jsonl (~mb MB) and corpus-10x/part-k.jsonl (copy k of every 1x article, its text ending
    with one more sentence that names k); returns where they are and which generator wrote them."""
    generator, source = articles(generator, seed)
    limit = int(mb * 1e6)
    docs, size = [], 0
    for doc_id, text in source:
        line = json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n"
        docs.append((doc_id, text))
        size += len(line.encode("utf-8"))
        if size >= limit:
            break
    one = tmp / "corpus-1x.jsonl"
    with one.open("w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    many = tmp / "corpus-10x"
    many.mkdir()
    for k in range(copies):
        with (many / f"part-{k:02d}.jsonl").open("w", encoding="utf-8") as f:
            for doc_id, text in docs:
                tail = f"本条目为第{k + 1}版。" if k else ""
                f.write(json.dumps({"id": f"{doc_id}-{k}", "text": text + tail}, ensure_ascii=False) + "\n")
    many_bytes = sum(p.stat().st_size for p in many.iterdir())
    return {"generator": generator, "documents": len(docs), "file_1x": one, "bytes_1x": one.stat().st_size,
            "dir_10x": many, "bytes_10x": many_bytes}


def train_tokenizer(tmp: Path, corpus: dict, kind: str) -> Path:
    """Byte-level BPE on the first ~4 MB of articles (vocab VOCAB), saved where both sides load it from: `bpe`
    is `train_bpe_tokenizer`'s (digits split, GPT-2's regex), `corpus` is `tunelab tokenizer train`'s (CJK
    punctuation alone and CJK runs apart, before those)."""
    from tunelab.model.tokenizer import train_bpe_tokenizer, train_corpus_tokenizer
    texts, size = [], 0
    with corpus["file_1x"].open(encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size > 4e6 / 3:  # characters; ~3 bytes each in UTF-8
                break
    tok = (train_corpus_tokenizer if kind == "corpus" else train_bpe_tokenizer)(texts, VOCAB)
    path = tmp / "tokenizer"
    tok.save_pretrained(path)
    return path


# --- the children: (a) the prepare.py loop, (b) the tunelab CLI ---------------------------------------------

def baseline_child(inp: str, tokenizer: str, out: str) -> dict:
    """What a student's prepare.py does per line."""
    import numpy as np
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(tokenizer)
    eot = enc.eos_token_id
    docs = tokens = 0
    with open(inp, encoding="utf-8") as f, open(out, "wb") as w:
        for line in f:
            text = json.loads(line)["text"]
            ids = enc.encode(text)
            ids.append(eot)
            w.write(np.array(ids, dtype=np.uint16).tobytes())
            docs += 1
            tokens += len(ids)
    return {"documents": docs, "tokens": tokens}


def tunelab_child(argv: list[str]) -> dict:
    """`tunelab ARGV` in this process."""
    from tunelab.cli import main as cli_main
    rc = cli_main(argv)
    if rc:
        raise SystemExit(rc)
    return {}


def child(kind: str, report: str, argv: list[str]) -> None:
    """Run one side and write to `report` its time and CPU time from after the imports (the same heavy imports
    on both sides: numpy, transformers' tokenizer classes, and for tunelab its CLI and corpus module), and its
    own memory peaks: VmHWM of this process (a fresh address space since exec, so nothing of the parent's
    counts) and the largest reaped worker's max RSS."""
    import resource

    import numpy  # noqa: F401
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    if kind == "tunelab":
        import tunelab.cli  # noqa: F401
        import tunelab.data.corpus.prepare  # noqa: F401

    def cpu(who) -> float:
        u = resource.getrusage(who)
        return u.ru_utime + u.ru_stime
    t0, main0, workers0 = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    res = baseline_child(*argv) if kind == "baseline" else tunelab_child(argv)
    main_cpu, workers_cpu = cpu(resource.RUSAGE_SELF) - main0, cpu(resource.RUSAGE_CHILDREN) - workers0
    res.update(work_s=time.perf_counter() - t0, work_cpu_s=main_cpu + workers_cpu, main_cpu_s=main_cpu,
               workers_cpu_s=workers_cpu,
               main_hwm_mb=_status_kb(os.getpid(), "VmHWM") / 1024,
               worker_max_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    Path(report).write_text(json.dumps(res), encoding="utf-8")


# --- measuring a child process ---------------------------------------------------------------------------

def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    """root and all its descendants, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure(kind: str, argv: list[str], name: str, tmp: Path) -> dict:
    """Run one side as a child process: wall time, CPU time, the child's own report, and the peak of the summed
    PSS of its process tree (sampled every 0.1 s; PSS splits pages shared by forked workers fairly)."""
    report = tmp / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", kind, str(report), *argv]
    err = (tmp / f"{name}.err").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=err, stderr=err, env={**os.environ, "TQDM_MININTERVAL": "1"})
    peak = {"pss_kb": 0, "processes": 1}
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            pids = _tree(proc.pid)
            peak["pss_kb"] = max(peak["pss_kb"], sum(_pss_kb(p) for p in pids))
            peak["processes"] = max(peak["processes"], len(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    err.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        raise SystemExit(f"{name} failed (exit {rc}): {' '.join(cmd)}\n" + (tmp / f"{name}.err").read_text()[-3000:])
    res = json.loads(report.read_text(encoding="utf-8"))
    res.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, tree_peak_pss_mb=peak["pss_kb"] / 1024,
               peak_processes=peak["processes"])
    return res


def run_baseline(tmp: Path, inp: Path, tokenizer: Path, name: str) -> dict:
    out = tmp / f"{name}.bin"
    res = measure("baseline", [str(inp), str(tokenizer), str(out)], name, tmp)
    out.unlink()
    return res


def run_tunelab(tmp: Path, inp: Path, tokenizer: Path, name: str, block_size: int, workers: int) -> dict:
    out = tmp / name
    argv = ["data", "corpus", str(inp), "--tokenizer", str(tokenizer), "--block-size", str(block_size),
            "--out", str(out), "--workers", str(workers)]
    res = measure("tunelab", argv, name, tmp)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    splits = meta.get("splits", {})
    res.update(tokens=sum(s.get("tokens", 0) for s in splits.values()),
               blocks=sum(s.get("blocks", 0) for s in splits.values()),
               documents=sum(s.get("documents", 0) for s in splits.values()), summary=meta.get("summary"))
    shutil.rmtree(out)
    return res


def rates(res: dict, nbytes: int) -> dict:
    res.update(mb_s=nbytes / 1e6 / res["work_s"], wall_mb_s=nbytes / 1e6 / res["wall_s"],
               mb_per_cpu_s=nbytes / 1e6 / res["work_cpu_s"])
    return res


def describe(setup: str, res: dict) -> str:
    return (f"{setup:<11} {res['mb_s']:6.2f} MB/s ({res['work_s']:.1f} s after imports, {res['wall_s']:.1f} s wall, "
            f"cpu {res['work_cpu_s']:.1f} s after imports: main {res['main_cpu_s']:.1f}, workers "
            f"{res['workers_cpu_s']:.1f}), main HWM {res['main_hwm_mb']:.0f} MB, workers' max RSS "
            f"{res['worker_max_rss_mb']:.0f} MB, tree PSS {res['tree_peak_pss_mb']:.0f} MB, {res['tokens']:,} tokens")


# --- main ------------------------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=30, help="size of the 1x JSONL corpus in MB")
    ap.add_argument("--copies", type=int, default=10, help="the large corpus is this many times the 1x one")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (a) and (b) on the 1x corpus")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--generator", choices=["auto", "encyclopedia", "builtin"], default="auto",
                    help="auto: part C's encyclopedia generator when installed, else the builtin one")
    ap.add_argument("--tokenizer", choices=["bpe", "corpus"], default="bpe",
                    help="bpe: train_bpe_tokenizer's pipeline; corpus: `tunelab tokenizer train`'s CJK-aware one")
    add_threads_option(ap, "tunelab's --workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "corpus.json"))
    args = ap.parse_args()

    workers, load0 = choose_threads(args.threads)
    log(f"tunelab --workers {workers}; load average {load0}")
    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as d:
        tmp = Path(d)
        t = time.perf_counter()
        corpus = make_corpus(tmp, args.mb, args.copies, args.generator, args.seed)
        log(f"corpus ({corpus['generator']}): {corpus['documents']} articles, {corpus['bytes_1x'] / 1e6:.1f} MB at "
            f"1x, {corpus['bytes_10x'] / 1e6:.1f} MB at {args.copies}x ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        tokenizer = train_tokenizer(tmp, corpus, args.tokenizer)
        log(f"tokenizer: byte-level BPE ({args.tokenizer}), vocab {VOCAB} ({time.perf_counter() - t:.1f} s)")
        for p in [corpus["file_1x"], *corpus["dir_10x"].iterdir()]:  # into the page cache: no disk in the timing
            p.read_bytes()

        runs: dict[str, list[dict]] = {"baseline": [], "tunelab": []}
        for r in range(args.rounds):
            order = ["baseline", "tunelab"] if r % 2 == 0 else ["tunelab", "baseline"]
            for setup in order:
                name = f"{setup}-r{r}"
                if setup == "baseline":
                    res = run_baseline(tmp, corpus["file_1x"], tokenizer, name)
                else:
                    res = run_tunelab(tmp, corpus["file_1x"], tokenizer, name, args.block_size, workers)
                runs[setup].append(rates(res, corpus["bytes_1x"]))
                log(f"  round {r + 1}: {describe(setup, res)}")
        log(f"tunelab on the {args.copies}x corpus ({corpus['bytes_10x'] / 1e6:.0f} MB)")
        big = rates(run_tunelab(tmp, corpus["dir_10x"], tokenizer, "tunelab-large", args.block_size, workers),
                    corpus["bytes_10x"])
        log(f"  {describe(f'tunelab {args.copies}x', big)}")

    keys = ("mb_s", "wall_mb_s", "mb_per_cpu_s", "work_s", "wall_s", "main_hwm_mb", "worker_max_rss_mb",
            "tree_peak_pss_mb")
    med = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in runs.items()}
    ratio = med["tunelab"]["mb_s"] / med["baseline"]["mb_s"]
    wall_ratio = med["tunelab"]["wall_mb_s"] / med["baseline"]["wall_mb_s"]
    cpu_ratio = med["tunelab"]["mb_per_cpu_s"] / med["baseline"]["mb_per_cpu_s"]
    paired = [t["mb_s"] / b["mb_s"] for t, b in zip(runs["tunelab"], runs["baseline"])]
    growth = big["tree_peak_pss_mb"] / med["tunelab"]["tree_peak_pss_mb"]
    load1 = load_average()
    mb1, mb10 = corpus["bytes_1x"] / 1e6, corpus["bytes_10x"] / 1e6
    print()
    print(f"Corpus preparation, {corpus['generator']} JSONL, BPE ({args.tokenizer}) vocab {VOCAB}, "
          f"block {args.block_size}, tunelab --workers {workers} (median of {args.rounds} rounds)")
    print(f"{'setup':<34}{'MB in':>7}{'MB/s':>7}{'wall MB/s':>10}{'MB/cpu-s':>9}{'main HWM':>10}{'worker RSS':>11}"
          f"{'tree PSS':>10}  (memory in MB)")
    rows = [("(a) prepare.py loop, 1 process", mb1, med["baseline"]),
            ("(b) tunelab data corpus, 1x", mb1, med["tunelab"]),
            (f"(b) tunelab data corpus, {args.copies}x", mb10, big)]
    for label, mb, m in rows:
        print(f"{label:<34}{mb:>7.1f}{m['mb_s']:>7.2f}{m['wall_mb_s']:>10.2f}{m['mb_per_cpu_s']:>9.2f}"
              f"{m['main_hwm_mb']:>10.0f}"
              f"{m['worker_max_rss_mb']:>11.0f}{m['tree_peak_pss_mb']:>10.0f}")
    print(f"tunelab / loop MB/s = {ratio:.2f}x (target >= {TARGET:g}x)   per round: "
          + ", ".join(f"{x:.2f}" for x in paired))
    print(f"  with process start and imports: {wall_ratio:.2f}x;  per CPU-second (what load does not change): "
          f"{cpu_ratio:.2f}x")
    print(f"tunelab peak memory at {args.copies}x / 1x: {growth:.2f} (tree PSS), "
          f"{big['main_hwm_mb'] / med['tunelab']['main_hwm_mb']:.2f} (main process)")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (on {os.cpu_count()} cores)")

    import tokenizers
    import transformers
    out = {"benchmark": "corpus", "unit": "MB of JSONL input per second, from after the imports to the end",
           "generator": corpus["generator"], "documents_1x": corpus["documents"], "mb_1x": mb1, "mb_large": mb10,
           "copies": args.copies, "tokenizer": args.tokenizer, "vocab": VOCAB, "block_size": args.block_size,
           "workers": workers,
           "rounds": args.rounds, "median": med, "large": big, "runs": runs,
           "ratio_tunelab_over_loop": ratio, "paired_ratios": paired, "ratio_with_process_start": wall_ratio,
           "ratio_per_cpu_second": cpu_ratio,
           "memory_growth_large_over_1x": growth,
           "target": TARGET, "tunelab_source": tunelab_source(),
           "machine": {"cores": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1,
                       "tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                       "python": sys.version.split()[0]},
           "note": "ratios measured in one run on a shared machine; absolute numbers vary between runs"}
    write_result(args.out, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
