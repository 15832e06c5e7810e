"""`tunelab generate` for real: a random-init micro Llama saved as a run directory (`build_tiny_run`), loaded
through the serving engine, driven through `tunelab.cli.main` as a user types it. What a pretrained model
continues is checked in test_pretrain_eval.py on a model that memorised its corpus."""

from __future__ import annotations

import io
import json

import pytest

from test_serve_api import build_tiny_run
from tunelab.cli import main
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    return build_tiny_run(tmp_path_factory.mktemp("gen"))


def samples(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# --- prompt files: one reader for `ui --examples` and `generate --file` ------------------------------

def test_prompt_file_forms(tmp_path):
    from tunelab.serve.prompts import read_prompts
    (tmp_path / "p.json").write_text('[1, null, {"prompt": 5}, ["x"], "  ", "一加一等于几？", {"question": "q"}]',
                                     encoding="utf-8")
    assert read_prompts(tmp_path / "p.json", "--file") == ["一加一等于几？", "q"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n5\n\n{"text": "续写："}\n', encoding="utf-8")
    assert read_prompts(tmp_path / "p.jsonl", "--file") == ["hi", "续写："]
    (tmp_path / "p.txt").write_text("first\n\n  \nsecond line\r\nthird\u2028still third\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt", "--file") == ["first", "second line", "third\u2028still third"]


@pytest.mark.parametrize("name, body, message", [
    ("a.json", b"[", "a.json:1: malformed JSON"),                                    # was a JSONDecodeError
    ("b.json", b'{"a": 1}', "expected a JSON list of prompts, got dict"),            # was the prompt "a"
    ("c.json", b'"just words"', "expected a JSON list of prompts, got str"),         # was ten one-letter prompts
    ("d.json", b"1e999", "expected a JSON list of prompts, got float"),              # was a TypeError
    ("e.txt", b"\xff\xfe words", "e.txt:1: not UTF-8 text"),                         # was a UnicodeDecodeError
    ("f.json", b'["\\ud800"]', "a prompt that is not valid Unicode"),
    ("g.jsonl", b'{"prompt": "ok"}\n{"prompt": "ok"', "g.jsonl:2: malformed JSON"),
    ("h.jsonl", b'{"prompt": {"nested": 1}}', "--flag: no prompts found"),
    ("i.txt", None, "--flag: prompts file not found"),
])
def test_a_bad_prompts_file_is_named(tmp_path, name, body, message):
    from tunelab.serve.prompts import read_prompts
    if body is not None:
        (tmp_path / name).write_bytes(body)
    with pytest.raises(TunelabError) as e:
        read_prompts(tmp_path / name, "--flag")
    assert message in str(e.value)


# --- generating -----------------------------------------------------------------------------------

def test_greedy_text_is_the_decoding_cores(run, capsys):
    """What `generate` prints greedily is what evaluation generates for the same prompt (the one decoding core)."""
    from tunelab.decoding.embedded import generate_batched
    from tunelab.serve.models import ServedModel
    prompts = ["计算 12.5 + 7.25 = ?", "Write one sentence about autumn."]
    assert main(["generate", str(run), *prompts, "--temperature", "0", "--max-new-tokens", "12", "--json"]) == 0
    got = samples(capsys)
    served = ServedModel.load(run)
    try:
        rendered = [served.render_chat([{"role": "user", "content": p}]) for p in prompts]
        want = generate_batched(served.model, served.tokenizer, rendered, max_new_tokens=12)
    finally:
        served.close()
    assert [s["text"] for s in got] == want
    assert [(s["prompt_index"], s["sample"], s["prompt"]) for s in got] == [(1, 1, prompts[0]), (2, 1, prompts[1])]
    assert all(s["completion_tokens"] == 12 and s["finish_reason"] == "length" for s in got if s["text"])
    assert got[0]["prompt_tokens"] == len(served.encode(rendered[0]))


def test_seeded_samples_reproduce_and_differ(run, capsys):
    argv = ["generate", str(run), "一", "two", "-n", "3", "--seed", "7", "--temperature", "1.5",
            "--max-new-tokens", "8", "--json"]
    assert main(argv) == 0
    first = samples(capsys)
    assert main(argv) == 0
    assert samples(capsys) == first                                        # same seed, same samples
    assert [(s["prompt_index"], s["sample"]) for s in first] == [(p, j) for p in (1, 2) for j in (1, 2, 3)]
    assert len({s["text"] for s in first[:3]}) == 3                        # sample j draws with SEED + j
    assert main(argv[:-1]) == 0                                            # text mode: a header per sample
    out, err = capsys.readouterr()
    assert f"6 samples, {sum(s['completion_tokens'] for s in first)} new tokens in " in err and "tokens/s)" in err
    assert out.count("── prompt ") == 6 and "── prompt 2/2 · sample 3/3: two ──" in out
    for s in first:
        assert s["text"] in out


def test_prompts_from_a_file_and_from_a_pipe(run, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.jsonl").write_text('{"prompt": "甲"}\n{"instruction": "乙"}\n', encoding="utf-8")
    assert main(["generate", str(run), "零", "--file", str(tmp_path / "p.jsonl"), "--temperature", "0",
                 "--max-new-tokens", "3", "--json"]) == 0
    assert [s["prompt"] for s in samples(capsys)] == ["零", "甲", "乙"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("one\n\n二 三\r\n".encode()), encoding="utf-8"))
    assert main(["generate", str(run), "--temperature", "0", "--max-new-tokens", "3", "--json"]) == 0
    assert [s["prompt"] for s in samples(capsys)] == ["one", "二 三"]


@pytest.mark.parametrize("argv, stdin, message", [
    (["\udcff"], None, "prompt 1 is not valid Unicode"),       # undecodable argv bytes
    (["ok", "x" * 3000], None, "prompt 2 has"),                # longer than the context, in tokens
    (["y" * 2_000_000], None, "prompt 1 has 2,000,000 characters"),   # refused before it is tokenised
    (["", "--raw"], None, "prompt 1 is empty"),
    ([], b"fine\n\xff\n", "<stdin>:2: not UTF-8 text"),
    ([], b"\n \n", "no prompts: give them as arguments"),
    (["--file", "missing.txt"], None, "missing.txt, --file: prompts file not found"),
])
def test_bad_prompts_are_one_line_errors(run, argv, stdin, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    assert main(["generate", str(run), *argv, "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"tunelab: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--temperature", "nan"], ["--temperature", "-1"], ["--temperature", "inf"],
                                  ["--top-p", "0"], ["--top-p", "1.5"], ["-n", "0"], ["-n", "65"],
                                  ["--max-new-tokens", "0"], ["--seed", "-1"], ["--top-k", "-2"]])
def test_out_of_range_decoding_flags_are_refused(run, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(run), "hi", *flag])
    assert e.value.code == 2 and flag[0] in capsys.readouterr().err


def test_a_missing_model_is_named(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "hi"]) == 2
    assert "nope: model not found" in capsys.readouterr().err


def test_typed_prompts_until_an_empty_line(run, capsys, monkeypatch):
    """At a terminal with no prompt given: each line is answered alone; a line the context cannot take is
    refused and the next one is answered; an empty line ends it."""
    lines = iter(["hello", "x" * 3000, "你好", ""])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8"))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["generate", str(run), "--temperature", "0", "--max-new-tokens", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert [s["prompt"] for s in samples_of(captured.out)] == ["hello", "你好"]
    assert "prompt 1 has" in captured.err and "empty line or Ctrl-D quits" in captured.err


def samples_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_greedy_samples_are_said_to_be_the_same(run, capsys):
    assert main(["generate", str(run), "hi", "-n", "2", "--top-k", "1", "--max-new-tokens", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "the 2 samples of a prompt are the same" in captured.err
    assert len({s["text"] for s in samples_of(captured.out)}) == 1


def test_many_samples_go_to_the_engine_a_window_at_a_time(run, capsys, monkeypatch):
    """Prompts × samples are submitted a few batches at a time (4 × --max-batch in flight), not all at once:
    a 100,000-prompt file must not become 100,000 live sequences; the output keeps its order."""
    from tunelab.serve.engine import Engine
    submitted = []
    submit = Engine.submit
    monkeypatch.setattr(Engine, "submit", lambda self, seqs: (submitted.append(len(seqs)), submit(self, seqs))[1])
    prompts = [f"p{i}" for i in range(5)]
    assert main(["generate", str(run), *prompts, "-n", "2", "--max-batch", "1", "--max-new-tokens", "2",
                 "--seed", "0", "--json"]) == 0
    rows = samples(capsys)
    assert [(r["prompt"], r["sample"]) for r in rows] == [(p, j) for p in prompts for j in (1, 2)]
    assert submitted[0] == 4 and max(submitted) <= 4 and sum(submitted) == 10


# --- what the flags leave to the model's generation config -------------------------------------------

@pytest.mark.parametrize("flags, said", [
    ({}, "greedy (temperature 0), max_tokens 32 from generation_config.json"),
    ({"temperature": 0, "max_new_tokens": 48}, ""),        # said 'max_tokens 32 from generation_config.json'
    ({"max_new_tokens": 48}, "greedy (temperature 0) from generation_config.json"),
    ({"temperature": 0}, "max_tokens 32 from generation_config.json"),
    ({"temperature": 0.8, "max_new_tokens": 5},             # a greedy config says nothing of top_p and top_k
     "top_p 1, top_k off by default (the model's generation_config.json does not say)"),
])
def test_left_out_names_only_what_no_flag_gave(flags, said):
    from tunelab.decoding.generation_config import SamplingDefaults
    from tunelab.serve.terminal import GenerateOptions, left_out
    assert left_out(SamplingDefaults(temperature=0.0, max_tokens=32), GenerateOptions(**flags)) == said


def test_left_out_of_a_sampling_config_and_of_none():
    from tunelab.decoding.generation_config import SamplingDefaults
    from tunelab.serve.terminal import GenerateOptions, left_out
    sampling = SamplingDefaults(temperature=0.7, top_p=0.9, top_k=0)
    assert left_out(sampling, GenerateOptions(top_k=5)) == (
        "temperature 0.7, top_p 0.9 from generation_config.json; "
        "max_tokens 128 by default (the model's generation_config.json does not say)")
    assert left_out(sampling, GenerateOptions(temperature=0, max_new_tokens=3)) == ""  # greedy: top_p/k unused
    assert left_out(SamplingDefaults(), GenerateOptions(max_new_tokens=3)) == (
        "temperature 1, top_p 1, top_k off by default (the model's generation_config.json does not say)")


def test_the_console_line_names_what_the_flags_left_to_the_config(tmp_path, capsys):
    """A checkpoint whose generation_config.json says greedy, 32 tokens: `--temperature 0 --max-new-tokens 48`
    leaves it nothing, and the note says nothing of it; without --max-new-tokens it names the 32."""
    from transformers import GenerationConfig
    run = build_tiny_run(tmp_path)
    GenerationConfig(do_sample=False, max_new_tokens=32).save_pretrained(run / "checkpoints" / "step-000010" / "model")
    assert main(["generate", str(run), "hi", "--temperature", "0", "--max-new-tokens", "48", "--json"]) == 0
    err = capsys.readouterr().err
    assert "tunelab generate: " in err and "generation_config.json" not in err and "leave out" not in err
    assert main(["generate", str(run), "hi", "--temperature", "0", "--json"]) == 0
    assert "decoding the flags leave out: max_tokens 32 from generation_config.json\n" in capsys.readouterr().err
