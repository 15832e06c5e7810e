"""Every record format read into Example, convert → read round trips, and errors that say where."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.data.convert import convert_record
from tunelab.data.examples import Example
from tunelab.data.formats import examples_from_records, read_examples, reading_instruction
from tunelab.data.templates import COT_SUFFIX, PromptTemplate
from tunelab.errors import TunelabError
from tunelab.records import write_json, write_jsonl

PREFIX = "You are an expert in mathematics, accurately calculating the following problem."
COMP = [
    {"problem": "计算 -6797.66 - 280.27 等于多少？", "solution": "-6797.66 - 280.27 = -7077.93", "kind": "dec_sub"},
    {"problem": "What is 12 - (-5)?", "solution": "12 - (-5) = 17"},
]


def _write(path, records):
    (write_json if path.suffix == ".json" else write_jsonl)(path, records)
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("fmt", ["auto", "competition"])
def test_competition(tmp_path, suffix, fmt):
    path = _write(tmp_path / f"comp{suffix}", [dict(COMP[0], id="q1"), COMP[1]])
    assert read_examples(path, fmt) == [
        Example(id="q1", instruction=COMP[0]["problem"], output=COMP[0]["solution"], kind="dec_sub"),
        Example(id="comp-1", instruction=COMP[1]["problem"], output=COMP[1]["solution"]),
    ]


@pytest.mark.parametrize("fmt", ["auto", "alpaca"])
def test_alpaca(tmp_path, fmt):
    path = _write(tmp_path / "a.jsonl", [{"instruction": "Add.", "input": "2 + 3", "output": "5"},
                                         {"instruction": "What is 2 + 3?", "output": "5", "id": 7}])
    assert read_examples(path, fmt) == [Example("a-0", "Add.", "5", input="2 + 3"),
                                        Example("7", "What is 2 + 3?", "5")]


@pytest.mark.parametrize("fmt", ["auto", "conversations"])
def test_conversations(tmp_path, fmt):
    rendered = PromptTemplate("alpaca").render("Add the numbers.", "2 + 3")
    path = _write(tmp_path / "c.json", [
        {"id": "identity_0", "conversations": [{"from": "human", "value": "What is 2 + 3?"},
                                               {"from": "gpt", "value": "5"},
                                               {"from": "human", "value": "And 3 + 4?"},
                                               {"from": "gpt", "value": "7"}]},
        {"conversations": [{"from": "user", "value": rendered}, {"from": "assistant", "value": "5"}]},
        {"conversations": [{"from": "human", "value": "Weather?"},
                           {"from": "function_call", "value": '{"name": "weather"}'},
                           {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "晴天。"}],
         "system": "Be brief.", "tools": '[{"name": "weather"}]'},
    ])
    many, one, tool = read_examples(path, fmt)
    # every turn is kept; the last user and assistant turns are what an evaluation asks and grades
    assert many == Example("identity_0", "And 3 + 4?", "7", messages=[
        {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 3 + 4?"}, {"role": "assistant", "content": "7"}])
    # one human and one gpt turn: an instruction and its response, a rendered alpaca prompt unwrapped
    assert one == Example("c-1", "Add the numbers.", "5", input="2 + 3")
    assert [m["role"] for m in tool.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert tool.messages[0]["content"] == "Be brief." and tool.tools == [{"name": "weather"}]


@pytest.mark.parametrize("turns, field, says", [
    ([{"from": "human", "value": "a"}], "conversations[0]", "ends with a user turn"),
    ([{"from": "gpt", "value": "a"}], "conversations", "no user turn"),
    ([{"from": "robot", "value": "a"}], "conversations[0].from", "unknown from 'robot'"),
    ([{"from": "human", "value": 3.5}, {"from": "gpt", "value": ["x"]}], "conversations[1].value",
     "expected a string"),
])
def test_conversation_errors_name_the_turn(tmp_path, turns, field, says):
    path = _write(tmp_path / "c.jsonl", [{"conversations": turns}])
    with pytest.raises(TunelabError) as e:
        read_examples(path, "conversations")
    assert e.value.field == field and says in e.value.message and e.value.line == 1


@pytest.mark.parametrize("fmt", ["auto", "messages"])
def test_messages(tmp_path, fmt):
    path = _write(tmp_path / "m.jsonl", [
        {"messages": [{"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "1 + 1 = ?"},
                      {"role": "assistant", "content": "1 + 1 = 2"}]},
        {"messages": [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": "2"}]}])
    system, plain = read_examples(path, fmt)
    assert system == Example("m-0", "1 + 1 = ?", "1 + 1 = 2", messages=[
        {"role": "system", "content": "You are a calculator."}, {"role": "user", "content": "1 + 1 = ?"},
        {"role": "assistant", "content": "1 + 1 = 2"}])
    assert plain == Example("m-1", "1 + 1 = ?", "2")


@pytest.mark.parametrize("fmt", ["auto", "reading"])
def test_reading(tmp_path, fmt):
    path = _write(tmp_path / "r.jsonl", [
        {"context": "小明住在北京。", "question": "小明住在哪里？", "answer": "北京", "lang": "zh"},
        {"context": "Alice lives in Paris.", "question": "Where does Alice live?", "answer": "Paris"},
    ])
    zh, en = read_examples(path, fmt)
    assert zh == Example("r-0", "阅读下面的短文，回答问题。\n小明住在北京。\n问题：小明住在哪里？", "北京", kind="reading-zh")
    assert en == Example("r-1", "Read the passage and answer the question.\nAlice lives in Paris.\n"
                                "Question: Where does Alice live?", "Paris", kind="reading-en")
    assert reading_instruction("Bob has 3 books.", "How many?").startswith("Read the passage")


def test_examples_from_records_uses_origin_for_ids_and_errors():
    exs = examples_from_records(COMP, "competition", origin="arithmetic")
    assert [e.id for e in exs] == ["arithmetic-0", "arithmetic-1"] and exs[0].kind == "dec_sub"
    with pytest.raises(TunelabError) as e:
        examples_from_records([COMP[0], {"problem": "x"}], "competition", origin="arithmetic")
    assert str(e.value) == "arithmetic:2, field 'solution': missing field"


@pytest.mark.parametrize("fmt", ["conversations", "alpaca", "messages"])
@pytest.mark.parametrize("prefix, cot", [("", False), (PREFIX, True)])
def test_convert_then_read_round_trip(tmp_path, capsys, fmt, prefix, cot):
    src = _write(tmp_path / "comp.json", COMP)
    out = tmp_path / f"train.{'jsonl' if fmt == 'alpaca' else 'json'}"
    argv = ["data", "convert", str(src), "--out", str(out), "--format", fmt, "--instruction-prefix", prefix]
    assert main(argv + (["--cot"] if cot else [])) == 0
    assert "wrote 2" in capsys.readouterr().out
    examples = read_examples(out)
    assert [e.output for e in examples] == [r["solution"] for r in COMP]
    expected = [(f"{prefix} " if prefix else "") + r["problem"] + (COT_SUFFIX if cot else "") for r in COMP]
    assert [e.instruction for e in examples] == expected
    # re-rendering what was read gives exactly the prompt that conversations stored
    template = PromptTemplate("alpaca")
    assert [template.render(e.instruction) for e in examples] == [
        PromptTemplate("alpaca", prefix, cot).render(r["problem"]) for r in COMP]


def test_convert_record_shapes():
    t = PromptTemplate("alpaca", PREFIX)
    conv = convert_record(COMP[0], "conversations", t, 3)
    assert conv == {"id": "identity_3", "conversations": [
        {"from": "human", "value": t.render(COMP[0]["problem"])},
        {"from": "gpt", "value": COMP[0]["solution"]}]}
    assert convert_record(COMP[0], "alpaca", t, 0) == {
        "instruction": f"{PREFIX} {COMP[0]['problem']}", "input": "", "output": COMP[0]["solution"]}
    assert convert_record(COMP[1], "messages", PromptTemplate(), 0) == {"messages": [
        {"role": "user", "content": COMP[1]["problem"]},
        {"role": "assistant", "content": COMP[1]["solution"]}]}
    with pytest.raises(TunelabError, match="sharegpt"):
        convert_record(COMP[0], "sharegpt", t, 0)


# --- bad input -----------------------------------------------------------------------------------

def _error(path, fmt="auto") -> TunelabError:
    with pytest.raises(TunelabError) as e:
        read_examples(path, fmt)
    return e.value


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(COMP[0]) + "\n" + json.dumps(COMP[1]) + "\n{\"problem\": \n", encoding="utf-8")
    err = _error(path)
    assert "bad.jsonl:3" in str(err) and "malformed JSON" in str(err)


@pytest.mark.parametrize("fmt, rec, field", [
    ("competition", {"problem": "1 + 1"}, "solution"),
    ("alpaca", {"instruction": "x"}, "output"),
    ("reading", {"context": "c", "question": "q"}, "answer"),
    ("conversations", {"id": "a"}, "conversations"),
    ("conversations", {"conversations": [{"from": "human", "value": "hi"}]}, "conversations[0]"),
    ("conversations", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
     "conversations[0].value"),
    ("conversations", {"conversations": [{"value": "hi"}]}, "conversations[0].from"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
     "messages[1].content"),
    ("messages", {"messages": "hi"}, "messages"),
])
def test_missing_or_wrong_field_is_named(tmp_path, fmt, rec, field):
    path = _write(tmp_path / "f.jsonl", [rec])
    err = _error(path, fmt)
    assert err.field == field and f"field '{field}'" in str(err) and "f.jsonl:1" in str(err)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "t.json"
    bad = json.dumps({"problem": "p", "solution": ["no"]})
    path.write_text(f"[\n  {json.dumps(COMP[0])},\n\n  {bad}\n]\n", encoding="utf-8")
    err = _error(path)
    assert err.field == "solution" and err.line == 4 and "expected a string" in str(err)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(json.dumps(COMP[0], ensure_ascii=False).encode("gbk") + b"\n")
    assert "not UTF-8" in str(_error(path)) and "gbk.jsonl:1" in str(_error(path))


@pytest.mark.parametrize("text", ["", "  \n", "[]"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text, encoding="utf-8")
    err = _error(path)
    assert err.file == str(path) and ("empty" in str(err) or "no records" in str(err))


def test_unknown_keys_and_format(tmp_path):
    path = _write(tmp_path / "u.jsonl", [{"question": "q", "reply": "r"}])
    assert "cannot tell the format" in str(_error(path)) and "u.jsonl:1" in str(_error(path))
    assert "choose from" in str(_error(path, "csv"))


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "comp.jsonl"
    path.write_text(json.dumps(COMP[0]) + "\nnot json\n", encoding="utf-8")
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "o.json")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "comp.jsonl:2" in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "o.json").exists()

    path.write_text(json.dumps({"problem": "1 + 1"}) + "\n", encoding="utf-8")
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "o.json")]) == 2
    assert "field 'solution'" in capsys.readouterr().err
