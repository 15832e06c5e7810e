"""`tunelab data prefs`: preference pairs from an arena database (real votes written by the arena's store) and from
the public file shapes, repeats merged, split by prompt, bad records named by file, line and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.data.preferences import (PreferencePair, arena_pairs, build_preferences, file_pairs, merge_pairs,
                                      split_by_prompt)
from tunelab.errors import TunelabError
from tunelab.serve.arena import ArenaStore


def arena(tmp_path: Path) -> Path:
    db = tmp_path / "votes.db"
    store = ArenaStore(db)
    votes = [  # (model_a, model_b, vote, prompt, answer_a, answer_b, anonymous)
        ("sft", "base", "left", "1+1=?", "2", "3", True),
        ("sft", "base", "left", "1+1=?", "2", "3", True),          # the same pair again: merged
        ("base", "sft", "right", "中国的首都是哪里？", "上海", "北京", True),
        ("sft", "base", "tie", "2+2=?", "4", "4.0", True),
        ("sft", "base", "both_bad", "3+3=?", "5", "7", True),
        ("sft", "base", "left", "named?", "yes", "no", False),    # names shown: left out by default
        ("a", "b", "left", "x?", "p", "q", True),                  # voted both ways, 1 : 2 -> q wins
        ("a", "b", "right", "x?", "p", "q", True),
        ("b", "a", "left", "x?", "q", "p", True),
        ("a", "b", "left", "y?", "r", "s", True),                  # 1 : 1 -> dropped
        ("a", "b", "right", "y?", "r", "s", True),
        ("a", "b", "left", "z?", "same", "same", True),            # nothing to learn
    ]
    for i, (ma, mb, vote, prompt, aa, ab, anon) in enumerate(votes):
        assert store.record(ma, mb, vote, prompt, aa, ab, anonymous=anon, battle=f"b{i}") is not None
    store.close()
    return db


def test_arena_votes_become_pairs(tmp_path):
    pairs, skipped = arena_pairs(arena(tmp_path))
    assert skipped == {"tie": 1, "both_bad": 1, "named": 1}
    assert len(pairs) == 9
    capital = next(p for p in pairs if p.prompt == "中国的首都是哪里？")
    assert (capital.chosen, capital.rejected) == ("北京", "上海")
    assert capital.meta["chosen_model"] == "sft" and capital.meta["rejected_model"] == "base"
    named, _ = arena_pairs(tmp_path / "votes.db", named=True)
    assert len(named) == 10


def test_repeats_merge_and_the_majority_wins(tmp_path):
    merged, dropped = merge_pairs(arena_pairs(arena(tmp_path))[0])
    by_prompt = {p.prompt: p for p in merged}
    assert set(by_prompt) == {"1+1=?", "中国的首都是哪里？", "x?"}
    assert by_prompt["1+1=?"].meta["votes"] == 2 and by_prompt["1+1=?"].meta["battles"] == ["b0", "b1"]
    x = by_prompt["x?"]
    assert (x.chosen, x.rejected, x.meta["votes"], x.meta["against"]) == ("q", "p", 2, 1)
    assert dropped == {"same answers": 1, "voted both ways evenly": 2, "merged repeats": 2, "outvoted": 1}


def test_the_split_keeps_each_prompt_on_one_side():
    pairs = [PreferencePair(f"问题 {i // 3}", f"good {i}", f"bad {i}") for i in range(300)]
    train, val = split_by_prompt(pairs, 0.2, seed=1)
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert len(train) + len(val) == 300 and 0.1 < len({p.prompt for p in val}) / 100 < 0.3
    assert split_by_prompt(pairs, 0.2, seed=1) == (train, val)  # reproducible
    # adding data does not move a prompt across the split
    more_train, more_val = split_by_prompt(pairs + [PreferencePair("新问题", "a", "b")], 0.2, seed=1)
    assert {p.prompt for p in val} <= {p.prompt for p in more_val}
    # a tiny set still holds one prompt out
    _, tiny_val = split_by_prompt(pairs[:6], 0.1)
    assert len({p.prompt for p in tiny_val}) == 1


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")  # JSON escapes: a lone surrogate too
    return path


def test_every_public_shape_reads(tmp_path):
    hh = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Just the number.\n\nAssistant: "
    records = [
        {"prompt": "1+1=?", "chosen": "2", "rejected": "3"},
        {"prompt": [{"role": "user", "content": "你好"}], "chosen": [{"role": "assistant", "content": "你好！"}],
         "rejected": [{"role": "assistant", "content": "走开"}]},
        {"prompt": "Name a color.",  # UltraFeedback-binarized: whole conversations
         "chosen": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Seven."}],
         "score_chosen": 8.0, "score_rejected": 2.0},
        {"chosen": hh + "4", "rejected": hh + "5"},
    ]
    pairs = file_pairs(write_jsonl(tmp_path / "prefs.jsonl", records))
    assert [(p.chosen, p.rejected) for p in pairs] == [("2", "3"), ("你好！", "走开"), ("Blue.", "Seven."), ("4", "5")]
    assert pairs[2].prompt == [{"role": "user", "content": "Name a color."}]
    assert pairs[3].prompt == [{"role": "user", "content": "What is 2+2?"},
                               {"role": "assistant", "content": "Let me think."},
                               {"role": "user", "content": "Just the number."}]
    assert pairs[0].meta["source"] == "prefs.jsonl:1"


@pytest.mark.parametrize("record, field, says", [
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing field"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "expected a text or a list of chat messages"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "prompt.0.role", "unknown role 'bot'"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "one assistant message"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]}, "chosen",
     "share no prompt turns"),
    ({"chosen": "just text", "rejected": "other text"}, "prompt", "no prompt"),
    ({"prompt": "q", "chosen": "\ud800", "rejected": "b"}, "chosen", "lone surrogate"),
])
def test_a_bad_record_names_its_line_and_field(tmp_path, record, field, says):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(TunelabError) as e:
        file_pairs(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, field) and says in e.value.message


def test_build_writes_the_split_and_its_summary(tmp_path):
    out = tmp_path / "prefs"
    extra = write_jsonl(tmp_path / "more.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"}
                                                  for i in range(20)])
    summary = build_preferences(out, arena=arena(tmp_path), files=[extra], val_fraction=0.25)
    train = [json.loads(line) for line in (out / "train.jsonl").open(encoding="utf-8")]
    val = [json.loads(line) for line in (out / "val.jsonl").open(encoding="utf-8")]
    assert summary["pairs"] == len(train) + len(val) == 23 and summary["read"] == 32 and summary["left_out"] == 9
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in val}
    assert json.loads((out / "summary.json").read_text()) == summary
    with pytest.raises(TunelabError, match="exists"):
        build_preferences(out, files=[extra])


def test_cli_prints_counts_and_errors_in_one_line(tmp_path):
    db = arena(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "prefs", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=tmp_path)
    r = run("--arena", str(db), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "12 records read, 3 preference pairs written" in r.stdout and "tie 1" in r.stdout and "named 1" in r.stdout
    assert "9 left out: both_bad 1, merged repeats 2, named 1, outvoted 1, same answers 1, tie 1" in r.stdout
    r = run("--out", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stderr.strip() == ("tunelab: error: --arena: nothing to read: give an arena "
                                                      "database, preference files or sampled answers")
    (tmp_path / "notdb").write_text("hello", encoding="utf-8")
    r = run("--arena", str(tmp_path / "notdb"), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "not a readable SQLite database" in r.stderr and "Traceback" not in r.stderr


def test_judgments_become_pairs_and_ties_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "verdicts.jsonl", [
        {"prompt": "1+1=?", "answer_a": "2", "answer_b": "3", "reference": "2", "verdict": "A"},
        {"prompt": "2+2=?", "answer_a": "5", "answer_b": "4", "reference": "4", "verdict": "B"},
        {"prompt": "3+3=?", "answer_a": "6", "answer_b": "6", "reference": "6", "verdict": "tie"}])
    summary = build_preferences(tmp_path / "out", files=[path], val_fraction=0)
    assert summary["skipped"] == {"judged tie": 1} and summary["pairs"] == 2 and summary["read"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").open()]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("1+1=?", "2", "3"), ("2+2=?", "4", "5")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "answer_a": "a", "answer_b": "b", "verdict": "C"}])
    with pytest.raises(TunelabError, match="expected a verdict A, B or tie") as e:
        file_pairs(bad)
    assert (e.value.line, e.value.field) == (1, "verdict")


def test_an_arena_database_given_as_a_preference_file_points_to_arena(tmp_path, capsys):
    """`tunelab data prefs votes.db` said "votes.db:1: not UTF-8 text (bad byte 0xce …)"; the flag it needed is
    --arena, and the line says so."""
    from tunelab.cli import main
    db = arena(tmp_path)
    assert main(["data", "prefs", str(db), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"tunelab: error: {db}: a SQLite database, not JSON or JSONL text; an "
                                       "arena's votes database is read with --arena\n")
    assert not (tmp_path / "out").exists()


def judgment(prompt: str, a: str, b: str, verdict: str, orders: tuple) -> dict:
    return {"prompt": prompt, "answer_a": a, "answer_b": b, "reference": None, "a_first": orders[0],
            "b_first": orders[1], "verdict": verdict}


def test_the_counts_say_what_was_read_written_and_left_out_and_why(tmp_path, capsys):
    """6,048 judged records, nearly all ties, printed "16 preference pairs from 16 read": `read` counted the
    pairs. Now every record read is either a pair written or left out under its reason, and the numbers add up."""
    from tunelab.cli import main
    from tunelab.judge import Judged, write_to_arena
    db = arena(tmp_path)  # tie 1, both_bad 1, named 1; same answers 1, merged repeats 2, outvoted 1, evenly 2
    write_to_arena(db, [Judged("j?", "a", "b", None, ("A", "A"), "A")], "judge-model", "m1", "m2")  # judge 1
    judged = write_jsonl(tmp_path / "judged.jsonl", [
        judgment("5+5=?", "10", "11", "A", ("A", "A")),                  # a pair
        judgment("6+6=?", "13", "12", "B", ("B", "B")),                  # a pair
        judgment("6+6=?", "13", "12", "B", ("B", "B")),                  # the same again: merged repeats
        judgment("7+7=?", "14", "14", "tie", ("tie", "tie")),            # judged tie
        judgment("8+8=?", "16", "61", "tie", ("A", "B")),                # judge's two orders disagreed
        judgment("9+9=?", "18", "81", "tie", (None, "A")),               # judge gave no verdict
        judgment("9+8=?", "17", "71", "tie", (None, None)),              # judge gave no verdict
        judgment("4+4=?", "8", "8", "A", ("A", "A")),                    # same answers
    ])
    out = tmp_path / "out"
    assert main(["data", "prefs", str(judged), "--arena", str(db), "--out", str(out), "--val-fraction", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == {"tie": 1, "both_bad": 1, "named": 1, "judge": 1, "judged tie": 1,
                                  "judge's two orders disagreed": 1, "judge gave no verdict": 2}
    assert summary["dropped"] == {"same answers": 2, "merged repeats": 3, "outvoted": 1, "voted both ways evenly": 2}
    assert summary["read"] == 13 + 8 and summary["pairs"] == 5 and summary["train"] == 5
    assert summary["read"] == summary["pairs"] + summary["left_out"]
    assert summary["left_out"] == sum(summary["skipped"].values()) + sum(summary["dropped"].values())
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"21 records read, 5 preference pairs written: 5 for training (5 prompts), 0 held out (0 prompts) -> {out}",
        "16 left out: both_bad 1, judge 1, judge gave no verdict 2, judge's two orders disagreed 1, judged tie 1, "
        "merged repeats 3, named 1, outvoted 1, same answers 2, tie 1, voted both ways evenly 2"]
