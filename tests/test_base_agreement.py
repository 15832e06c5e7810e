"""The base's own answers: `base_agreement` (scored by likelihood, cached by the base's weights) and `data.replay:
self` (trained on), on a SmolLM2-shaped tiny model in its own ChatML; retention judged on every checkpoint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_archs import build_smol  # noqa: E402

from tunelab.data.examples import Example  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return build_smol(tmp_path_factory.mktemp("smol") / "smol")


def _loaded(path):
    from tunelab.data.templates import AUTO, PromptTemplate
    from tunelab.eval.runner import load_model
    model, tok = load_model(path, "cpu", "fp32")
    return model, tok, PromptTemplate(AUTO).resolve(tok, path)


PROMPTS = [Example(id=f"p{i}", instruction=text, output="") for i, text in
           enumerate(["Write one sentence about autumn.", "用一句话介绍你自己。", "Tell me a short story.", "你好"])]


def test_answers_are_generated_once_then_read_from_the_cache(smol, monkeypatch):
    from tunelab.eval import base_answers as ba
    model, tok, template = _loaded(smol)
    first = ba.base_answers(smol, PROMPTS, template, 12, 4, model=model, tokenizer=tok)
    assert [ex.id for ex in first] == [ex.id for ex in PROMPTS]
    assert all(ex.meta["finish_reason"] in ("stop", "length") for ex in first)
    monkeypatch.setattr("tunelab.decoding.embedded.complete_batched",
                        lambda *a, **k: pytest.fail("the cached answers were generated again"))
    again = ba.base_answers(smol, PROMPTS, template, 12, 4)
    assert [(a.output, a.meta) for a in again] == [(a.output, a.meta) for a in first]
    # another length, another system prompt, other weights: another key
    key = ba.cache_key(ba.weights_fingerprint(smol), template, PROMPTS, 12)
    assert ba.cache_key(ba.weights_fingerprint(smol), template, PROMPTS, 13) != key
    from dataclasses import replace
    assert ba.cache_key(ba.weights_fingerprint(smol), replace(template, system="Be terse."), PROMPTS, 12) != key
    assert ba.cache_key(ba.weights_fingerprint(smol), template, PROMPTS[:3], 12) != key


def test_the_fingerprint_is_of_the_weights_contents(tmp_path, smol):
    import shutil

    from tunelab.eval.base_answers import weights_fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(smol, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(smol)  # the same weights elsewhere: the same answers
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != weights_fingerprint(smol)


def test_the_continuation_is_the_answer_and_the_templates_end_of_turn(smol):
    from tunelab.eval.base_answers import answer_continuation
    _, tok, template = _loaded(smol)
    ex = Example(id="x", instruction="Hi", output="")
    assert answer_continuation(template, ex, "Hello there.", ended=True) == "Hello there.<|im_end|>"
    assert answer_continuation(template, ex, "Hello th", ended=False) == "Hello th"  # a cut answer has no end


def test_agreement_is_the_pooled_per_token_probability():
    from tunelab.metrics.loglik import LoglikResult
    from tunelab.tasks.registry import get_task
    task = get_task("base_agreement")
    items = [task.grade_loglik([LoglikResult(-2.0, False, 4)], Example(id="a", instruction="", output="", kind="en")),
             task.grade_loglik([LoglikResult(-1.0, True, 1)], Example(id="b", instruction="", output="", kind="zh"))]
    s = task.summarize(items)
    assert s["agreement"] == pytest.approx(100 * math.exp(-3.0 / 5))
    assert s["greedy_answers"] == 50.0 and s["tokens"] == 5
    assert s["by_language"]["zh"]["agreement"] == pytest.approx(100 * math.exp(-1.0))


def test_the_base_agrees_with_itself_more_than_another_model(smol, tmp_path):
    """A model that is not the base (other weights, same tokenizer) gives the base's answers a lower likelihood."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.eval.runner import evaluate_model_dir
    from tunelab.eval.sets import EvalSet
    from tunelab.tasks.registry import get_task
    import shutil
    other = tmp_path / "other"
    shutil.copytree(smol, other)  # the tokenizer and chat template; weights drawn afresh
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(smol).config).save_pretrained(other)
    task = get_task("base_agreement").configure(base=str(smol), max_answer_tokens=12)
    sets = {"base_agreement": EvalSet(task, PROMPTS, "loglik")}
    own = evaluate_model_dir(smol, sets, tmp_path / "own", 4, 12, write_results=False, device="cpu")
    theirs = evaluate_model_dir(other, sets, tmp_path / "theirs", 4, 12, write_results=False, device="cpu")
    assert own["base_agreement"]["agreement"] > theirs["base_agreement"]["agreement"]
    assert own["base_agreement"]["retained_by"] == {"agreement": 1.0}


def test_user_prompts_and_their_errors(tmp_path):
    from tunelab.tasks.registry import get_task
    task = get_task("base_agreement")
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "Say hi."}\n{"prompt": "讲个笑话。", "id": "j"}\n', encoding="utf-8")
    exs = task.load_examples(good)
    assert [(e.instruction, e.kind) for e in exs] == [("Say hi.", "en"), ("讲个笑话。", "zh")] and exs[1].id == "j"
    bad = tmp_path / "bad.jsonl"
    for wrong in ('["a"]', '" "'):
        bad.write_text('{"prompt": "ok"}\n{"prompt": %s}\n' % wrong, encoding="utf-8")
        with pytest.raises(TunelabError) as e:
            task.load_examples(bad)
        assert e.value.line == 2 and e.value.field == "prompt" and e.value.file is not None
    with pytest.raises(TunelabError):
        task.configure(max_answer_tokens=0)


def test_shipped_prompts_split_eval_from_replay():
    from tunelab.tasks.base_agreement import general_prompts
    ev, tr = general_prompts("eval"), general_prompts("train")
    assert len(ev) >= 60 and len(tr) >= 200
    assert {e.kind for e in ev} == {"en", "zh"}
    assert not {e.instruction for e in ev} & {e.instruction for e in tr}


def test_best_checkpoint_keeps_the_abilities():
    from tunelab.pipeline.competition import best_kept
    from tunelab.tasks.registry import get_task
    acc = get_task("arithmetic")
    per = {"checkpoint-1": {"a": {"accuracy": 0.5}}, "checkpoint-2": {"a": {"accuracy": 0.7}},
           "checkpoint-3": {"a": {"accuracy": 0.8}}}
    kept = {"checkpoint-1": {"r": {"pass": True}}, "checkpoint-2": {"r": {"pass": True}},
            "checkpoint-3": {"r": {"pass": False}}}
    assert best_kept(per, "a", acc, kept) == ("checkpoint-2", "a.accuracy among checkpoints whose retention passes")
    assert best_kept(per, "a", acc, {})[0] == "checkpoint-3"
    failing = {k: {"r": {"pass": False}} for k in per}
    assert best_kept(per, "a", acc, failing) == ("checkpoint-3", "a.accuracy (no checkpoint keeps the abilities)")


def test_retention_reads_each_tasks_own_metrics():
    from tunelab.eval.retention import retention
    base = {"ba": {"agreement": 80.0, "retained_by": {"agreement": 1.0}},
            "ins": {"prompt_level_strict_acc": 0.30, "retained_by": {"prompt_level_strict_acc": 100.0}}}
    tuned = {"ba": {"agreement": 76.0, "retained_by": {"agreement": 1.0}},
             "ins": {"prompt_level_strict_acc": 0.09, "retained_by": {"prompt_level_strict_acc": 100.0}}}
    r = retention(base, tuned, ["ba", "ins"], 0.9)
    assert r["ba.agreement"]["retained"] == pytest.approx(0.95) and r["ba.agreement"]["pass"]
    assert r["ins.prompt_level_strict_acc"]["retained"] == pytest.approx(0.3)
    assert r["ins.prompt_level_strict_acc"]["base"] == pytest.approx(30.0)  # on 0-100, where min_base is
    assert not r["ins.prompt_level_strict_acc"]["pass"]


def test_a_run_replays_the_bases_answers_and_judges_every_checkpoint(tiny_base, make_recipe, tmp_path):
    """`tunelab run` with `data.replay: self` (the user's prompts) and base_agreement as an ability: the replay
    examples prepared (cached, marked), base_agreement judged on every checkpoint against the base, the report's
    table with a retention column."""
    from tunelab.data.sources import training_examples
    from tunelab.pipeline import run
    from tunelab.recipe import load_recipe
    from conftest import lora_sections
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["12 + 30 = ?", "7 - 3 = ?", "用一句话介绍你自己。", "Say hi.", "5 + 5", "9 - 1"]))
    sections = lora_sections(tiny_base, max_steps=4, num_checkpoints=2)
    sections["data"]["replay"] = {"count": 5, "max_new_tokens": 24, "prompts": [str(prompts)]}
    path = make_recipe("replay", **sections, eval={"baseline": True, "batch_size": 8, "max_new_tokens": 8, "tasks": [
        {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 4, "seed": 9}},
        {"task": "base_agreement", "ability": True, "limit": 6, "options": {"max_answer_tokens": 16}}]})
    recipe = load_recipe(path)
    metrics = run(recipe)
    replay_file = Path(recipe.data.replay.file)
    assert replay_file.is_file() and replay_file.parent.name == "base-answers"
    replayed = [ex for ex in training_examples(recipe) if ex.meta.get("replay")]
    assert len(replayed) == 5 and all(ex.kind == "replay-self" and ex.output.strip() for ex in replayed)
    kept = metrics["retention_by_checkpoint"]
    assert set(kept) == set(metrics["checkpoints"])
    assert all("base_agreement.agreement" in k["entries"] for k in kept.values())
    report = (recipe.run_dir / "report.md").read_text(encoding="utf-8")
    assert "| checkpoint | retention |" in report and "Best checkpoint: by" in report
    saved = json.loads((recipe.run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert saved["base"]["base_agreement"]["agreement"] > 0
    assert (recipe.run_dir / "recipe.yaml").read_text(encoding="utf-8").count(str(replay_file)) == 1



def test_replay_cuts_the_bases_loops_where_they_begin():
    """`data.replay.loops: cut`: a looping answer of the base's is replayed up to where its loop begins and without an
    end of turn; one with too little before its loop is dropped; the others are replayed as they were."""
    from tunelab.data.examples import Example
    from tunelab.pipeline.self_replay import cut_loops
    healthy = Example("a", "Describe a cat.", "A cat is a small furry animal that likes to sleep in the sun.",
                      meta={"finish_reason": "stop"})
    letter = ("Dear Sam,\n\nThank you so much for helping me move last weekend. I could not have carried the sofa "
              "up three floors without you.\n\n")
    looping = Example("b", "Write a thank-you note.", letter + "I am here to help you. " * 30,
                      meta={"finish_reason": "length"})
    hopeless = Example("c", "列出五种蔬菜。", "1. **鸟肉茶**\n" * 40, meta={"finish_reason": "length"})
    kept = cut_loops([healthy, looping, hopeless])
    assert [ex.id for ex in kept] == ["a", "b"] and kept[0] is healthy
    assert kept[1].output.startswith(letter.strip()) and kept[1].output.count("I am here to help you") <= 1
    assert kept[1].meta["finish_reason"] == "loop" and looping.meta["finish_reason"] == "length"

def test_a_replay_whose_every_answer_loops_says_so(smol, make_recipe, tmp_path, monkeypatch):
    """With `loops: cut`, a base whose every answer loops from its start leaves nothing to replay: the error names the
    loops option, not the prompts (the base did answer them)."""
    from tunelab.pipeline.self_replay import prepare_self_replay
    from tunelab.recipe import load_recipe
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hi.", "列出五种水果。"]))
    looped = [Example(id=f"p{i}", instruction="q", output="the same words " * 40, meta={"finish_reason": "length"})
              for i in range(2)]
    monkeypatch.setattr("tunelab.eval.base_answers.base_answers", lambda *a, **k: looped)
    recipe = load_recipe(make_recipe("loops", model={"path": str(smol), "preset": None, "from_scratch": False},
                                     data={"train": [{"generate": "arithmetic", "count": 4}],
                                           "replay": {"count": 2, "prompts": [str(prompts)], "loops": "cut"}}))
    with pytest.raises(TunelabError) as e:
        prepare_self_replay(recipe)
    assert e.value.field == "data.replay.loops" and "answers loops" in str(e.value)


def test_replay_needs_its_prepared_file(make_recipe):
    from tunelab.data.sources import training_examples
    from tunelab.recipe import load_recipe
    recipe = load_recipe(make_recipe("r", data={"replay": "self"}))
    with pytest.raises(TunelabError) as e:
        training_examples(recipe)
    assert e.value.field == "data.replay"


def test_an_open_ended_answer_trains_without_an_end(smol):
    """A replayed answer the base had not finished trains its tokens and no end of turn; the others as ever, in
    the model's own template."""
    from transformers import AutoTokenizer

    from tunelab.data.packing import IGNORE, OPEN_END, encode_examples
    from tunelab.data.templates import PromptTemplate
    tok = AutoTokenizer.from_pretrained(smol)
    template = PromptTemplate("model").bind(tok)
    done = Example(id="a", instruction="Say hi.", output="Hi there.")
    cut = Example(id="b", instruction="Tell me a story.", output="Once upon a time", meta={OPEN_END: True})
    plain, open_ = encode_examples(tok, template, [done, cut], 256)
    assert encode_examples(tok, template, [done], 256)[0] == plain  # the finished one is unchanged
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in [t for t in plain.labels if t != IGNORE]
    trained = [t for t in open_.labels if t != IGNORE]
    assert tok.decode(trained) == "Once upon a time" and end not in trained
    assert tok.decode(open_.input_ids).startswith(template.render_prompt(cut))


def test_a_replayed_answer_too_long_for_a_row_keeps_its_prompt_and_start(smol):
    """Cut from its end (the start of a longer answer, no end trained), so it still answers its question and the
    template's header stays every sample's shared prefix; a task's long sample is cut from its start as before."""
    from transformers import AutoTokenizer

    from tunelab.data.packing import IGNORE, OPEN_END, encode_examples, shared_prefix
    from tunelab.data.templates import PromptTemplate
    tok = AutoTokenizer.from_pretrained(smol)
    template = PromptTemplate("model").bind(tok)
    story = " ".join(f"word{i}" for i in range(400))
    task = Example(id="t", instruction="Copy: " + story, output="Done.")
    ended = Example(id="a", instruction="Tell a long story.", output=story, meta={"replay": "self"})
    open_ = Example(id="b", instruction="Tell a longer story.", output=story, meta={"replay": "self", OPEN_END: True})
    short = Example(id="c", instruction="Say hi.", output="Hi.", meta={"replay": "self"})
    cut_task, cut_ended, cut_open, kept = encode_examples(tok, template, [task, ended, open_, short], 96)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for enc, ex in ((cut_ended, ended), (cut_open, open_)):
        assert enc.truncated and len(enc.input_ids) == 96
        assert tok.decode(enc.input_ids).startswith(template.render_prompt(ex))
        trained = [t for t in enc.labels if t != IGNORE]
        assert story.startswith(tok.decode(trained).strip()) and end not in trained
    assert cut_task.truncated and tok.decode(cut_task.input_ids).endswith("Done.<|im_end|>\n")
    assert not tok.decode(cut_task.input_ids).startswith("<|im_start|>system")
    assert not kept.truncated and end in kept.labels
    assert shared_prefix([cut_ended, cut_open, kept]) >= 4  # the system turn and the user header, held once a row


def test_magpie_draws_requests_from_the_user_turn_header(smol, monkeypatch):
    """`prompts: [magpie]`: the base continues its template's user-turn header (system turn included); what it
    writes and ends is a request, cached by weights, header, count and seed."""
    import torch

    from tunelab.eval import base_answers as ba
    model, tok, template = _loaded(smol)
    assert ba.user_turn_header(template) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                             "<|im_start|>user\n")
    rows = [tok("Write a poem about the sea.", add_special_tokens=False)["input_ids"],
            tok("no end", add_special_tokens=False)["input_ids"], [], tok("Hi", add_special_tokens=False)["input_ids"]]
    drawn = {}

    def fake_rows(model, prompts, max_new_tokens, stops, pad_id, batch_size, sampling=None, generators=None):
        drawn.update(prompts=prompts, temperatures={p.temperature for p in sampling},
                     seeds=[g.initial_seed() for g in generators])
        return rows, [True, False, True, True]
    monkeypatch.setattr("tunelab.decoding.embedded.decode_rows", fake_rows)
    got = ba.self_instructions(model, tok, template, 4, seed=3)
    header_ids = tok(ba.user_turn_header(template), add_special_tokens=False)["input_ids"]
    assert drawn["prompts"] == [header_ids] * 4 and drawn["temperatures"] == {1.0}
    assert len(set(drawn["seeds"])) == 4  # each row its own generator
    # not ended, empty, or shorter than 8 characters: dropped
    assert [e.instruction for e in got] == ["Write a poem about the sea."] and got[0].kind == "en"
    monkeypatch.setattr("tunelab.decoding.embedded.decode_rows", lambda *a, **k: pytest.fail("not cached"))
    assert [e.instruction for e in ba.self_instructions(model, tok, template, 4, seed=3)] == [got[0].instruction]
