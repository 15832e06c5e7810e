"""Supervised fine-tuning that learns to stop, and the course report (issue 10, parts 2-4).

The `sep` template (question <|sep|> answer EOT, loss on answer and EOT only), the QA split by the corpus's
document split, the rougel task's stop rate from the runner's finish reasons, and the whole course path on a
micro model: `tunelab run` pretrains on a generated encyclopedia corpus (which also splits its QA pairs), then
a fine-tuning recipe whose model.path is that run gets the course report comparing both models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main
from tunelab.data.examples import Example
from tunelab.data.synthetic.qa_split import _question_key
from tunelab.data.templates import PromptTemplate

ARTICLES = 120


@pytest.fixture(scope="module")
def corpus_tokenizer():
    from tunelab.model.tokenizer import train_corpus_tokenizer
    texts = ["红江站位于红江市。", "丰河冷杉属于松科。", "The station opened in 1949."] * 5
    return train_corpus_tokenizer(texts, 320)


def test_sep_template_renders_question_separator_and_chats_the_same(corpus_tokenizer):
    tmpl = PromptTemplate("sep")
    assert tmpl.render("红江站于哪一年开通？") == "红江站于哪一年开通？<|sep|>"
    tok = corpus_tokenizer
    tok.chat_template = tmpl.chat_template()
    prompt = tok.apply_chat_template([{"role": "user", "content": "红江站于哪一年开通？"}], tokenize=False)
    assert prompt == tmpl.render("红江站于哪一年开通？")
    turn = tok.apply_chat_template([{"role": "system", "content": "ignored"},
                                    {"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
                                   tokenize=False)
    assert turn == "问<|sep|>答<|endoftext|>"
    from tunelab.decoding.stops import end_of_turn_id
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_sep_labels_are_the_answer_and_eot_only(corpus_tokenizer):
    from tunelab.data.packing import IGNORE, encode_examples
    tok = corpus_tokenizer
    sep = tok.convert_tokens_to_ids("<|sep|>")
    [enc] = encode_examples(tok, PromptTemplate("sep"), [Example(id="a", instruction="红江站位于哪里？",
                                                                 output="红江市")], 64)
    answer = tok("红江市", add_special_tokens=False)["input_ids"]
    question = tok("红江站位于哪里？", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == question + [sep] + answer + [tok.eos_token_id]   # SEP is one token
    assert enc.labels == [IGNORE] * (len(question) + 1) + answer + [tok.eos_token_id]


def test_rougel_reports_stop_rate_exact_and_samples():
    from tunelab.tasks.registry import get_task
    task = get_task("rougel").configure(segmentation="char", samples=2)
    examples = [Example(id=str(i), instruction=f"问题{i}", output=a)
                for i, a in enumerate(["1949年", "松科", "红江市"])]
    answers = ["1949年", "松科是一种", "红江市的红江市的红江市"]
    graded = [{**task.grade(p, ex), "finish_reason": r}
              for p, ex, r in zip(answers, examples, ["stop", "stop", "length"])]
    m = task.summarize(graded)
    assert m["stop_rate"] == pytest.approx(2 / 3) and m["exact"] == pytest.approx(1 / 3)
    assert m["answer_chars"] == pytest.approx((5 + 5 + 11) / 3)
    assert m["samples"] == [{"id": "0", "question": "问题0", "answer": "1949年", "reference": "1949年",
                             "finish_reason": "stop"},
                            {"id": "1", "question": "问题1", "answer": "松科是一种", "reference": "松科",
                             "finish_reason": "stop"}]
    assert task.summarize([task.grade("x", examples[0])])["stop_rate"] is None   # no finish reasons: unknown
    with pytest.raises(Exception, match="samples"):
        get_task("rougel").configure(samples=-1)


def _pretrain_recipe(tmp: Path) -> Path:
    data = tmp / "data"
    recipe = tmp / "pre.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "pre", "output_dir": str(tmp / "runs"), "model": {"preset": "micro", "from_scratch": True},
        "data": {"max_seq_len": 128, "train": [{"corpus": str(data / "corpus"), "build": {
            "encyclopedia": {"out": str(data / "articles"), "count": ARTICLES, "seed": 0},
            "tokenizer": {"out": str(data / "tokenizer"), "vocab_size": 500},
            "block_size": 128, "val_fraction": 0.15}}]},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 1e-2, "eval_every": 20, "num_checkpoints": 2,
                  "threads": 1, "log_every": 10},
        "eval": {"checkpoints": "last", "tasks": [{"task": "ppl", "source": {"corpus": str(data / "corpus")}}]},
    }, allow_unicode=True), encoding="utf-8")
    return recipe


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The pretraining run (which splits the QA pairs), then the fine-tuning run on it."""
    tmp = tmp_path_factory.mktemp("course")
    assert main(["run", str(_pretrain_recipe(tmp))]) == 0
    qa = tmp / "data" / "sft-qa"
    sft = tmp / "sft.yaml"
    sft.write_text(yaml.safe_dump({
        "name": "sft", "output_dir": str(tmp / "runs"), "model": {"path": str(tmp / "runs" / "pre")},
        "lora": {"enabled": False},
        "data": {"template": "sep", "max_seq_len": 128, "train": [{"path": str(qa / "train.jsonl")}]},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "num_checkpoints": 2, "threads": 1,
                  "log_every": 10},
        "eval": {"batch_size": 16, "max_new_tokens": 24, "checkpoints": "last", "tasks": [
            {"task": "ppl", "source": {"corpus": str(tmp / "data" / "corpus")}},
            {"task": "rougel", "name": "qa", "source": {"path": str(qa / "val.jsonl")}, "limit": 24,
             "options": {"segmentation": "char", "samples": 4}}]},
    }, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(sft)]) == 0
    return tmp


def test_qa_split_follows_the_corpus_split_and_never_trains_a_held_out_question(course, capsys):
    data = course / "data"
    docs = (data / "corpus" / "docs.jsonl").read_text(encoding="utf-8").splitlines()
    split = {d["id"]: d["split"] for d in map(json.loads, docs)}
    qa = [json.loads(line) for line in (data / "articles" / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    out = data / "sft-qa"
    train = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [json.loads(line) for line in (out / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {split[r["source_id"]] for r in train} == {"train"} and {split[r["source_id"]] for r in val} == {"val"}
    assert summary["train"] == len(train) > 0 and summary["val"] == len(val) > 0
    assert not {_question_key(r["instruction"]) for r in train} & {_question_key(r["instruction"]) for r in val}
    in_corpus = [r for r in qa if r["source_id"] in split]
    assert (len(train) + len(val) + summary["train_asking_held_out"] + summary["repeated"] == len(in_corpus)
            and summary["not_in_corpus"] == len(qa) - len(in_corpus))
    expected = {(r["question"], r["answer"]) for r in in_corpus if split[r["source_id"]] == "val"}
    assert {(r["instruction"], r["output"]) for r in val} == expected   # every held-out fact, once
    # the CLI does the same; an existing output is refused in one line
    assert main(["data", "qa-split", str(data / "articles" / "qa.jsonl"), "--corpus", str(data / "corpus"),
                 "--out", str(course / "again")]) == 0
    assert (course / "again" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["data", "qa-split", str(data / "articles" / "qa.jsonl"), "--corpus", str(data / "corpus"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    # pairs whose source_id is no document id (e.g. titles): the error says how many and shows one
    wrong = course / "titles.jsonl"
    wrong.write_text("".join(json.dumps(dict(r, source_id="《" + r["source_id"] + "》"), ensure_ascii=False) + "\n"
                             for r in qa[:5]), encoding="utf-8")
    assert main(["data", "qa-split", str(wrong), "--corpus", str(data / "corpus"), "--out", str(course / "w")]) == 2
    err = capsys.readouterr().err
    assert f"5 of the 5 pairs name no document of the corpus (source_id '《{qa[0]['source_id']}》'" in err


def test_course_run_compares_pretrained_and_fine_tuned(course):
    runs = course / "runs"
    pre = json.loads((runs / "pre" / "metrics.json").read_text(encoding="utf-8"))
    m = json.loads((runs / "sft" / "metrics.json").read_text(encoding="utf-8"))
    assert m["course"] and m["base_run"] == str(runs / "pre") and m["template"] == "sep"
    assert m["base_model"] == str(runs / "pre" / "checkpoints" / pre["best_checkpoint"] / "model")
    # the pretrained model measured here is the pretraining run's best checkpoint: the same perplexity
    pre_ppl = pre["checkpoints"][pre["best_checkpoint"]]["ppl"]["perplexity"]
    assert m["base"]["ppl"]["perplexity"] == pytest.approx(pre_ppl)
    best = m["best_checkpoint"]
    losses = {n: v["loss"] for n, v in m["qa_loss"].items() if n != "base"}
    assert best == min(losses, key=losses.get) and set(m["checkpoints"]) >= {best}
    assert m["qa_loss"]["base"]["step"] == 0 and m["qa_loss"]["base"]["loss"] > m["qa_loss"][best]["loss"]
    base_qa, tuned_qa = m["base"]["qa"], m["checkpoints"][best]["qa"]
    assert base_qa["n"] == tuned_qa["n"] == 24
    # fine-tuning teaches the model to stop: the pretrained one writes on to max_new_tokens
    assert tuned_qa["stop_rate"] > base_qa["stop_rate"] and tuned_qa["stop_rate"] >= 0.75
    assert tuned_qa["answer_chars"] < base_qa["answer_chars"]
    # the finish reasons the rate counts are in the predictions file
    predictions = runs / "sft" / "eval" / best / "qa.predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert sum(r["finish_reason"] == "stop" for r in rows) / len(rows) == pytest.approx(tuned_qa["stop_rate"])
    # the checkpoint carries its template: serve, ui and eval render the question + SEP the same way
    from tunelab.data.templates import load_template
    from tunelab.model.loading import load_tokenizer
    model_dir = runs / "sft" / "checkpoints" / best / "model"
    assert load_template(model_dir).name == "sep"
    assert load_tokenizer(str(model_dir)).apply_chat_template(
        [{"role": "user", "content": "问"}], tokenize=False) == "问<|sep|>"
    assert load_template(runs / "pre" / "checkpoints" / pre["best_checkpoint"] / "model").name == "none"
    report = (runs / "sft" / "report.md").read_text(encoding="utf-8")
    for text in ("## Pretrained vs fine-tuned", "stop rate", "Rouge-L F (24 held-out pairs, char)",
                 "| question | reference | pretrained | fine-tuned |", "![fine-tuning loss", "../pre/loss.png",
                 f"tunelab ui --model sft={runs / 'sft'} --model pretrained={runs / 'pre'}"):
        assert text in report, text
    assert (runs / "sft" / "course.png").stat().st_size > 0
    assert math.isfinite(m["checkpoints"][best]["ppl"]["perplexity"])
