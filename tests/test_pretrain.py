"""Pretraining on a prepared corpus through the trainer: recipe checks, the block row stream, validation loss,
best checkpoint, early stopping, MFU, presets, and resume after a kill.

The corpus is written here directly with `corpus_store.SplitWriter` (blocks of whole sentences, EOT last)
and a tiny BPE tokenizer, so these tests depend on the storage format only, not on `tunelab data corpus`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_recipe

from tunelab.data.corpus.store import FORMAT, CorpusBlocks, SplitWriter, token_dtype
from tunelab.data.packing import IGNORE
from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from tunelab.data.packing import pack_lengths
from tunelab.train.corpus_rows import CorpusRows
from tunelab.train.plots import read_metrics

CITIES = ["北京", "上海", "广州", "成都", "杭州", "Lyon", "Oslo", "Kyoto"]
THINGS = ["火车站", "博物馆", "大学", "公园", "library", "bridge"]


def _documents(n: int, seed: int) -> list[str]:
    """Encyclopedia-like facts that recur, so a tiny model's validation loss can fall."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        city, thing = rng.choice(CITIES), rng.choice(THINGS)
        year = 1900 + (CITIES.index(city) * 7 + THINGS.index(thing) * 13) % 100
        sentences = [f"{city}{thing}（{city} {thing}）建于{year}年。", f"The {thing} of {city} opened in {year}. "]
        sentences += [f"它位于{city}市中心，每年有{rng.randint(1, 9)}万人参观。"
                      for _ in range(rng.randint(0, 3))]
        docs.append(f"{city}{thing}\n\n" + "".join(sentences))
    return docs


def build_corpus(directory: Path, block_size: int = 48, docs: int = 160, val_every: int = 8,
                 vocab: int = 320) -> Path:
    """A corpus directory: sentences packed greedily into blocks of ≤ block_size tokens ending in EOT; every
    `val_every`-th document in the val split (none with 0)."""
    from tunelab.model.tokenizer import train_bpe_tokenizer
    texts = _documents(docs, seed=1)
    tok = train_bpe_tokenizer(texts, vocab)
    directory.mkdir(parents=True)
    tok.save_pretrained(directory / "tokenizer")
    eot = tok.eos_token_id
    dtype = token_dtype(len(tok))
    writers = {s: SplitWriter(directory, s, dtype) for s in ("train", "val")}
    doc_rows = []
    for d, text in enumerate(texts):
        split = "val" if val_every and d % val_every == 0 else "train"
        pieces = [p for p in text.replace("。", "。\n").replace(". ", ". \n").split("\n") if p]
        block: list[int] = []
        for ids in tok(pieces, add_special_tokens=False)["input_ids"]:
            ids = ids[: block_size - 1]
            if block and len(block) + len(ids) + 1 > block_size:
                writers[split].add_blocks(block + [eot], [len(block) + 1], d)
                block = []
            block += ids
        writers[split].add_blocks(block + [eot], [len(block) + 1], d)
        doc_rows.append({"doc": d, "id": str(d), "split": split, "chars": len(text)})
    splits = {s: w.close() for s, w in writers.items()}
    (directory / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in doc_rows), encoding="utf-8")
    meta = {"format": FORMAT, "dtype": dtype, "block_size": block_size, "eot_id": eot,
            "eot_token": tok.eos_token, "vocab_size": len(tok), "tokenizer": {"source": "test"},
            "val_fraction": 1 / val_every if val_every else 0.0, "seed": 0, "splits": splits}
    (directory / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "wiki")


def corpus_sections(corpus: Path, **train) -> dict:
    """Recipe sections: minigpt-tiny from scratch on `corpus`, validating every 5 steps."""
    return {"model": {"preset": "minigpt-tiny", "tokenizer_vocab_size": None},
            "data": {"train": [{"corpus": str(corpus)}], "template": None, "max_seq_len": 96, "packing": True},
            "train": {"max_steps": 30, "batch_size": 4, "lr": 5e-3, "num_checkpoints": 3, "log_every": 5,
                      "eval_every": 5, "peak_tflops": 0.05, **train}}


# --- recipe ------------------------------------------------------------------------------------------

def test_recipe_corpus_source_rules(tmp_path, corpus):
    recipe = load_recipe(write_recipe(tmp_path, "ok", **corpus_sections(corpus)))
    assert recipe.data.corpus == str(corpus) and recipe.data.template == "none"  # a continuation model
    assert recipe.data.sampling == "epoch"

    def error(**sections) -> str:
        with pytest.raises(TunelabError) as e:
            load_recipe(write_recipe(tmp_path, "bad", **sections))
        return str(e.value)

    mixed = {"train": [{"corpus": str(corpus)}, {"generate": "arithmetic", "count": 5}]}
    assert "cannot be mixed" in error(data=mixed)
    assert "exactly one of 'path', 'generate', 'hf' or 'corpus'" in error(
        data={"train": [{"corpus": str(corpus), "generate": "arithmetic"}]})
    assert "needs a corpus source" in error(data={"sampling": "random"})
    assert "train.eval_every needs a corpus" in error(train={"eval_every": 5})
    missing = error(data={"train": [{"corpus": str(tmp_path / "nope")}]})
    assert "nope" in missing and "not found" in missing and "data.train.0.corpus" in missing


# --- the row stream ----------------------------------------------------------------------------------

def test_rows_are_whole_blocks_scored_from_their_second_token(corpus):
    blocks = CorpusBlocks(corpus, "train")
    eot = blocks.eot_id
    rows = CorpusRows(blocks, 48, packing=False, sampling="epoch", seed=3)
    assert rows.rows_per_epoch == len(blocks)
    seen = []
    for row in rows.rows(0, len(blocks)):
        assert row.input_ids[-1] == eot
        assert row.labels == [IGNORE] + row.input_ids[1:]  # EOT scored, first token not
        assert row.position_ids == list(range(len(row.input_ids)))
        seen.append(tuple(row.input_ids))
    # one epoch = every block once, shuffled; the next epoch is another order of the same blocks
    assert sorted(seen) == sorted(tuple(blocks.block(i).tolist()) for i in range(len(blocks)))
    assert seen != [tuple(blocks.block(i).tolist()) for i in range(len(blocks))]
    nxt = [tuple(r.input_ids) for r in rows.rows(len(blocks), len(blocks))]
    assert sorted(nxt) == sorted(seen) and nxt != seen
    # random access equals the stream read in order, and a new stream is the same stream
    assert [r.input_ids for r in rows.rows(7, 5)] == [list(s) for s in seen[7:12]]
    again = CorpusRows(CorpusBlocks(corpus, "train"), 48, packing=False, sampling="epoch", seed=3)
    assert [r.input_ids for r in again.rows(len(blocks) - 2, 4)] == [list(s) for s in (seen[-2:] + nxt[:2])]


def test_packed_rows_hold_whole_blocks_with_positions_restarting(corpus):
    blocks = CorpusBlocks(corpus, "train")
    rows = CorpusRows(blocks, 96, packing=True, sampling="epoch", seed=0)
    n = rows.rows_per_epoch
    assert n < len(blocks)
    epoch = rows.rows(0, n)
    tokens = 0
    for row in epoch:
        assert len(row.input_ids) <= 96
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for a, b in zip(starts, starts[1:] + [len(row.input_ids)]):
            assert row.input_ids[b - 1] == blocks.eot_id and row.labels[a] == IGNORE
            assert row.labels[a + 1: b] == row.input_ids[a + 1: b]
        tokens += len(row.input_ids)
    assert tokens == blocks.num_tokens
    assert rows.padding_pct == pytest.approx(100 * (1 - tokens / (n * 96)))
    unpacked = CorpusRows(blocks, 96, packing=False, sampling="epoch", seed=0)
    assert unpacked.padding_pct > rows.padding_pct + 20


def _first_fit_rows(lengths, max_len, open_rows=8):
    """Rows of the first-fit packer pack_lengths replaced: each length into the oldest of 8 open rows with room."""
    done, rooms = 0, []
    for n in lengths:
        k = next((k for k, room in enumerate(rooms) if room >= n), None)
        if k is None:
            rooms.append(max_len - n)
            if len(rooms) > open_rows:
                rooms.pop(0)
                done += 1
        else:
            rooms[k] -= n
    return done + len(rooms)


def test_pack_lengths_places_every_index_once_and_packs_tighter_than_first_fit():
    rng = random.Random(0)
    lengths = [rng.randint(20, 90) for _ in range(500)]  # like corpus blocks: many over half a row
    rows = pack_lengths(lengths, 100, window=128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    # rows follow the input order: indices ascending in a row, rows by their first index, windows kept apart
    assert all(row == sorted(row) for row in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(len({i // 128 for i in row}) == 1 for row in rows)
    assert len(rows) < 0.95 * _first_fit_rows(lengths, 100)
    assert pack_lengths(lengths, 100, window=128) == rows


def test_random_sampling_is_deterministic_per_row(corpus):
    blocks = CorpusBlocks(corpus, "train")
    for packing in (False, True):
        rows = CorpusRows(blocks, 96, packing=packing, sampling="random", seed=5)
        first = [r.input_ids for r in rows.rows(0, 40)]
        assert [r.input_ids for r in rows.rows(23, 4)] == first[23:27]
        other = CorpusRows(blocks, 96, packing=packing, sampling="random", seed=6)
        assert [r.input_ids for r in other.rows(0, 40)] != first
        assert all(len(r) <= 96 and r[-1] == blocks.eot_id for r in first)
    # with replacement: some block appears twice among more draws than blocks
    drawn = [b for row in CorpusRows(blocks, 48, False, "random", 5).row_blocks(0, 2 * len(blocks)) for b in row]
    assert len(set(drawn)) < len(drawn)


def test_a_block_longer_than_a_row_names_the_setting(corpus):
    with pytest.raises(TunelabError, match="data.max_seq_len to at least 48") as e:
        CorpusRows(CorpusBlocks(corpus, "train"), 40, packing=True)
    assert e.value.field == "data.max_seq_len"


# --- training ----------------------------------------------------------------------------------------

def _val_loss_by_hand(model_dir: Path, corpus: Path) -> float:
    """Mean cross-entropy over the val blocks, one block at a time with the plain HF forward."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    val = CorpusBlocks(corpus, "val")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(val)):
            ids = torch.tensor(val.block(i).astype(np.int64))[None]
            out = model(input_ids=ids, labels=ids)  # HF shifts: every token but the first is a target
            total += out.loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_pretraining_logs_validation_marks_the_best_checkpoint_and_mfu(tmp_path, corpus):
    from tunelab.runs import pick_checkpoint
    from tunelab.train.loop import train
    recipe = load_recipe(write_recipe(tmp_path, "pre", **corpus_sections(corpus, eval_every=4)))
    summary = train(recipe)
    run = recipe.run_dir
    lines = read_metrics(run / "metrics.jsonl")
    train_lines = [r for r in lines if "loss" in r]
    val_lines = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in train_lines] == [5, 10, 15, 20, 25, 30]
    # every eval_every steps and at every checkpoint (10, 20, 30)
    assert [r["step"] for r in val_lines] == [4, 8, 10, 12, 16, 20, 24, 28, 30]
    val_tokens = sum(int(n) - 1 for n in CorpusBlocks(corpus, "val").lengths)
    for r in val_lines:
        assert set(r) == {"step", "val_loss", "val_ppl", "val_tokens"}
        assert r["val_tokens"] == val_tokens and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert val_lines[-1]["val_loss"] < 0.6 * val_lines[0]["val_loss"]  # it learns the recurring facts
    for r in train_lines:
        assert 0 < r["mfu"] == pytest.approx(summary["flops_per_token"] * r["tokens_per_s"] / 0.05e12)

    states = {c.name: json.loads((c / "state.json").read_text()) for c in list_checkpoints(run)}
    by_step = {r["step"]: r["val_loss"] for r in val_lines}
    assert {n: s["val_loss"] for n, s in states.items()} == {n: by_step[s["step"]] for n, s in states.items()}
    best = min(states, key=lambda n: states[n]["val_loss"])
    assert summary["best_checkpoint"] == best and summary["best_val_loss"] == states[best]["val_loss"]
    assert summary["stopped_early_at"] is None and summary["samples"] == len(CorpusBlocks(corpus, "train"))
    assert json.loads((run / "train_summary.json").read_text())["best_checkpoint"] == best
    # the logged validation loss is the plain per-token cross-entropy of the val blocks
    assert _val_loss_by_hand(run / "checkpoints" / best / "model", corpus) == pytest.approx(
        summary["best_val_loss"], rel=1e-4)
    assert (run / "loss.png").stat().st_size > 0
    # the corpus's tokenizer, a continuation template, and pick_checkpoint follows the summary's best
    saved = json.loads((run / "checkpoints" / best / "model" / "tunelab_template.json").read_text())
    assert saved["name"] == "none"
    assert pick_checkpoint(run) == run / "checkpoints" / best / "model"
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": list_checkpoints(run)[0].name}))
    assert pick_checkpoint(run) == list_checkpoints(run)[0] / "model"  # the evaluated best wins
    assert pick_checkpoint(run, "last") == list_checkpoints(run)[-1] / "model"


def test_early_stopping_saves_the_stopping_step_and_resume_keeps_it_stopped(tmp_path, corpus):
    from tunelab.train.loop import train
    # min_delta 100: no validation after the first counts as better; patience 2 stops at the third
    sections = corpus_sections(corpus, max_steps=60, eval_every=3, early_stopping_patience=2,
                               early_stopping_min_delta=100.0, log_every=4)
    recipe = load_recipe(write_recipe(tmp_path, "stop", **sections))
    summary = train(recipe)
    assert summary["stopped_early_at"] == summary["steps"] == 9
    names = [c.name for c in list_checkpoints(recipe.run_dir)]
    assert names == ["step-000009"]  # checkpoints were due at 20, 40, 60
    lines = read_metrics(recipe.run_dir / "metrics.jsonl")
    assert [(r["step"], "loss" in r) for r in lines] == [(3, False), (4, True), (6, False), (8, True),
                                                       (9, True), (9, False)]
    assert summary["best_checkpoint"] == "step-000009"
    again = train(recipe, resume=True)
    assert again == summary
    (recipe.run_dir / "train_summary.json").unlink()  # killed after the last checkpoint, before the summary
    again = train(recipe, resume=True)
    assert again["steps"] == 9 and again["final_loss"] == summary["final_loss"]


def test_a_model_whose_tokenizer_is_not_the_corpus_one_is_refused(tmp_path, corpus):
    from tunelab.model.tokenizer import train_bpe_tokenizer
    from tunelab.train.loop import train
    other = tmp_path / "other-tok"
    train_bpe_tokenizer(["something else entirely"] * 20, 300).save_pretrained(other)
    sections = corpus_sections(corpus)
    sections["model"]["tokenizer"] = str(other)
    with pytest.raises(TunelabError, match="not the one the corpus was prepared with"):
        train(load_recipe(write_recipe(tmp_path, "tok", **sections)))


# --- replaying a corpus while fine-tuning on examples -------------------------------------------------

def _qa_file(path: Path, n: int = 40) -> Path:
    rng = random.Random(3)
    rows = []
    for _ in range(n):
        city, thing = rng.choice(CITIES), rng.choice(THINGS)
        rows.append({"instruction": f"{city}{thing}在哪里？", "input": "", "output": f"在{city}。"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def replay_sections(corpus: Path, qa: Path, replay: float = 0.5, **train) -> dict:
    """Fine-tuning minigpt-tiny (the corpus's tokenizer) on QA pairs, replaying `replay` of the tokens."""
    return {"model": {"preset": "minigpt-tiny", "from_scratch": True, "tokenizer": str(corpus / "tokenizer")},
            "data": {"train": [{"path": str(qa)}, {"corpus": str(corpus), "replay": replay}],
                     "template": "alpaca", "max_seq_len": 96, "packing": True},
            "train": {"max_steps": 4, "batch_size": 4, "lr": 5e-3, "num_checkpoints": 1, "log_every": 2,
                      "peak_tflops": 0.05, **train}}


def test_recipe_replay_rules(tmp_path, corpus):
    qa = _qa_file(tmp_path / "qa.jsonl")
    recipe = load_recipe(write_recipe(tmp_path, "ok", **replay_sections(corpus, qa)))
    assert recipe.data.corpus is None and recipe.data.replay_corpus.corpus == str(corpus)
    assert recipe.data.template == "alpaca"   # fine-tuning keeps its template; only pretraining defaults to none

    def error(data) -> str:
        with pytest.raises(TunelabError) as e:
            load_recipe(write_recipe(tmp_path, "bad", data=data))
        return str(e.value)

    assert "'replay' fraction" in error({"train": [{"corpus": str(corpus)}, {"path": str(qa)}]})
    assert "it goes with 'corpus: DIR'" in error({"train": [{"path": str(qa), "replay": 0.3}]})
    assert "add a path or generate source" in error({"train": [{"corpus": str(corpus), "replay": 0.3}]})
    assert "one corpus to replay" in error({"train": [{"path": str(qa)}, {"corpus": str(corpus), "replay": 0.2},
                                                      {"corpus": str(corpus), "replay": 0.2}]})
    for bad in (0, 1, 1.5, -0.1):
        assert "data.train.1.replay" in error({"train": [{"path": str(qa)}, {"corpus": str(corpus), "replay": bad}]})


def test_replay_blocks_make_the_fraction_of_training_tokens(corpus):
    from tunelab.train.corpus_rows import replay_blocks
    blocks = CorpusBlocks(corpus, "train")
    every = Counter(tuple(blocks.block(i).tolist()) for i in range(len(blocks)))
    for fraction, example_tokens in ((0.1, 500), (0.3, 2000), (0.5, 1234)):
        got = replay_blocks(corpus, fraction, example_tokens, 96, seed=7)
        tokens = [len(b.input_ids) for b in got]
        share = sum(tokens) / (sum(tokens) + example_tokens)
        assert share >= fraction > (sum(tokens) - tokens[-1]) / (sum(tokens) - tokens[-1] + example_tokens)
        drawn = Counter(tuple(b.input_ids) for b in got)   # without replacement (equal texts recur as blocks)
        assert all(n <= every[ids] for ids, n in drawn.items())
        for b in got:   # scored on every token but the first, EOT included
            assert b.labels == [IGNORE] + b.input_ids[1:] and b.input_ids[-1] == blocks.eot_id
        assert [b.input_ids for b in replay_blocks(corpus, fraction, example_tokens, 96, seed=7)] == \
            [b.input_ids for b in got]
    assert [b.input_ids for b in replay_blocks(corpus, 0.3, 2000, 96, seed=8)] != \
        [b.input_ids for b in replay_blocks(corpus, 0.3, 2000, 96, seed=7)]
    assert len(replay_blocks(corpus, 0.99, 10 ** 9, 96, seed=0)) == len(blocks)   # all there is
    with pytest.raises(TunelabError, match="data.max_seq_len to at least 48"):
        replay_blocks(corpus, 0.5, 1000, 40, seed=0)


def test_fine_tuning_with_replay_trains_on_examples_and_corpus_blocks(tmp_path, corpus, caplog):
    from tunelab.data_check import check
    from tunelab.train.loop import train
    qa = _qa_file(tmp_path / "qa.jsonl")
    recipe = load_recipe(write_recipe(tmp_path, "replay", **replay_sections(corpus, qa, replay=0.4)))
    report = check(recipe)
    assert report["count"] == 40 and report["replay"]["blocks"] > 0
    share = report["replay"]["tokens"] / (report["replay"]["tokens"] + sum(len(e.input_ids) for e in report["encoded"]))
    assert 0.4 <= share < 0.5
    caplog.set_level(logging.INFO, logger="tunelab")  # the start-up notes are logged (the CLI prints them)
    summary = train(recipe)
    assert summary["samples"] == 40 and summary["replayed_blocks"] == report["replay"]["blocks"]
    assert f"replay: {report['replay']['blocks']:,} blocks of {corpus}" in caplog.text
    # the rows hold both: more rows than the examples alone fill
    alone = load_recipe(write_recipe(tmp_path, "alone", **{**replay_sections(corpus, qa),
                                                            "data": {"train": [{"path": str(qa)}],
                                                                     "template": "alpaca", "max_seq_len": 96}}))
    assert summary["rows_per_epoch"] > check(alone)["rows"]
    # the next fine-tuning starts from that run (a run directory means its best checkpoint), data check too
    after = replay_sections(corpus, qa)
    after["model"] = {"path": str(recipe.run_dir), "preset": None, "from_scratch": False, "tokenizer": None}
    assert check(load_recipe(write_recipe(tmp_path, "after", **after)))["replay"]["blocks"] > 0

    other = tmp_path / "other-tok"
    from tunelab.model.tokenizer import train_bpe_tokenizer
    train_bpe_tokenizer(["something else entirely"] * 20, 300).save_pretrained(other)
    sections = replay_sections(corpus, qa)
    sections["model"]["tokenizer"] = str(other)
    with pytest.raises(TunelabError, match="not the one the corpus was prepared with"):
        train(load_recipe(write_recipe(tmp_path, "tok", **sections)))


def test_fine_tuning_with_replay_logs_the_replayed_corpus_validation_loss(tmp_path, corpus, caplog):
    """train.eval_every on a replay recipe measures the replayed corpus's val split (the language modelling that
    full SFT can lose): in metrics.jsonl, in every checkpoint's state.json and on loss.png, without marking a
    best checkpoint or stopping early, which stay with the evaluated tasks / pretraining."""
    from tunelab.train.loop import train
    qa = _qa_file(tmp_path / "qa.jsonl")
    recipe = load_recipe(write_recipe(tmp_path, "val", **replay_sections(corpus, qa, eval_every=2, val_blocks=3,
                                                                          num_checkpoints=2)))
    caplog.set_level(logging.INFO, logger="tunelab")  # the start-up notes are logged (the CLI prints them)
    summary = train(recipe)
    assert f"validation: 3 blocks of {corpus}'s val split every 2 steps" in caplog.text
    vals = [r for r in read_metrics(recipe.run_dir / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in vals] == [2, 4] and all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0
                                                       for r in vals)
    states = [json.loads((c / "state.json").read_text(encoding="utf-8")) for c in list_checkpoints(recipe.run_dir)]
    assert [s["val_loss"] for s in states] == [r["val_loss"] for r in vals]
    assert summary["best_checkpoint"] is None and summary["best_val_loss"] is None
    assert (recipe.run_dir / "loss.png").exists()

    def error(**train) -> str:
        with pytest.raises(TunelabError) as e:
            load_recipe(write_recipe(tmp_path, "bad", **replay_sections(corpus, qa, **train)))
        return str(e.value)
    assert "not what fine-tuning optimises" in error(eval_every=2, early_stopping_patience=2)
    checkpoints_only = load_recipe(write_recipe(tmp_path, "ckpts", **replay_sections(corpus, qa, val_blocks=2,
                                                                                  num_checkpoints=2)))
    caplog.clear()
    train(checkpoints_only)
    assert [r["step"] for r in read_metrics(checkpoints_only.run_dir / "metrics.jsonl") if "val_loss" in r] == [2, 4]
    assert "val split at each checkpoint" in caplog.text
    no_replay = replay_sections(corpus, qa, eval_every=2)
    no_replay["data"]["train"] = no_replay["data"]["train"][:1]
    with pytest.raises(TunelabError, match="needs a corpus source"):
        load_recipe(write_recipe(tmp_path, "noreplay", **no_replay))


def test_validation_asked_of_a_corpus_without_a_val_split_is_an_error(tmp_path):
    """eval_every, val_blocks or early stopping on a corpus whose val split is empty (prepared with
    --val-fraction 0) is a one-line error naming the corpus and the setting, for pretraining and for replay;
    without any of them the run trains without validation."""
    from tunelab.train.loop import train
    bare = build_corpus(tmp_path / "noval", val_every=0, docs=40)
    assert len(CorpusBlocks(bare, "val")) == 0
    qa = _qa_file(tmp_path / "qa.jsonl")
    for name, sections, key in (("pre-every", corpus_sections(bare), "eval_every"),
                                ("pre-blocks", corpus_sections(bare, eval_every=None, val_blocks=2), "val_blocks"),
                                ("replay-blocks", replay_sections(bare, qa, val_blocks=2), "val_blocks")):
        with pytest.raises(TunelabError) as e:
            train(load_recipe(write_recipe(tmp_path, name, **sections)))
        assert "no validation blocks" in str(e.value) and str(bare) in str(e.value)
        assert e.value.field == f"train.{key}"
    summary = train(load_recipe(write_recipe(tmp_path, "plain", **replay_sections(bare, qa))))
    assert summary["steps"] == 4 and summary["best_checkpoint"] is None


def test_resume_after_sigkill_matches_the_uninterrupted_corpus_run(tmp_path, corpus):
    from test_resume_ddp import _finished_checkpoints, _start_and_kill_after

    from tunelab.cli import main
    from tunelab.train.loop import train
    # random sampling, packed rows; log_every 7, eval_every 6 and checkpoints every 8 all fall apart
    sections = corpus_sections(corpus, max_steps=48, num_checkpoints=6, log_every=7, eval_every=6,
                               early_stopping_patience=50)
    sections["data"]["sampling"] = "random"
    ref_path = write_recipe(tmp_path / "ref", "pre", **sections)
    ref = train(load_recipe(ref_path))
    ref_dir = load_recipe(ref_path).run_dir

    path = write_recipe(tmp_path / "killed", "pre", **sections)
    run_dir = load_recipe(path).run_dir
    assert _start_and_kill_after(path, 2, run_dir) == -signal.SIGKILL
    at_kill = _finished_checkpoints(run_dir)
    assert 2 <= len(at_kill) < 6 and not (run_dir / "train_summary.json").exists()
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:  # a kill in the middle of a log line
        f.write('{"step": 47, "loss": 1.2')
    assert main(["train", str(path), "--resume"]) == 0
    got = json.loads((run_dir / "train_summary.json").read_text())
    assert got["resumed_from"] >= 16
    for key in ("final_loss", "best_val_loss"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6)
    assert got["best_checkpoint"] == ref["best_checkpoint"]
    keys = ("step", "epoch", "loss", "lr", "grad_norm", "val_loss", "val_tokens")

    def lines(d):
        return [tuple(r.get(k) for k in keys) for r in read_metrics(d / "metrics.jsonl")]
    assert len(lines(run_dir)) == len(lines(ref_dir))
    for g, w in zip(lines(run_dir), lines(ref_dir)):
        assert g == pytest.approx(w, abs=1e-6)


# --- presets and MFU ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, vocab, total, blocks", [
    ("minigpt-124m", 50257, 123_551_232, 84_953_856),
    ("minigpt-25m", 6400, 28_582_400, 25_305_600),
    ("minigpt-tiny", 2000, 228_672, 100_672),
])
def test_minigpt_presets_parameter_counts(name, vocab, total, blocks):
    from tunelab.model.presets import build_on_meta, preset_config
    model = build_on_meta(preset_config(name, vocab_size=vocab))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as GPT-2
    n = sum(p.numel() for p in model.parameters())
    assert (n, n - model.model.embed_tokens.weight.numel()) == (total, blocks)


def test_flops_per_token_is_nanogpt_estimate_and_counts_frozen_weights_as_four():
    from transformers import AutoModelForCausalLM

    from tunelab.model.presets import preset_config
    from tunelab.train.mfu import flops_per_token
    cfg = preset_config("minigpt-tiny", vocab_size=300)
    model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once, as the output head
    assert flops_per_token(model, 128) == 6 * n + 12 * 2 * 64 * 128
    for p in model.parameters():
        p.requires_grad_(False)
    assert flops_per_token(model, 128) == 4 * n + 12 * 2 * 64 * 128
    untied = AutoModelForCausalLM.from_config(preset_config("micro", vocab_size=300))
    lookup = untied.model.embed_tokens.weight.numel()
    assert flops_per_token(untied, 8) == 6 * (sum(p.numel() for p in untied.parameters()) - lookup) + 12 * 2 * 64 * 8


def test_peak_is_the_best_this_machine_measured(tmp_path, monkeypatch):
    """A peak measured while other work shares the cores reads low; the best one measured before is kept."""
    from tunelab.train.mfu import _remember_best
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _remember_best("cpu|bf16|2", 0.8) == 0.8
    assert _remember_best("cpu|bf16|2", 0.2) == 0.8          # a busy machine's measurement does not win
    assert _remember_best("cpu|bf16|1", 0.4) == 0.4          # another setting has its own figure
    assert _remember_best("cpu|bf16|2", 0.9) == 0.9
    (tmp_path / "tunelab" / "peak_tflops.json").write_text("{not json", encoding="utf-8")
    assert _remember_best("cpu|bf16|2", 0.3) == 0.3          # a damaged store is ignored, then rewritten
    assert _remember_best("cpu|bf16|2", 0.1) == 0.3
