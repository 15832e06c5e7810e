"""`data.replay: self`, prepared before training: the base answers general prompts in its own template, once
(`tunelab.eval.base_answers`, cached by its weights and settings), and those answers become training examples, so
fine-tuning also asks the model to keep saying what it said.

The prompts (`data.replay.prompts`): tunelab's shipped general prompts (their `train` split: `base_agreement`
scores the other), its shipped form requests (`forms`: 112 lists, letters and notes, "in one sentence", "at least
N words" and short stories, half English, half Chinese, none of them a prompt the `forms` task judges — so the
forms of an everyday answer are replayed, not only the answers to questions), instructions the base writes itself (`magpie`: given only its template's user-turn header it
writes a user's request, as Magpie, Xu et al. 2024, draws instruction data from aligned models), and the user's
own JSONL files of `{prompt}`. An answer the base did not end within `max_new_tokens` is kept as the start of a
longer one: trained without an end of turn (`open_end`), so the model learns to go on writing where the base went
on, never to stop mid-sentence. (A chat model this verbose — SmolLM2 ended 33 of 240 answers within 128 tokens —
would otherwise replay only its shortest answers, and teach brevity.)

The examples are written as JSONL (`{id, instruction, output, open_end?}`) beside the cached answers and
`data.replay.file` is set to that file: the run's saved recipe names it, and `tunelab data show` shows the same
rows, marked.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tunelab.data.packing import OPEN_END
from tunelab.errors import TunelabError
from tunelab.recipe import Recipe
from tunelab.records import write_jsonl

log = logging.getLogger(__name__)

SHIPPED, FORMS, MAGPIE = "shipped", "forms", "magpie"
MIN_LOOP_START_WORDS = 8  # a looping answer's start shorter than this is dropped, not replayed
FORM_REPLAY_FILE = Path(__file__).parents[1] / "tasks" / "data" / "form_replay.jsonl"


def prepare_self_replay(recipe: Recipe, base: str | None = None) -> Path | None:
    """Write the replay examples of `recipe.data.replay` (once; cached) and point `data.replay.file` at them.
    `base`: the model whose answers are replayed (default `model.path`, resolved). None without `replay: self`,
    or when the recipe gives its own file."""
    replay = recipe.data.replay
    if replay is None or replay.file is not None:
        return None
    base = base or recipe.model.path
    if not base:
        raise TunelabError("data.replay: self replays the base's own answers: it needs a base model (model.path)",
                           field="data.replay")
    from tunelab.data.templates import recipe_template
    from tunelab.eval.base_answers import answers_path, base_answers
    from tunelab.eval.runner import load_model
    model, tokenizer = load_model(base, recipe.eval.device or recipe.train.device, recipe.eval.precision)
    template = recipe_template(recipe.data).resolve(tokenizer, base)
    prompts = []
    for i, source in enumerate(replay.prompts):
        prompts += _prompts(source, model, tokenizer, template, replay, f"data.replay.prompts.{i}")
    prompts = _unique(prompts)
    answered = base_answers(base, prompts, template, replay.max_new_tokens, recipe.eval.batch_size, model=model,
                            tokenizer=tokenizer, desc="data.replay: self")
    kept = [ex for ex in answered if ex.output.strip()]
    if not kept:
        raise TunelabError(f"the base answered none of the {len(answered)} prompts", field="data.replay.prompts")
    if replay.loops == "cut":
        kept = cut_loops(kept)
    if not kept:
        raise TunelabError(f"every one of the base's {len(answered)} answers loops from its first "
                           f"{MIN_LOOP_START_WORDS} words: nothing is left to replay with loops cut (`keep` replays "
                           "them whole)", field="data.replay.loops")
    ended = sum(ex.meta["finish_reason"] == "stop" for ex in kept)
    log.info(f"data.replay: self — {len(kept)} of the base's answers: {ended} ended by the base, {len(kept) - ended} "
             f"cut (at {replay.max_new_tokens} tokens or where they loop; trained without an end, as the start of a "
             "longer answer)")
    suffix = ".replay.loops-cut.jsonl" if replay.loops == "cut" else ".replay.jsonl"
    out = answers_path(base, template, prompts, replay.max_new_tokens, suffix=suffix)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    write_jsonl(tmp, [{"id": ex.id, "instruction": ex.instruction, "output": ex.output,
                       **({OPEN_END: True} if ex.meta["finish_reason"] != "stop" else {})} for ex in kept])
    tmp.replace(out)
    recipe.data = recipe.data.model_copy(update={"replay": replay.model_copy(update={"file": str(out)})})
    return out


def cut_loops(answers: list) -> list:
    """The base's answers with each loop cut off (`metrics.repetition.before_loop`): a looping answer becomes its start,
    open-ended (`finish_reason` "loop"), or is dropped when fewer than `MIN_LOOP_START_WORDS` words are left."""
    import dataclasses

    from tunelab.metrics.repetition import before_loop, loop_words
    out, cut, dropped = [], 0, 0
    for ex in answers:
        start = before_loop(ex.output)
        if start == ex.output:
            out.append(ex)
        elif len(loop_words(start)) < MIN_LOOP_START_WORDS:
            dropped += 1
        else:
            cut += 1
            out.append(dataclasses.replace(ex, output=start.rstrip(), meta={**ex.meta, "finish_reason": "loop"}))
    log.info(f"data.replay: self — {cut + dropped} of the base's {len(answers)} answers loop (more than half their "
             f"4-grams said twice): {cut} cut where the loop begins, {dropped} dropped (under "
             f"{MIN_LOOP_START_WORDS} words before it)")
    return out


def _prompts(source: str, model, tokenizer, template, replay, field: str):
    from tunelab.tasks.base_agreement import general_prompts, read_prompts
    if source == SHIPPED:
        return general_prompts("train")
    if source == FORMS:
        return read_prompts(FORM_REPLAY_FILE)
    if source == MAGPIE:
        from tunelab.eval.base_answers import self_instructions
        return self_instructions(model, tokenizer, template, replay.magpie_count, replay.seed)
    if not Path(source).is_file():
        raise TunelabError(f"expected {SHIPPED}, {FORMS}, {MAGPIE} or a JSONL file of prompts; no such file", file=source,
                           field=field)
    return read_prompts(source)


def _unique(prompts):
    seen, out = set(), []
    for ex in prompts:
        key = " ".join(ex.instruction.split()).casefold()
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out
