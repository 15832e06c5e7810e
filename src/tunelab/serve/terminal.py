"""`tunelab generate`: text from a model in the terminal, nanoGPT's `sample.py` for anything tunelab loads.

Prompts come as arguments, from a file (`--file`, read as `tunelab ui --examples` reads one), piped in one a
line, or typed at a `>` prompt when none of those gives any. Each prompt goes through the model's own chat
template (`--raw`: as it is), so a pretrained MiniGPT (template `none`) continues the text and a fine-tuned
run gets the template it was trained with. A flag left out takes the model's generation config (greedy for a
tunelab checkpoint, as its evaluation decoded), else OpenAI's defaults: what `tunelab serve` does.

Every prompt × sample goes to the serving engine at once, so they decode in shared batches; they are printed
in order, the one at the head streamed as it is generated. `--json` prints one JSON line per sample instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, TextIO

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128    # neither --max-new-tokens nor the model's generation config says


@dataclass
class _Job:
    prompt_index: int       # 1-based, as errors and headers name it
    sample: int             # 0-based, the seed's offset
    prompt: str
    events: queue.Queue
    seq: object


@dataclass
class GenerateOptions:
    """How each prompt is decoded; None: the model's generation config, else OpenAI's default."""
    num_samples: int = 1            # samples per prompt; sample j of every prompt uses seed + j
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    raw: bool = False               # the prompt as it is, without the model's chat template
    json: bool = False              # one JSON line per sample instead of the text


def generate_text(model: str, prompts: list[str] | None, options: GenerateOptions, *, checkpoint: str = "best",
                  max_batch: int = 16, device: str | None = None, precision: str = "auto", threads: int = 0,
                  out: TextIO | None = None, mindformers_config: str | None = None,
                  tokenizer: str | None = None, engine=None) -> int:
    """Every prompt's samples written to `out` (standard output) in order; `prompts` None: a `>` prompt on the
    terminal. Returns 0, or 2 when a sample failed (each failure said on stderr). `mindformers_config` /
    `tokenizer`: what a MindFormers .ckpt as the model needs; `engine`: an `EngineConfig` whose kind vllm decodes
    through vLLM (`serve.vllm_serving`: the model alone, a checkpoint's adapter loaded by name)."""
    import torch

    from tunelab.serve.models import ServedModel
    if threads:
        torch.set_num_threads(threads)
    if engine is not None and engine.kind == "vllm":
        from tunelab.serve.vllm_serving import serve_through_vllm
        owner = serve_through_vllm(model, engine, which=checkpoint, max_batch=max_batch, precision=precision,
                                   device=device, mindformers_config=mindformers_config, tokenizer=tokenizer,
                                   every_checkpoint=False)
        served = owner.default
    else:
        owner = served = ServedModel.load(model, max_batch=max_batch, precision=precision, device=device,
                                          which=checkpoint, mindformers_config=mindformers_config,
                                          tokenizer=tokenizer)
    try:
        _describe(served, options)
        if prompts is None:
            return _interactive(served, options)
        started = time.perf_counter()
        rc, samples, tokens = _generate(served, options, prompts, out or sys.stdout)
        seconds = time.perf_counter() - started
        log.info("%d sample%s, %s new tokens in %.1f s (%s tokens/s)", samples, "s" if samples > 1 else "",
                 f"{tokens:,}", seconds, f"{tokens / seconds:,.0f}")
        return rc
    finally:
        owner.close()


def given_prompts(prompts: list[str], file: str | None = None) -> list[str] | None:
    """`prompts`, then `file`'s; with neither, standard input's lines, or None for a terminal (interactive).
    Checked before a model loads: a bad file costs no wait."""
    from tunelab.records import decode_text, iter_lines, lone_surrogate
    from tunelab.serve.prompts import read_prompts
    prompts = list(prompts)
    for i, prompt in enumerate(prompts, 1):
        if (at := lone_surrogate(prompt)) is not None:
            raise TunelabError(f"prompt {i} is not valid Unicode (a lone surrogate at character {at})")
    if file:
        prompts += read_prompts(file, "file")
    if prompts:
        return prompts
    if sys.stdin is None or sys.stdin.isatty():
        return None
    prompts = [line for _, line in iter_lines(decode_text(sys.stdin.buffer.read(), "<stdin>"))]
    if not prompts:
        raise TunelabError("no prompts: give them as arguments, in a file, or one a line on standard input")
    return prompts


def _describe(served, options: GenerateOptions) -> None:
    from tunelab.serve.engine import SamplingParams
    left = left_out(served.defaults, options)
    log.info("tunelab generate: %s (%s, context %d)%s", served.name, served.model_dir, served.context_len,
             f"; decoding the flags leave out: {left}" if left else "")
    sampling = served.sampling(options.temperature, options.top_p, options.top_k)
    if options.num_samples > 1 and SamplingParams(**sampling).greedy:
        log.info("note: decoding is greedy, so the %d samples of a prompt are the same; a temperature such as 0.8 "
                 "samples", options.num_samples)


def left_out(defaults, options: GenerateOptions) -> str:
    """The decoding settings no flag gave, as they are taken: from the model's generation_config.json (its
    `SamplingDefaults`), else the built-in defaults; '' when the flags gave them all. top_p and top_k are named only
    when sampling, where they matter. Listing the whole generation config said `max_tokens 32 from
    generation_config.json` under `--max-new-tokens 48`, which was used."""
    d, config, builtin = defaults, [], []

    def take(flag, stated, said: str, default: str) -> None:
        if flag is None:
            (config if stated is not None else builtin).append(said if stated is not None else default)
    take(options.temperature, d.temperature,
         "greedy (temperature 0)" if d.temperature == 0 else f"temperature {d.temperature or 0:g}", "temperature 1")
    temperature = next(t for t in (options.temperature, d.temperature, 1.0) if t is not None)
    if temperature > 0:
        take(options.top_p, d.top_p, f"top_p {d.top_p or 0:g}", "top_p 1")
        take(options.top_k, d.top_k, f"top_k {d.top_k or 'off'}", "top_k off")
    take(options.max_new_tokens, d.max_tokens or None, f"max_tokens {d.max_tokens}",
         f"max_tokens {DEFAULT_MAX_TOKENS}")
    parts = [", ".join(config) + " from generation_config.json"] if config else []
    if builtin:
        parts.append(", ".join(builtin) + " by default (the model's generation_config.json does not say)")
    return "; ".join(parts)


def _encode(served, options: GenerateOptions, prompts: list[str]) -> list[list[int]]:
    """Every prompt's ids, before anything is generated: a prompt the context cannot take is an error naming it."""
    encoded = []
    for i, prompt in enumerate(prompts, 1):
        text = prompt if options.raw else served.render_chat([{"role": "user", "content": prompt}])
        if served.too_long(len(text)):      # certain without tokenising megabytes
            raise TunelabError(f"prompt {i} has {len(prompt):,} characters, more than the model's context of "
                               f"{served.context_len} tokens can hold")
        ids = served.encode(text, add_special_tokens=False)
        if not ids:
            raise TunelabError(f"prompt {i} is empty: give the model some text to continue")
        if len(ids) >= served.context_len:
            raise TunelabError(f"prompt {i} has {len(ids)} tokens; the model's context of {served.context_len} "
                               "leaves no room for an answer")
        encoded.append(ids)
    return encoded


def _jobs(served, options: GenerateOptions, prompts: list[str], encoded: list[list[int]]) -> Iterator[_Job]:
    from tunelab.serve.engine import SamplingParams, Sequence
    sampling = served.sampling(options.temperature, options.top_p, options.top_k)
    max_tokens = options.max_new_tokens or served.defaults.max_tokens or DEFAULT_MAX_TOKENS
    stops = tuple(s for s in options.stop if s)
    for i, (prompt, ids) in enumerate(zip(prompts, encoded), 1):
        for j in range(options.num_samples):
            params = SamplingParams(max_tokens=min(max_tokens, served.context_len - len(ids)), **sampling,
                                    stop=stops, seed=None if options.seed is None else options.seed + j)
            events: queue.Queue = queue.Queue()
            yield _Job(i, j, prompt, events, Sequence(ids, params, events.put))


def _generate(served, options: GenerateOptions, prompts: list[str], out) -> tuple[int, int, int]:
    """Print every prompt's samples in order (the head streamed as it comes in text mode), keeping a few
    batches' worth in the engine: 100,000 prompts × 64 samples never exist as sequences all at once.
    Returns (exit code: 2 if any sample failed, samples, new tokens)."""
    jobs = _jobs(served, options, prompts, _encode(served, options, prompts))
    in_flight: deque[_Job] = deque()
    room = 4 * served.engine.max_batch
    samples, tokens, failed = 0, 0, []

    def refill() -> None:
        more = list(itertools.islice(jobs, room - len(in_flight)))
        if more:
            served.engine.submit([job.seq for job in more])
            in_flight.extend(more)

    refill()
    try:
        while in_flight:
            job = in_flight[0]      # left in until written: an interrupt cancels it with the rest
            if not options.json and len(prompts) * options.num_samples > 1:
                out.write(_header(job, len(prompts), options.num_samples) + "\n")
            parts, reason, error = [], None, None
            while reason is None:
                event = job.events.get()
                parts.append(event.text)
                reason, error = event.finish_reason, event.error
                if not options.json and event.text:
                    out.write(event.text)
                    out.flush()
            if options.json:
                out.write(json.dumps({"prompt_index": job.prompt_index, "sample": job.sample + 1,
                                      "prompt": job.prompt, "text": "".join(parts), "finish_reason": reason,
                                      "error": error, "prompt_tokens": len(job.seq.prompt_ids),
                                      "completion_tokens": job.seq.num_generated}, ensure_ascii=False) + "\n")
            else:
                out.write("\n")
            out.flush()
            in_flight.popleft()
            samples, tokens = samples + 1, tokens + job.seq.num_generated
            if reason in ("error", "abort"):
                failed.append(f"prompt {job.prompt_index}, sample {job.sample + 1}: {error or reason}")
            refill()
    finally:
        for job in in_flight:   # interrupted: nothing left running for nobody
            job.seq.cancel()
    if failed:
        log.error("error: %d of %d samples failed; %s", len(failed), samples, failed[0])
        return 2, samples, tokens
    return 0, samples, tokens


def _header(job: _Job, prompts: int, samples: int) -> str:
    first = job.prompt.strip().splitlines()[0]
    shown = first if len(first) <= 60 else first[:59] + "…"
    where = [f"prompt {job.prompt_index}/{prompts}"] if prompts > 1 else []
    where += [f"sample {job.sample + 1}/{samples}"] if samples > 1 else []
    return f"── {' · '.join(where)}: {shown} ──"


def _interactive(served, options: GenerateOptions) -> int:
    """A `>` prompt: each line is generated for alone (no conversation is kept); an empty line or Ctrl-D
    ends it, Ctrl-C stops the answer being written."""
    from tunelab.records import lone_surrogate
    print("type a prompt and press Enter; an empty line or Ctrl-D quits, Ctrl-C stops an answer "
          "(输入提示后回车；空行或 Ctrl-D 退出)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except UnicodeDecodeError as e:
            print(f"tunelab: that line is not UTF-8 text ({e.reason})", file=sys.stderr)
            continue
        if not line.strip():
            return 0
        if (at := lone_surrogate(line)) is not None:
            print(f"tunelab: that line is not valid Unicode (a lone surrogate at character {at})", file=sys.stderr)
            continue
        try:
            _generate(served, options, [line], sys.stdout)
        except TunelabError as e:
            print(f"tunelab: {e.message}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n[stopped 已停止]", file=sys.stderr)
