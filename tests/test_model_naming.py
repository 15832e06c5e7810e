"""One way to name a model: every verb that takes one takes it as MODEL or as --model (`arguments.add_model`),
the two spellings parse to the same command, both only when they agree, neither is a one-line error; and
`eval MODEL`, `serve --model MODEL` and `generate --model MODEL` run for real on a micro Llama run directory."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import build_parser, cli_markdown, main
from tunelab.errors import TunelabError

M = "runs/x"
# verb -> (the words before the model, the words after it); the model's attribute is args.<dest>
SPELLINGS = {
    "eval": (["eval"], ["--tasks", "arithmetic", "--limit", "3"], "model"),
    "predict": (["predict"], ["--task", "CoLA", "--data", "dev.tsv"], "model"),
    "generate": (["generate"], ["hello", "world", "--max-new-tokens", "4"], "model"),
    "serve": (["serve"], ["--port", "9000", "--name", "m"], "model"),
    "ui": (["ui"], ["--db", "v.sqlite"], "model"),
    "export": (["export"], ["out", "--format", "gguf"], "run"),
    "convert": (["convert"], ["out", "--config", "c.yaml"], "input"),
    "handin": (["handin"], ["--out", "bundle"], "run"),
    "ratio": (["ratio"], ["--lora-rank", "2", "--lora-target", "q_proj"], "model"),
}


def parse(argv: list[str]) -> dict:
    return vars(build_parser().parse_args(argv))


def test_every_verb_that_takes_a_model_is_covered_here():
    top = next(a for a in build_parser()._actions if a.dest == "verb")
    assert {name for name, sub in top.choices.items() if "model_dest" in sub._defaults} == set(SPELLINGS)


@pytest.mark.parametrize("verb", sorted(SPELLINGS))
def test_model_positionally_or_as_a_flag_is_the_same_command(verb):
    head, tail, dest = SPELLINGS[verb]
    positional = parse([*head, M, *tail])
    assert positional == parse([*head, "--model", M, *tail])
    assert positional == parse([*head, *tail, "--model", M])
    assert positional == parse([*head, "--model", M, M, *tail])  # both, agreeing
    assert positional[dest] == ([M] if verb == "ui" else M)
    assert "model_flag" not in positional


@pytest.mark.parametrize("verb", sorted(set(SPELLINGS) - {"ui", "generate"}))
def test_two_different_models_are_one_line_error(verb, capsys):
    head, tail, _ = SPELLINGS[verb]
    with pytest.raises(TunelabError, match="two different models: 'runs/x' and --model 'runs/y'"):
        build_parser().parse_args([*head, "--model", "runs/y", M, *tail])
    assert main([*head, "--model", "runs/y", M, *tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tunelab: error: --model: two different models")


@pytest.mark.parametrize("verb", sorted(set(SPELLINGS) - {"ui"}))
def test_no_model_is_one_line_error_naming_both_spellings(verb, capsys):
    head, tail, _ = SPELLINGS[verb]
    tail = [w for w in tail if w not in ("out", "hello", "world")] + (["out"] if verb in ("export", "convert") else [])
    assert main([*head, *tail]) == 2
    err = capsys.readouterr().err
    assert err == (f"tunelab: error: --model: no model given: tunelab {verb} MODEL, or --model MODEL "
                   "(see 'Naming a model' in docs/cli.md)\n")


def test_ui_needs_no_model():
    """Without a model the UI is its Runs and Train tabs: a newcomer trains from the browser before having one."""
    assert parse(["ui", "--db", "v.sqlite"])["model"] == []
    assert "model_optional" not in parse(["ui"]) and "model_optional" not in parse(["serve", M])


def test_generate_with_model_flag_reads_every_word_as_a_prompt():
    assert parse(["generate", "--model", M, "hi", "there"])["prompts"] == ["hi", "there"]
    assert parse(["generate", "hi", "--model", M])["prompts"] == ["hi"]
    assert parse(["generate", M, "--model", M])["prompts"] == []
    assert parse(["generate", M, "hi"]) == parse(["generate", "--model", M, "hi"])


@pytest.mark.parametrize("verb", ["export", "convert"])
def test_options_may_stand_between_the_model_and_the_output(verb):
    """MODEL is optional now that --model may name it; the output after it is still found past options between
    them (`export RUN --dtype float32 OUT`), as before the model could be a flag."""
    between = parse([verb, "runs/a", "--dtype", "float32", "out"])
    assert between == parse([verb, "runs/a", "out", "--dtype", "float32"]) == parse([verb, "--dtype", "float32",
                                                                                     "--model", "runs/a", "out"])
    assert between["run" if verb == "export" else "input"] == "runs/a"


def test_ui_takes_models_both_ways_each_once():
    args = parse(["ui", "b=runs/b", "a=runs/a", "--model", "a=runs/a", "--model", "http://h:8000/v1"])
    assert args["model"] == ["a=runs/a", "http://h:8000/v1", "b=runs/b"]


def test_unknown_words_are_reported_before_a_missing_model(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--tasks", "arithmetic", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_naming_is_documented_once_and_every_model_verb_points_to_it():
    doc = cli_markdown()
    assert doc.count("## Naming a model") == 1
    section = doc.split("## Naming a model")[1].split("## `tunelab`")[0]
    for verb in SPELLINGS:
        assert f"`{verb}`" in section
    top = next(a for a in build_parser()._actions if a.dest == "verb")
    for verb in SPELLINGS:
        text = " ".join(top.choices[verb].format_help().split())
        assert "see 'Naming a model' in docs/cli.md" in text and "--model MODEL" in text, verb


# --- for real, on a micro Llama run directory ----------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    from test_serve_api import build_tiny_run
    torch.set_num_threads(1)
    return build_tiny_run(tmp_path_factory.mktemp("naming"))


def test_eval_takes_the_model_positionally(run, tmp_path, capsys):
    gold = tmp_path / "dev.json"
    gold.write_text(json.dumps([{"problem": "1 + 2 = ?", "solution": "3"}, {"problem": "2 + 2 = ?",
                                                                            "solution": "4"}]), encoding="utf-8")
    out = tmp_path / "e"
    assert main(["eval", str(run), "--tasks", "arithmetic", "--data", f"arithmetic={gold}", "--max-new-tokens", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(doc["results"]) == ["step-000010"] and "accuracy" in doc["results"]["step-000010"]["arithmetic"]
    assert f"results: {out / 'results.json'}" in capsys.readouterr().out
    # --checkpoint best: that checkpoint alone, as if it had been named (the samples `data prefs` pairs come from)
    assert main(["eval", str(run), "--checkpoint", "best", "--tasks", "arithmetic", "--data", f"arithmetic={gold}",
                 "--max-new-tokens", "2", "--out", str(tmp_path / "best"), "--device", "cpu"]) == 0
    best = json.loads((tmp_path / "best" / "results.json").read_text(encoding="utf-8"))
    assert best["results"]["step-000010"]["arithmetic"] == doc["results"]["step-000010"]["arithmetic"]
    capsys.readouterr()
    assert main(["eval", str(gold), "--checkpoint", "last", "--tasks", "arithmetic"]) == 2
    assert "--checkpoint picks a checkpoint of a run directory" in capsys.readouterr().err


def test_serve_takes_the_model_as_a_flag(run, monkeypatch, capsys):
    """`tunelab serve --model RUN` as typed: the handler loads the run and builds the app; uvicorn.run is
    replaced by the test's own server on a free port, which answers a real completion request."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from tunelab.serve.api import BackgroundServer
    answers = []

    def run_app(app, host, port, log_level):
        srv = BackgroundServer(app).start()
        try:
            answers.append(httpx.get(srv.url + "/v1/models", timeout=30).json())
            answers.append(httpx.post(srv.url + "/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": "1 + 2 =", "max_tokens": 3, "temperature": 0}).json())
        finally:
            srv.stop()
    monkeypatch.setattr("uvicorn.run", run_app)
    assert main(["serve", "--model", str(run), "--name", "tiny", "--port", "0", "--device", "cpu"]) == 0
    models, completion = answers
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert completion["choices"][0]["finish_reason"] in ("length", "stop")
    assert completion["usage"]["completion_tokens"] >= 1
    assert f"tunelab serve: tiny  ({run / 'checkpoints' / 'step-000010' / 'model'}" in capsys.readouterr().out


def test_generate_takes_the_model_either_way(run, capsys):
    flags = ["hi", "--temperature", "0", "--max-new-tokens", "3", "--json"]
    assert main(["generate", str(run), *flags]) == 0
    positional = capsys.readouterr().out
    assert main(["generate", "--model", str(run), *flags]) == 0
    assert capsys.readouterr().out == positional and json.loads(positional)["prompt"] == "hi"
