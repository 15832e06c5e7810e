"""Evaluation tasks through the engine: log-likelihood scoring, perplexity, `tunelab eval` on every task,
--baseline retention, atomic results, and `tunelab predict` for the GLUE hand-in file. Tiny models only."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.records import write_json, write_jsonl

SQUAD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
    {"context": "Tom has 12 apples and the shop is in Paris.",
     "qas": [{"id": "s1", "question": "How many apples does Tom have?", "answers": [{"text": "12", "answer_start": 8}]},
             {"id": "s2", "question": "Where is the shop?", "answers": [{"text": "Paris", "answer_start": 37}]}]},
    {"context": "小明住在郑州。",
     "qas": [{"id": "s3", "question": "小明住在哪里？", "answers": [{"text": "郑州", "answer_start": 4}]}]},
]}]}
CHOICE = [
    {"id": "c1", "question": "What is 2 + 3?", "A": "4", "B": "5", "C": "6", "D": "7", "answer": "B"},
    {"id": "c2", "question": "1 + 1 等于多少？", "choices": ["1", "2", "3", "4"], "answer": 1},
    {"id": "c3", "question": "Which is a colour?", "A": "red", "B": "dog", "C": "run", "D": "ten", "answer": "A"},
]
COLA = [("gj04", "1", "", "The dog barked."), ("gj04", "0", "*", "Dog the barked."),
        ("gj04", "1", "", "She reads books."), ("gj04", "0", "*", "Books she the reads."),
        ("cj99", "1", "", "We left early."), ("cj99", "0", "*", "Early left we the.")]
TEXT = ("Tom has 12 apples. He gives 5 of them to Mary.\nNow Tom has 7 apples.\n\n"
        "小明住在郑州。他每天坐公交车上学。\n\n"
        "计算 12 + 30 等于多少？ 12 + 30 = 42\n")


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "dev-v1.1.json").write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")
    write_jsonl(d / "choice.jsonl", CHOICE)
    (d / "dev.tsv").write_text("".join("\t".join(r) + "\n" for r in COLA), encoding="utf-8")
    (d / "corpus.txt").write_text(TEXT, encoding="utf-8")
    write_jsonl(d / "qa.jsonl", [{"question": "计算 12 + 30 等于多少？", "answer": "12 + 30 = 42"},
                                 {"question": "What is 3 + 4?", "answers": ["3 + 4 = 7", "7"]}])
    return {"squad": d / "dev-v1.1.json", "choice": d / "choice.jsonl", "cola": d / "dev.tsv",
            "ppl": d / "corpus.txt", "rougel": d / "qa.jsonl"}


@pytest.fixture(scope="module")
def loaded(tiny_base):
    import torch
    torch.set_num_threads(1)
    from tunelab.model.loading import load_for_inference
    return load_for_inference(str(tiny_base))


def _manual_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """One pair, one forward, no batching or padding: sum of log p(continuation token | everything before)."""
    import torch
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


# --- log-likelihood --------------------------------------------------------------------------------

def test_loglik_matches_per_option_forward_and_picks_the_preferred_option(loaded):
    from tunelab.data.templates import PromptTemplate
    from tunelab.metrics.loglik import loglikelihood
    from tunelab.tasks.choice import choice_examples
    from tunelab.tasks.registry import get_task
    model, tok = loaded
    template = PromptTemplate("alpaca")
    # the base was trained (briefly) on "a + b = c" answers: a well-formed sum beats garbled or foreign text
    prompt = template.render("计算 9 + 8 等于多少？")
    requests = [(prompt, c) for c in ("9 + 8 = 17", "= + 9 8 71", "hello there", "9 + 8 = 3")]
    # one row per pair (lm-eval's layout) or the context once + continuations from its KV cache; padding
    # and batch shape do not change the numbers
    other = template.render("What is 12 + 30?")
    for share, batch_size in [(False, 1), (False, 3), (True, 1), (True, 3), (True, 8)]:
        got = loglikelihood(model, tok, requests + [(other, "12 + 30 = 42"), (other, "7")], batch_size=batch_size,
                            share_context=share)
        assert got[-2].logprob == pytest.approx(_manual_logprob(model, tok, other, "12 + 30 = 42"), abs=1e-5)
        got = got[:-2]
        for (ctx, cont), r in zip(requests, got):
            assert r.logprob == pytest.approx(_manual_logprob(model, tok, ctx, cont), abs=1e-5)
            assert r.tokens == len(tok(cont, add_special_tokens=False)["input_ids"])
    assert got[0].logprob > max(got[1].logprob, got[2].logprob) + 2

    task = get_task("choice").configure(continuation="text")
    ex = choice_examples([{"question": "计算 9 + 8 等于多少？", "choices": ["hello there", "9 + 8 = 17", "= + 9 8 71"],
                           "answer": "B"}])[0]
    reqs = task.loglik_requests(ex, task.prompt(ex, template))
    manual = [_manual_logprob(model, tok, c, x) for c, x in reqs]
    graded = task.grade_loglik(loglikelihood(model, tok, reqs, batch_size=2), ex)
    assert graded["pred"] == "ABC"[max(range(3), key=manual.__getitem__)] == "B" and graded["correct"]
    assert [graded["logprobs"][k] for k in "ABC"] == pytest.approx(manual, abs=1e-5)
    norm = [m / len(x) for m, (_, x) in zip(manual, reqs)]
    assert graded["pred_norm"] == "ABC"[max(range(3), key=norm.__getitem__)]


def test_loglik_greedy_flag_and_truncation(loaded):
    import torch
    from tunelab.metrics.loglik import loglikelihood
    model, tok = loaded
    ctx = "计算 12 + 30 等于多少？"
    ids = tok(ctx, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        greedy_tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    greedy_text = tok.decode([greedy_tok])
    r = loglikelihood(model, tok, [(ctx, greedy_text)])[0]
    if tok(greedy_text, add_special_tokens=False)["input_ids"] == [greedy_tok]:
        assert r.is_greedy
    # a context longer than max_length is cut from the left: same as scoring the kept tail by hand
    cut = loglikelihood(model, tok, [(ctx, "42")], max_length=4)[0]
    cont = tok("42", add_special_tokens=False)["input_ids"]
    tail = (ids + cont)[-5:]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([tail[:-1]])).logits[0].float(), -1)
    expected = sum(lp[len(tail) - 1 - len(cont) + j, t].item() for j, t in enumerate(cont))
    assert cut.logprob == pytest.approx(expected, abs=1e-5)


# --- perplexity ----------------------------------------------------------------------------------

def score_texts(model, tokenizer, texts, **settings):
    """`score_token_ids` of texts tokenised as the model reads them (BOS where its tokenizer adds one)."""
    from tunelab.metrics.perplexity import score_token_ids
    return score_token_ids(model, tokenizer, [tokenizer(text)["input_ids"] for text in texts], **settings)


def test_perplexity_equals_exp_mean_nll(loaded):
    import torch
    from tunelab.metrics.perplexity import perplexity
    model, tok = loaded
    text = "Tom has 12 apples. He gives 5 of them to Mary. Now Tom has 7 apples."
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()  # mean NLL over the n-1 predicted tokens
    (score,), window, stride = score_texts(model, tok, [text])
    assert window == 512 and stride == 256 and score.tokens == ids.shape[1] - 1
    assert perplexity(score.nll, score.tokens) == pytest.approx(math.exp(loss), rel=1e-5)
    # two documents: token-weighted, not the mean of the two perplexities
    other = "小明住在郑州。"
    scores, _, _ = score_texts(model, tok, [text, other], batch_size=2)
    ids2 = torch.tensor([tok(other)["input_ids"]])
    with torch.no_grad():
        loss2 = model(ids2, labels=ids2).loss.item()
    n1, n2 = ids.shape[1] - 1, ids2.shape[1] - 1
    assert perplexity(sum(s.nll for s in scores), n1 + n2) == pytest.approx(
        math.exp((loss * n1 + loss2 * n2) / (n1 + n2)), rel=1e-5)


def test_strided_windows_on_a_text_longer_than_the_context(loaded):
    import torch
    from tunelab.metrics.perplexity import perplexity, plan_windows
    model, tok = loaded
    text = " ".join(f"计算 {a} + {b} 等于多少？ {a} + {b} = {a + b}" for a in range(10, 40) for b in (3, 7, 11))
    ids = tok(text)["input_ids"]
    n = len(ids)
    assert n > 512  # longer than the model's context (max_position_embeddings)
    (disjoint,), w, s = score_texts(model, tok, [text], stride=512, batch_size=4)
    assert (w, s) == (512, 512) and disjoint.windows == math.ceil(n / 512)
    assert disjoint.tokens == n - disjoint.windows  # each window's first token has no context
    # stride = window is the plain chunked computation, by hand: each 512-token chunk on its own
    nll = 0.0
    for start in range(0, n, 512):
        chunk = torch.tensor([ids[start: start + 512]])
        with torch.no_grad():
            nll += model(chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
    assert perplexity(disjoint.nll, disjoint.tokens) == pytest.approx(math.exp(nll / disjoint.tokens), rel=1e-5)
    # overlapping windows: every token after the first is scored once, with more context; finite and close
    (strided,), _, s2 = score_texts(model, tok, [text], batch_size=4)
    assert s2 == 256 and strided.tokens == n - 1 and strided.windows == 1 + math.ceil((n - 512) / 256)
    p_disjoint, p_strided = perplexity(disjoint.nll, disjoint.tokens), perplexity(strided.nll, strided.tokens)
    assert math.isfinite(p_strided) and p_strided == pytest.approx(p_disjoint, rel=0.2)
    # the window plan scores every token after the first exactly once (with stride = window: but each
    # window's first token)
    for n_tok, win, st in [(10, 4, 2), (10, 4, 4), (7, 10, 5), (1, 4, 2), (9, 3, 1), (9, 3, 3)]:
        scored = [t for _, end, first in plan_windows(n_tok, win, st) for t in range(first, end)]
        assert scored == [t for t in range(1, n_tok) if st < win or t % win], (n_tok, win, st)
    with pytest.raises(TunelabError, match="longer than the model's context"):
        score_texts(model, tok, [text], window=1024)
    with pytest.raises(TunelabError, match=r"stride must be between 1 and the window \(512\), got 1024"):
        score_texts(model, tok, [text], stride=1024)  # a stride given alone, beyond the window it defaults to


def test_ppl_documents(tmp_path):
    from tunelab.tasks.ppl import read_documents
    p = tmp_path / "c.txt"
    p.write_text("one\ntwo\n\n\nthree\n  \nfour", encoding="utf-8")
    docs = read_documents(p)
    assert [d.instruction for d in docs] == ["one\ntwo", "three", "four"]
    assert [d.kind for d in docs] == ["line 1", "line 5", "line 7"]
    assert [d.instruction for d in read_documents(p, "file")] == ["one\ntwo\n\n\nthree\n  \nfour"]
    j = tmp_path / "c.jsonl"
    write_jsonl(j, [{"text": "a b"}, {"body": "x"}])
    with pytest.raises(TunelabError) as e:
        read_documents(j)
    assert "c.jsonl:2" in str(e.value) and "text" in str(e.value)


# --- tunelab eval --------------------------------------------------------------------------------

def _eval(tiny_base, files, out, tasks, *extra):
    argv = ["eval", "--model", str(tiny_base), "--tasks", ",".join(tasks), "--out", str(out),
            "--batch-size", "8", "--max-new-tokens", "8"]
    for t in tasks:
        argv += ["--data", f"{t}={files[t]}"]
    return main(argv + list(extra))


def test_eval_every_task_writes_predictions_and_results(tiny_base, files, tmp_path, capsys):
    tasks = ["squad", "choice", "cola", "ppl", "rougel"]
    out = tmp_path / "out"
    assert _eval(tiny_base, files, out, tasks, "--segmentation", "char") == 0
    printed = capsys.readouterr().out
    assert "squad.f1" in printed and "ppl.perplexity" in printed and "results.json" in printed
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    res = doc["results"][tiny_base.name]
    assert doc["best"] == tiny_base.name and set(res) == set(tasks)
    for t in tasks:
        rows = [json.loads(x) for x in (out / f"{t}.predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == {"squad": 3, "choice": 3, "cola": 6, "ppl": 3, "rougel": 2}[t], t
        assert doc["tasks"][t]["n"] == len(rows)
    assert res["squad"]["mode"] == "generate" and 0 <= res["squad"]["f1"] <= 100
    assert res["ppl"]["mode"] == "perplexity" and math.isfinite(res["ppl"]["perplexity"])
    assert res["ppl"]["tokens"] > 0 and res["ppl"]["window"] == 512 and res["ppl"]["stride"] == 256
    assert res["rougel"]["segmentation"] == "char" and res["rougel"]["segmentation_requested"] == "char"
    assert res["cola"]["n"] == 6 and "mcc" in res["cola"]


def test_the_runner_leaves_the_configured_task_as_it_was(tiny_base, files, tmp_path):
    """A perplexity set scored on a model records the window and stride it used (the model's context where none
    was given), but its task keeps none: the next model it scores fills in its own."""
    from tunelab.eval.runner import evaluate_model_dir
    from tunelab.eval.sets import EvalSet
    from tunelab.tasks.registry import get_task
    task = get_task("ppl")
    es = EvalSet(task=task, examples=task.load_examples(files["ppl"]), mode="perplexity")
    for n in (1, 2):
        res = evaluate_model_dir(tiny_base, {"ppl": es}, tmp_path / str(n), batch_size=8, max_new_tokens=8)
        assert (res["ppl"]["window"], res["ppl"]["stride"]) == (512, 256)
        assert task.window is None and task.stride is None


def test_eval_loglik_mode(tiny_base, files, tmp_path, capsys):
    out = tmp_path / "ll"
    # an all-tasks mode is the mode of the tasks that have it; squad runs its default, with no note
    assert _eval(tiny_base, files, out, ["choice", "cola", "squad"], "--mode", "loglik") == 0
    assert "no loglik mode" not in capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    modes = {t: v["mode"] for t, v in doc["tasks"].items()}
    assert modes == {"choice": "loglik", "cola": "loglik", "squad": "generate"}
    res = doc["results"][tiny_base.name]
    assert res["choice"]["mode"] == "loglik" and res["cola"]["mode"] == "loglik" and res["squad"]["mode"] == "generate"
    assert res["choice"]["unparsed"] == 0 and res["cola"]["unparsed"] == 0
    assert {"acc", "acc_norm", "accuracy"} <= res["choice"].keys()
    row = json.loads((out / "choice.predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["prediction"] in "ABCD" and set(row["logprobs"]) == set("ABCD")


def test_eval_of_a_run_marks_the_best_checkpoint_lowest_perplexity_first(scratch_run, files, tmp_path, capsys):
    out = tmp_path / "run-eval"
    assert main(["eval", "--model", str(scratch_run["run_dir"]), "--tasks", "ppl,choice", "--data",
                 f"ppl={files['ppl']}", "--data", f"choice={files['choice']}", "--mode", "choice=loglik",
                 "--out", str(out), "--window", "64", "--stride", "32"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    ppl = {k: v["ppl"]["perplexity"] for k, v in doc["results"].items()}
    assert len(ppl) >= 2 and doc["best"] == min(ppl, key=ppl.get) and doc["best_by"] == "ppl.perplexity"
    assert f"{doc['best']} *best*" in printed
    for ckpt in ppl:
        assert (out / ckpt / "ppl.predictions.jsonl").exists() and (out / ckpt / "choice.predictions.jsonl").exists()
        assert doc["results"][ckpt]["choice"]["mode"] == "loglik" and doc["results"][ckpt]["ppl"]["window"] == 64


def test_eval_of_one_checkpoint_directory(scratch_run, files, tmp_path):
    from tunelab.runs import list_checkpoints
    ckpt = list_checkpoints(scratch_run["run_dir"])[0]
    out = tmp_path / "one"
    assert main(["eval", "--model", str(ckpt), "--tasks", "ppl", "--data", f"ppl={files['ppl']}", "--out",
                 str(out), "--window", "64"]) == 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(doc["results"]) == [ckpt.name] and doc["results"][ckpt.name]["ppl"]["perplexity"] > 1


def test_baseline_pass_and_fail(tiny_base, files, tmp_path, capsys):
    out = tmp_path / "b"
    # the tiny base's own squad F1/EM are a few points: judged anyway here (--retention-min-base 0)
    assert _eval(tiny_base, files, out, ["squad", "choice"], "--baseline", str(tiny_base),
                 "--retention-min-base", "0") == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    ret = doc["retention"][tiny_base.name]
    assert set(ret["metrics"]) == {"squad.f1", "squad.exact_match"}
    assert ret["verdict"] in ("PASS", "cannot judge")  # the base against itself (cannot judge: a metric at zero)
    assert (out / "baseline" / "squad.predictions.jsonl").exists()
    assert ret["verdict"] in printed
    f1 = doc["results"][tiny_base.name]["squad"]["f1"]
    em = doc["results"][tiny_base.name]["squad"]["exact_match"]
    strong = tmp_path / "strong.json"  # a base with twice the F1 (or 50 when ours is 0): F1 retention < 90 %
    write_json(strong, {"squad": {"f1": max(2 * f1, 50.0), "exact_match": em}})
    assert _eval(tiny_base, files, tmp_path / "b2", ["squad"], "--baseline", str(strong),
                 "--retention-min-base", "0") == 0
    printed = capsys.readouterr().out
    ret = json.loads((tmp_path / "b2" / "results.json").read_text(encoding="utf-8"))["retention"][tiny_base.name]
    assert not ret["pass"] and not ret["metrics"]["squad.f1"]["pass"]
    assert ret["metrics"]["squad.exact_match"]["pass"] is (True if em > 0 else None)  # never a PASS over a zero
    assert "FAIL" in printed and "squad.f1" in printed
    # tunelab eval's own results.json works as a baseline too
    assert _eval(tiny_base, files, tmp_path / "b3", ["squad"], "--baseline", str(out / "results.json")) == 0
    assert main(["eval", "--model", str(tiny_base), "--tasks", "choice", "--data", f"choice={files['choice']}",
                 "--baseline", str(strong), "--out", str(tmp_path / "b4")]) == 2
    assert "ability tasks" in capsys.readouterr().err


def test_failing_task_leaves_no_results_json(tiny_base, files, tmp_path, monkeypatch, capsys):
    from tunelab.tasks.glue import ColaTask
    out = tmp_path / "fail"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}', encoding="utf-8")

    def broken(self, prediction, example):
        raise TunelabError("gold label broken", file="dev.tsv", line=3)

    monkeypatch.setattr(ColaTask, "grade", broken)
    assert _eval(tiny_base, files, out, ["squad", "cola"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "dev.tsv:3" in errors[0]
    assert (out / "squad.predictions.jsonl").exists()  # the first task ran…
    assert not (out / "results.json").exists()  # …but nothing claims the evaluation is complete


def test_eval_input_errors_are_one_line(tiny_base, files, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_base), "--out", str(tmp_path / "e")]
    cases = [
        (["--tasks", "squad,nosuch", "--data", f"squad={files['squad']}"], "unknown task 'nosuch'"),
        (["--tasks", "squad"], "no data for task 'squad'"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--data", f"cola={files['cola']}"],
         "not among --tasks"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--window", "64"],
         "--window: setting 'window' applies to none of the tasks (squad); it is a setting of ppl"),
        (["--tasks", "choice", "--data", f"choice={files['choice']}", "--option", "choice.colour=red"],
         "no setting 'colour'"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--mode", "squad=loglik"],
         "--mode: task 'squad' has no loglik mode (modes: generate)"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--mode", "fast"], "--mode: Input should be"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--mode", "loglik"],
         "--mode: mode loglik applies to none of the tasks (squad); it is a mode of base_agreement, choice, cola, qqp"),
        (["--tasks", "squad", "--data", f"squad={files['squad']}", "--limit", "0"], "--limit: Input should be"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "e").exists()


def _one_mistake_two_ways(files):
    """(recipe eval section, `tunelab eval` flags, recipe field, flag, message) for one mistake each."""
    sq, pp = {"path": str(files["squad"])}, {"path": str(files["ppl"])}
    squad = ["--tasks", "squad", "--data", f"squad={files['squad']}"]
    ppl = ["--tasks", "ppl", "--data", f"ppl={files['ppl']}"]
    return [
        ({"tasks": [{"task": "nosuch", "source": sq}]}, ["--tasks", "nosuch", "--data", f"nosuch={files['squad']}"],
         "eval.tasks.0.task", "--tasks", "unknown task 'nosuch' (known: arithmetic, base_agreement, choice, cola, "),
        ({"tasks": [{"task": "squad", "mode": "loglik", "source": sq}]}, squad + ["--mode", "squad=loglik"],
         "eval.tasks.0.mode", "--mode", "task 'squad' has no loglik mode (modes: generate)"),
        ({"mode": "loglik", "tasks": [{"task": "squad", "source": sq}]}, squad + ["--mode", "loglik"],
         "eval.mode", "--mode",
         "mode loglik applies to none of the tasks (squad); it is a mode of base_agreement, choice, cola, qqp"),
        ({"tasks": [{"task": "squad", "mode": "fast", "source": sq}]}, squad + ["--mode", "squad=fast"],
         "eval.tasks.0.mode", "--mode", "Input should be 'generate', 'loglik' or 'perplexity'"),
        ({"tasks": [{"task": "choice", "options": {"colour": "red"}, "source": {"path": str(files["choice"])}}]},
         ["--tasks", "choice", "--data", f"choice={files['choice']}", "--option", "choice.colour=red"],
         "eval.tasks.0.options.colour", "--option", "task 'choice' has no setting 'colour' (settings: continuation)"),
        ({"options": {"window": 1}, "tasks": [{"task": "ppl", "source": pp}]}, ppl + ["--window", "1"],
         "eval.options.window", "--window", "window must be a whole number of at least 2 tokens, got 1"),
        ({"tasks": [{"task": "ppl", "options": {"window": 64, "stride": 128}, "source": pp}]},
         ppl + ["--option", "ppl.window=64", "--option", "ppl.stride=128"],
         "eval.tasks.0.options.stride", "--option", "stride must be between 1 and the window (64), got 128"),
        ({"options": {"window": 64}, "tasks": [{"task": "squad", "source": sq}]}, squad + ["--window", "64"],
         "eval.options.window", "--window",
         "setting 'window' applies to none of the tasks (squad); it is a setting of ppl"),
        ({"tasks": [{"task": "rougel", "options": {"segmentation": "chars"},
                     "source": {"path": str(files["rougel"])}}]},
         ["--tasks", "rougel", "--data", f"rougel={files['rougel']}", "--option", "rougel.segmentation=chars"],
         "eval.tasks.0.options.segmentation", "--option",
         "unknown segmentation 'chars' (choose from auto, char, jieba, word)"),
        ({"tasks": [{"task": "choice", "options": {"continuation": "lettr"},
                     "source": {"path": str(files["choice"])}}]},
         ["--tasks", "choice", "--data", f"choice={files['choice']}", "--option", "choice.continuation=lettr"],
         "eval.tasks.0.options.continuation", "--option",
         "unknown continuation 'lettr' (choose from letter, text, letter_text, text_letter)"),
        # `yes` is YAML's true, in a recipe file and in an --option value alike
        ({"tasks": [{"task": "cola", "options": {"label_words": True}, "source": {"path": str(files["cola"])}}]},
         ["--tasks", "cola", "--data", f"cola={files['cola']}", "--option", "cola.label_words=yes"],
         "eval.tasks.0.options.label_words", "--option", "label_words needs two words (label 0, label 1), got True"),
        ({"tasks": [{"task": "squad", "limit": 0, "source": sq}]}, squad + ["--limit", "0"],
         "eval.tasks.0.limit", "--limit", "Input should be greater than or equal to 1"),
    ]


def test_recipe_and_eval_flags_reject_the_same_mistakes_with_the_same_message(make_recipe, files, tmp_path, capsys):
    """A recipe's `eval:` section and `tunelab eval`'s flags are one configuration: each mistake is one error,
    the recipe naming its field, the command line the flag that set it, with the same message."""
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import load_recipe
    for i, (section, flags, field, flag, message) in enumerate(_one_mistake_two_ways(files)):
        with pytest.raises(TunelabError) as e:
            eval_sets(load_recipe(make_recipe(f"r{i}", eval=section)).eval)
        assert e.value.field == field and e.value.message.startswith(message), (field, e.value.message)
        out = tmp_path / f"e{i}"
        assert main(["eval", "--model", str(tmp_path), "--out", str(out)] + flags) == 2
        assert capsys.readouterr().err == f"tunelab: error: {flag}: {e.value.message}\n"
        assert not out.exists()  # found before any model work


def test_an_all_tasks_mode_or_setting_goes_to_the_tasks_that_have_it(make_recipe, files):
    """The same rule from a recipe (`eval.mode`, `eval.options`) as from `--mode loglik` / `--window`: tasks
    that have the mode or setting take it, the others keep their default, an entry's own choice wins."""
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import load_recipe
    path = make_recipe("wide", eval={"mode": "loglik", "options": {"window": 64, "segmentation": "char"}, "tasks": [
        {"task": "choice", "source": {"path": str(files["choice"])}},
        {"task": "cola", "mode": "generate", "source": {"path": str(files["cola"])}},
        {"task": "squad", "source": {"path": str(files["squad"])}},
        {"task": "ppl", "options": {"window": 32}, "source": {"path": str(files["ppl"])}},
        {"task": "rougel", "source": {"path": str(files["rougel"])}}]})
    sets = eval_sets(load_recipe(path).eval)
    assert {k: s.mode for k, s in sets.items()} == {"choice": "loglik", "cola": "generate", "squad": "generate",
                                                    "ppl": "perplexity", "rougel": "generate"}
    assert sets["ppl"].task.window == 32 and sets["rougel"].task.segmentation == "char"


# --- tunelab predict -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["generate", "loglik"])
def test_predict_writes_one_label_per_line(tiny_base, files, tmp_path, capsys, mode):
    out = tmp_path / "result_{task}.txt"
    assert main(["predict", "--model", str(tiny_base), "--task", "CoLA", "--data", str(files["cola"]),
                 "--limit", "5", "--mode", mode, "--out", str(out)]) == 0
    written = tmp_path / "result_CoLA.txt"
    lines = written.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 5 and set(lines[:-1]) <= {"0", "1"}
    details = json.loads((tmp_path / "result_CoLA.details.json").read_text(encoding="utf-8"))
    assert details["n"] == 5 and details["mode"] == mode
    assert len(details["unparsed_lines"]) == details["unparsed"]
    if mode == "loglik":
        assert details["unparsed"] == 0
    captured = capsys.readouterr()
    assert "result_CoLA.txt" in captured.out
    assert ("not a CoLA label" in captured.err) == (details["unparsed"] > 0)
    # the file grades against the first 5 gold labels; against all 6 the length mismatch is named
    gold = tmp_path / "answers.txt"
    gold.write_text("".join(r[1] + "\n" for r in COLA[:5]), encoding="utf-8")
    assert main(["grade", "glue", "--task", "CoLA", "--pred", str(written), "--gold", str(gold)]) == 0
    assert "5 answers" in capsys.readouterr().out
    assert main(["grade", "glue", "--task", "CoLA", "--pred", str(written), "--gold", str(files["cola"])]) == 2
    assert "5 predictions" in capsys.readouterr().err


# --- recipes -------------------------------------------------------------------------------------

def test_glue_recipe_validates_after_data_glue(tmp_path, files):
    from pathlib import Path

    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import load_recipe
    data_dir = tmp_path / "glue" / "CoLA"
    data_dir.mkdir(parents=True)
    rows = COLA * 3
    (data_dir / "train.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    (data_dir / "dev.tsv").write_text(files["cola"].read_text(encoding="utf-8"), encoding="utf-8")
    pre = tmp_path / "pre_data"
    assert main(["data", "glue", "--task", "CoLA", "--data-dir", str(tmp_path / "glue"), "--out", str(pre)]) == 0
    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "gemma-2b-glue-lora.yaml"
    recipe = load_recipe(recipe_path, [f"data.train.0.path={pre}/CoLA/CoLA_train.json",
                                       f"eval.tasks.0.source.path={pre}/CoLA/CoLA_val.json",
                                       f"eval.tasks.1.source.path={pre}/CoLA/CoLA_val.json",
                                       f"output_dir={tmp_path / 'runs'}"])
    assert recipe.model.preset is None and "gemma" in recipe.model.path.lower()
    assert recipe.score.accuracy_task == "glue" and [t.mode for t in recipe.eval.tasks] == ["generate", "loglik"]
    sets = eval_sets(recipe.eval)
    assert set(sets) == {"glue", "glue-loglik"} and sets["glue"].task.name == "cola"
    assert len(sets["glue"].examples) == 2 and sets["glue"].examples[0].output in ("0", "1")


def test_recipe_eval_mode_and_options_are_checked(make_recipe, files):
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import load_recipe
    ok = make_recipe("ok", eval={"tasks": [
        {"task": "choice", "mode": "loglik", "options": {"continuation": "letter_text"}, "source": {"path": str(files["choice"])}},
        {"task": "ppl", "options": {"stride": 64}, "source": {"path": str(files["ppl"])}}]})
    sets = eval_sets(load_recipe(ok).eval)
    assert sets["choice"].mode == "loglik" and sets["choice"].task.continuation == "letter_text"
    assert sets["ppl"].task.stride == 64 and sets["ppl"].mode == "perplexity"
    bad = make_recipe("bad", eval={"tasks": [{"task": "squad", "mode": "loglik",
                                              "source": {"path": str(files["squad"])}}]})
    with pytest.raises(TunelabError, match="no loglik mode") as e:
        eval_sets(load_recipe(bad).eval)
    assert e.value.field == "eval.tasks.0.mode"
    bad = make_recipe("bad2", eval={"tasks": [{"task": "rougel", "options": {"segmentation": "chars"},
                                               "source": {"path": str(files["rougel"])}}]})
    with pytest.raises(TunelabError, match="unknown segmentation") as e:
        eval_sets(load_recipe(bad).eval)
    assert e.value.field == "eval.tasks.0.options.segmentation"
