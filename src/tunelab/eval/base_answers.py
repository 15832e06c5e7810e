"""The base model's own answers to general prompts: generated once, greedily, in the model's own template, and cached
by the base's weights and the settings that made them.

They are the record of "what the base said", used twice:

* `base_agreement` (an ability task) scores every checkpoint by the per-token likelihood it gives these answers,
  one forward pass a prompt: a fine-tuning that collapsed the model's style into the task's short answers moves it,
  and no judge model is needed;
* `data.replay: self` trains on them (`tunelab.pipeline.self_replay`), so the model is asked to keep saying what it
  said while it learns the task.

The cache is one JSONL file a key under `<cache root>/base-answers/` (the conversion cache's root:
`$TUNELAB_CACHE`, else `~/.cache/tunelab`). The key hashes the base's weight files (their contents), a probe rendered
in the template (so a system prompt or another template is another key), the prompts and the generation length: a
retrained or re-quantised base never reuses an old base's answers. Written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from tunelab.data.examples import Example
from tunelab.data.templates import PromptTemplate
from tunelab.errors import TunelabError
from tunelab.records import write_jsonl

log = logging.getLogger(__name__)

_VERSION = 1  # bump when what is stored, or how it is made, changes
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_fingerprints: dict[tuple[str, int, int], str] = {}


def cache_root() -> Path:
    from tunelab.convert.mindformers import converted_cache_root
    return converted_cache_root().parent / "base-answers"


def weights_fingerprint(model_dir: str | Path) -> str:
    """A digest of the model's weight files' contents (a hub id that is not a local directory: its name). Read
    once a process per file state: a 540 MB base hashes in about a second."""
    path = Path(model_dir)
    if not path.exists():
        return "hub:" + str(model_dir)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise TunelabError("no weight files (*.safetensors, *.bin) to fingerprint", file=path)
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _fingerprints:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 23), b""):
                    h.update(chunk)
            _fingerprints[memo] = h.hexdigest()
        digest.update(f"{f.name}:{_fingerprints[memo]}\n".encode())
    return digest.hexdigest()


def cache_key(fingerprint: str, template: PromptTemplate, prompts: list[Example], max_new_tokens: int) -> str:
    probe = Example(id="probe", instruction="\u2063probe\u2063", output="")
    payload = json.dumps({"v": _VERSION, "weights": fingerprint, "template": template.render_prompt(probe),
                          "prompts": [(ex.instruction, ex.input) for ex in prompts],
                          "max_new_tokens": max_new_tokens}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def answers_path(base_dir: str | Path, template: PromptTemplate, prompts: list[Example], max_new_tokens: int,
                 suffix: str = ".jsonl") -> Path:
    """Where the answers of this base, template, prompts and length are cached (`suffix` names what else is kept
    under the same key, e.g. the replay examples made of them)."""
    return cache_root() / (cache_key(weights_fingerprint(base_dir), template, prompts, max_new_tokens) + suffix)


def answer_continuation(template: PromptTemplate, example: Example, answer: str, ended: bool) -> str:
    """The text a model writes after the generation prompt to give `answer`: the answer, then the template's own
    end of turn when the base ended it there (a cut-off answer has none). Taken from the bound template's rendering
    of the whole turn, so it is the text that training on this answer teaches."""
    if not ended:
        return answer
    prompt = template.render_prompt(example)
    whole = template.render_messages(template.messages(replace(example, output=answer)), add_generation_prompt=False)
    tail = whole[len(prompt):] if whole.startswith(prompt) else ""
    if answer not in tail:  # a template that rewrites the turn: the answer and EOS, as tunelab's templates end it
        return answer + (template.tokenizer.eos_token or "")
    end = tail.index(answer) + len(answer)
    return tail[:end] + tail[end:].split("\n", 1)[0]  # up to the end-of-turn token(s), not the newline after


def base_answers(base_dir: str | Path, prompts: list[Example], template: PromptTemplate, max_new_tokens: int,
                 batch_size: int, model=None, tokenizer=None, device: str | None = None,
                 precision: str = "auto", desc: str = "base answers") -> list[Example]:
    """`prompts` with `output` the base's greedy answer and `meta` its `finish_reason` and its `continuation` (the
    text scored or trained after the generation prompt). From the cache when this base, template, prompts and
    length have been answered before; else generated with `model` (the base, already loaded) or by loading
    `base_dir`, and cached."""
    path = answers_path(base_dir, template, prompts, max_new_tokens)
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(rows) == len(prompts):
            return _attach(prompts, rows, template)
        log.warning(f"{path} holds {len(rows)} answers for {len(prompts)} prompts: generating them again")
    if model is None:
        from tunelab.eval.resident import model_source
        with model_source(device, precision).open(base_dir) as (model, tokenizer):
            return base_answers(base_dir, prompts, template, max_new_tokens, batch_size, model, tokenizer, desc=desc)
    from tunelab.decoding.embedded import complete_batched
    template = template.bind(tokenizer)
    log.info(f"{desc}: the base ({base_dir}) answers {len(prompts)} prompts once, greedily; cached in {path}")
    done = complete_batched(model, tokenizer, [template.render_prompt(ex) for ex in prompts], max_new_tokens,
                            batch_size, desc=desc)
    rows = [{"id": ex.id, "answer": c.text, "finish_reason": c.finish_reason} for ex, c in zip(prompts, done)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write_jsonl(tmp, rows)
    tmp.replace(path)
    return _attach(prompts, rows, template)


def _attach(prompts: list[Example], rows: list[dict], template: PromptTemplate) -> list[Example]:
    out = []
    for ex, row in zip(prompts, rows):
        ended = row["finish_reason"] == "stop"
        out.append(replace(ex, output=row["answer"], meta={
            **ex.meta, "finish_reason": row["finish_reason"],
            "continuation": answer_continuation(template, ex, row["answer"], ended)}))
    return out


def default_base(model_dir: str | Path) -> str:
    """The base a model is judged against when none is named: an adapter's base, else the model itself."""
    from tunelab.model.base_record import ADAPTER_CONFIG, resolve_base_model
    if (Path(model_dir) / ADAPTER_CONFIG).is_file():
        return resolve_base_model(model_dir)
    return str(model_dir)


_HEADER_PROBE = "\u2063tunelab\u2063instruction\u2063"


def user_turn_header(template: PromptTemplate) -> str:
    """The text before a user's words in the bound template (its system turn included): what a model continues
    to write a user's request."""
    text = template.render_messages([{"role": "user", "content": _HEADER_PROBE}], add_generation_prompt=False)
    if _HEADER_PROBE not in text:
        raise TunelabError(f"template '{template.name}' does not show a user turn's text: it has no user-turn header "
                           "to draw instructions from (use prompts: [shipped] or a file)", field="data.replay.prompts")
    return text.split(_HEADER_PROBE, 1)[0]


def self_instructions(model, tokenizer, template: PromptTemplate, count: int, seed: int,
                      max_new_tokens: int = 64) -> list[Example]:
    """`count` user requests the model writes itself given only its template's user-turn header (Magpie, Xu et al.
    2024), sampled at temperature 1 (top-p 0.95), each row from its own seeded generator; those not ended within
    `max_new_tokens`, too short, or repeated are dropped. Cached like the answers (weights, header, count, seed)."""
    import torch

    from tunelab.decoding.embedded import decode_rows
    from tunelab.decoding.sampling import SamplingParams
    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    header = user_turn_header(template.bind(tokenizer))
    weights = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    key = hashlib.sha256(json.dumps({"v": _VERSION, "weights": weights_fingerprint(weights) if weights else "",
                                     "header": header, "count": count, "seed": seed,
                                     "max_new_tokens": max_new_tokens}).encode()).hexdigest()[:24]
    path = cache_root() / f"{key}.magpie.jsonl"
    if path.is_file():
        texts = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    else:
        ids = tokenizer(header, add_special_tokens=False)["input_ids"]
        stops = stop_token_ids(model, tokenizer)
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=1.0, top_p=0.95) for _ in range(count)]
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(count)]
        with torch.inference_mode():
            new, stopped = decode_rows(model, [ids] * count, max_new_tokens, stops, pad_token_id(tokenizer, stops),
                                       32, sampling=params, generators=gens)
        texts, seen = [], set()
        for row, ended in zip(new, stopped):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            norm = " ".join(text.split()).casefold()
            if ended and len(text) >= 8 and norm not in seen:
                seen.add(norm)
                texts.append(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        write_jsonl(tmp, [{"prompt": t} for t in texts])
        tmp.replace(path)
        log.info(f"magpie: the base wrote {len(texts)} usable requests of {count} drawn; cached in {path}")
    from tunelab.data.formats import prompt_language
    return [Example(id=f"magpie-{i}", instruction=t, output="", kind=prompt_language(t)) for i, t in enumerate(texts)]
