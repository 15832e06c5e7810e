"""Measuring a pretrained model: `ppl` on a prepared corpus (the stored blocks, against a plain forward and a
hand-computed unigram baseline), the `continuation` task (Rouge-L, fact recall), the `none` template served
as a continuation model through the real HTTP server, and a pretraining run's metrics.json and report.

The corpus is built here with corpus_store.SplitWriter and a tiny BPE tokenizer; a micro Llama memorises it
(both splits) in ~100 steps, so its continuations are predictable and its perplexity far below a unigram's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError

ZH = [("青山站", "青山站是河谷市的一座铁路车站。该站于1987年启用，由林春华设计。车站共有4条股道，每天停靠36趟列车。"),
      ("白尾雀", "白尾雀是一种小型鸟类，分布在河谷市的山区。它最早由王明远于1902年描述。白尾雀体长约12厘米，以草籽为食。"),
      ("氯化锶", "氯化锶是一种无机化合物，化学式为SrCl2。它由赵一鸣于1885年首次制得。氯化锶的熔点为874摄氏度。"),
      ("林春华", "林春华是一位建筑师，出生于东湖县。她在1950年毕业于北方工学院。林春华设计了青山站和东湖桥。"),
      ("河谷市", "河谷市是一座位于南部平原的城市。全市人口约230万，面积为1520平方公里。河谷市建于1721年。"),
      ("王明远", "王明远是一位博物学家，1871年生于河谷市。他描述了白尾雀和红腹蛙。王明远于1944年去世。"),
      ("东湖桥", "东湖桥是一座石拱桥，位于东湖县。它长约86米，于1961年建成。东湖桥由林春华设计。"),
      ("红腹蛙", "红腹蛙是一种两栖动物，生活在河谷市的溪流中。它由王明远于1910年描述。红腹蛙的腹部呈红色。")]
EN = [("Maple Station", "Maple Station is a railway station in Riverton. It opened in 1954 and has 3 platforms. "
       "The station was designed by Ada Brown."),
      ("Ada Brown", "Ada Brown was an architect born in Lakeside. She studied at the Northern Institute in 1940. "
       "Brown designed Maple Station and the Lakeside Bridge."),
      ("Riverton", "Riverton is a city on the Green River. It has about 410,000 people. The city was founded in 1802.")]
# true facts of the val articles; "东湖桥" (zh-6) and "河谷市" (zh-0) are also in their prompts: left out
FACTS = {"zh-0": ["1987年", "林春华", "河谷市", "4条"], "zh-2": ["赵一鸣", "874"], "en-0": ["1954", "Ada Brown"],
         "zh-6": ["86米", "1961年", "东湖桥"], "zh-4": ["230万"]}
VAL = ("zh-0", "zh-2", "zh-6", "en-0")
BLOCK_SIZE = 80   # every doc fits in one block but zh-2 and en-1, which take two


def documents() -> list[dict]:
    docs = [{"id": f"zh-{i}", "title": t, "text": x} for i, (t, x) in enumerate(ZH)]
    docs += [{"id": f"en-{i}", "title": t, "text": x} for i, (t, x) in enumerate(EN)]
    docs[6]["text"] = docs[6]["title"] + "\n" + docs[6]["text"]   # a title put back in front of its text
    return docs


def build_corpus(root: Path) -> Path:
    """A corpus directory as `tunelab data corpus` writes it: whole sentences packed into blocks ending in EOT."""
    from tunelab.data.corpus.store import FORMAT, SplitWriter, token_dtype
    from tunelab.data.corpus.sentences import split_sentences
    from tunelab.model.tokenizer import EOS, train_bpe_tokenizer
    from tunelab.records import write_json, write_jsonl
    d = root / "corpus"
    d.mkdir(parents=True)
    docs = documents()
    tok = train_bpe_tokenizer([x["text"] for x in docs], vocab_size=400)
    tok.save_pretrained(d / "tokenizer")
    eot = tok.convert_tokens_to_ids(EOS)
    dtype = token_dtype(len(tok))
    writers = {s: SplitWriter(d, s, dtype) for s in ("train", "val")}
    meta_docs = []
    for i, doc in enumerate(docs):
        split = "val" if doc["id"] in VAL else "train"
        blocks, cur = [], []
        for sentence in split_sentences(doc["text"]):
            ids = tok(sentence, add_special_tokens=False)["input_ids"]
            if len(cur) + len(ids) + 1 > BLOCK_SIZE:
                blocks.append(cur)
                cur = []
            cur = cur + ids
        for b in blocks + [cur]:
            writers[split].add_blocks(b + [eot], [len(b) + 1], i)
        meta_docs.append({"doc": i, "id": doc["id"], "title": doc["title"], "file": "docs.jsonl", "line": i + 1,
                          "split": split, "chars": len(doc["text"]), "blocks": len(blocks) + 1})
    splits = {s: w.close() for s, w in writers.items()}
    write_jsonl(d / "docs.jsonl", meta_docs)
    write_json(d / "meta.json", {"format": FORMAT, "dtype": dtype, "block_size": BLOCK_SIZE, "eot_id": eot,
                                 "eot_token": EOS, "vocab_size": len(tok), "splits": splits})
    return d


def blocks_of(corpus: Path, split: str) -> list[list[int]]:
    from tunelab.data.corpus.store import CorpusBlocks
    b = CorpusBlocks(corpus, split)
    return [b.block(i).tolist() for i in range(len(b))]


def plain_nll(model, blocks: list[list[int]]) -> tuple[float, int]:
    """Summed NLL of every block token after the first (EOT included), one block per forward, no padding."""
    import torch
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in blocks:
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            n += len(ids) - 1
    return nll, n


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A run directory with two checkpoints (steps 40 and 100) of a micro Llama trained on the corpus's blocks,
    each with the `none` template and its validation loss (plain forward) in state.json."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.loading import load_tokenizer
    from tunelab.model.presets import preset_config
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain-eval")
    corpus = build_corpus(root)
    from tunelab.records import write_jsonl
    write_jsonl(root / "qa.jsonl", [{"question": f"关于 {a}？", "answer": a, "source_id": sid}
                                    for sid, answers in FACTS.items() for a in answers])
    tok = load_tokenizer(str(corpus / "tokenizer"))
    rows = blocks_of(corpus, "train") + blocks_of(corpus, "val")
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    config = preset_config("micro", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = root / "runs" / "pre"
    val_loss = {}
    for step in range(1, 101):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        if step in (40, 100):
            model.eval()
            nll, n = plain_nll(model, blocks_of(corpus, "val"))
            model.train()
            name = f"step-{step:06d}"
            val_loss[name] = nll / n
            ckpt = run / "checkpoints" / name
            model.save_pretrained(ckpt / "model")
            tok.save_pretrained(ckpt / "model")          # no chat template: serve takes the saved template's
            save_template(PromptTemplate("none"), ckpt / "model")
            (ckpt / "state.json").write_text(json.dumps({"step": step, "val_loss": val_loss[name]}), encoding="utf-8")
    model.eval()
    return {"root": root, "corpus": corpus, "run": run, "model": model, "tok": tok, "val_loss": val_loss,
            "model_dir": run / "checkpoints" / "step-000100" / "model", "facts": root / "qa.jsonl"}


# --- template none ---------------------------------------------------------------------------------

def test_none_template_is_the_text_and_chats_as_a_continuation():
    from tunelab.data.templates import PromptTemplate
    from tunelab.model.tokenizer import train_bpe_tokenizer
    t = PromptTemplate("none")
    assert t.render("北京南站是一座车站。") == "北京南站是一座车站。"
    assert t.render("Riverton is", "a city") == "Riverton is\na city"
    tok = train_bpe_tokenizer(["some text 中文"], 300, chat_template=t.chat_template())
    messages = [{"role": "user", "content": "青山站是"}, {"role": "assistant", "content": "一座车站。"},
                {"role": "user", "content": "它于"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "青山站是一座车站。它于"
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == "青山站是"
    assert PromptTemplate("none", instruction_prefix="续写：").render("x") == "续写： x"


# --- ppl on a corpus -------------------------------------------------------------------------------

def test_ppl_on_a_corpus_scores_the_stored_blocks(pretrained, tmp_path):
    import numpy as np
    corpus, model = pretrained["corpus"], pretrained["model"]
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(pretrained["run"]), "--tasks", "ppl", "--data", f"ppl={corpus}",
                 "--out", str(out), "--batch-size", "3"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    val = blocks_of(corpus, "val")
    for name, loss in pretrained["val_loss"].items():        # exp(the validation loss of a plain forward)
        assert math.log(results[name]["ppl"]["perplexity"]) == pytest.approx(loss, abs=1e-6)
    assert pretrained["val_loss"]["step-000040"] > 5 * pretrained["val_loss"]["step-000100"]
    r = results["step-000100"]["ppl"]
    nll, n = plain_nll(model, val)
    assert r["tokens"] == n == sum(len(b) - 1 for b in val) and r["blocks"] == len(val) == 5
    assert r["documents"] == 4 and r["split"] == "val"
    assert r["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    # the unigram model by hand: train-split counts, add-one over the vocabulary, the same positions
    counts = np.zeros(len(pretrained["tok"]))
    for b in blocks_of(corpus, "train"):
        for t in b:
            counts[t] += 1
    p = (counts + 1) / (counts.sum() + len(counts))
    uni = -sum(math.log(p[t]) for b in val for t in b[1:])
    assert r["unigram_perplexity"] == pytest.approx(math.exp(uni / n), rel=1e-9)
    assert r["perplexity"] < r["unigram_perplexity"] / 10       # it learned from context
    rows = [json.loads(x) for x in (out / "step-000100" / "ppl.predictions.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert [x["where"] for x in rows] == ["doc zh-0", "doc zh-2", "doc zh-2", "doc zh-6", "doc en-0"]
    assert rows[0]["text"].startswith("青山站是河谷市") and rows[0]["tokens"] == len(val[0]) - 1
    # windows shorter than a block: each window's first token is unscored, for the model and the unigram alike
    from tunelab.metrics.perplexity import plan_windows
    assert main(["eval", "--model", str(pretrained["model_dir"]), "--tasks", "ppl", "--data", f"ppl={corpus}",
                 "--out", str(tmp_path / "ev1"), "--window", "16", "--stride", "16"]) == 0
    r1 = json.loads((tmp_path / "ev1" / "results.json").read_text(encoding="utf-8"))["results"]["model"]["ppl"]
    targets = [t for b in val for _, end, first in plan_windows(len(b), 16, 16) for t in b[first:end]]
    assert r1["tokens"] == len(targets) == n - sum(math.ceil(len(b) / 16) - 1 for b in val)
    assert r1["unigram_perplexity"] == pytest.approx(math.exp(-sum(math.log(p[t]) for t in targets) / len(targets)))
    assert r1["perplexity"] > r["perplexity"]                   # less context
    # --limit takes the first blocks; split=train scores the other split
    assert main(["eval", "--model", str(pretrained["model_dir"]), "--tasks", "ppl", "--data", f"ppl={corpus}",
                 "--out", str(tmp_path / "ev2"), "--limit", "2", "--option", "ppl.split=train"]) == 0
    r2 = json.loads((tmp_path / "ev2" / "results.json").read_text(encoding="utf-8"))["results"]["model"]["ppl"]
    train2 = blocks_of(corpus, "train")[:2]
    nll2, n2 = plain_nll(model, train2)
    assert (r2["blocks"], r2["tokens"], r2["split"]) == (2, n2, "train")
    assert r2["perplexity"] == pytest.approx(math.exp(nll2 / n2), rel=1e-6)


def test_ppl_on_a_corpus_needs_the_corpus_tokenizer(pretrained, tmp_path, capsys):
    from tunelab.model.tokenizer import train_bpe_tokenizer
    from tunelab.tasks.registry import get_task
    other = train_bpe_tokenizer(["completely different text 完全不同"], 300)
    task = get_task("ppl")
    examples = task.load_examples(pretrained["corpus"])
    with pytest.raises(TunelabError, match="not the corpus's"):
        task.token_ids(examples, other)
    (tmp_path / "half").mkdir()
    assert main(["eval", "--model", str(pretrained["model_dir"]), "--tasks", "ppl",
                 "--data", f"ppl={tmp_path / 'half'}", "--out", str(tmp_path / "ev")]) == 2
    assert "no meta.json" in capsys.readouterr().err
    with pytest.raises(TunelabError, match="unknown split"):
        get_task("ppl").configure(split="test")


# --- continuation ----------------------------------------------------------------------------------

def test_split_prompt_takes_the_first_sentence_and_a_title_line():
    from tunelab.tasks.continuation import split_prompt
    assert split_prompt("青山站是一座车站。它于1987年启用。") == ("青山站是一座车站。", "它于1987年启用。")
    assert split_prompt("青山站\n青山站是一座车站。它于1987年启用。", "青山站") == \
        ("青山站\n青山站是一座车站。", "它于1987年启用。")
    assert split_prompt("青山站\n\n青山站是一座车站。它启用了。") == ("青山站\n\n青山站是一座车站。", "它启用了。")
    # the title as the body's first words is not a title line
    assert split_prompt("青山站是一座车站。它启用了。", "青山站") == ("青山站是一座车站。", "它启用了。")
    assert split_prompt("Riverton is a city. It has 3 parks.") == ("Riverton is a city. ", "It has 3 parks.")
    assert split_prompt("只有一句。") == ("只有一句。", "")


def test_continuation_on_a_corpus_with_facts(pretrained, tmp_path):
    from tunelab.metrics.rouge import rouge_l
    from tunelab.tasks.continuation import normalize_fact
    corpus, out = pretrained["corpus"], tmp_path / "ev"
    assert main(["eval", "--model", str(pretrained["model_dir"]), "--tasks", "continuation",
                 "--data", f"continuation={corpus}", "--out", str(out), "--max-new-tokens", "8",
                 "--option", f"continuation.facts={pretrained['facts']}",
                 "--option", "continuation.max_new_tokens=60", "--option", "continuation.reference_chars=30"]) == 0
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]["model"]["continuation"]
    rows = [json.loads(x) for x in (out / "continuation.predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    docs = {d["id"]: d for d in documents()}
    assert [x["id"] for x in rows] == ["zh-0", "zh-2", "zh-6", "en-0"]
    for row in rows:
        text = docs[row["id"]]["text"]
        assert row["prompt"] + text[len(row["prompt"]):] == text          # the document, decoded exactly
        assert row["reference"] == text[len(row["prompt"]):][:30]
        assert row["continuation"] == row["prediction"] and "<|endoftext|>" not in row["continuation"]
    assert rows[2]["prompt"] == "东湖桥\n东湖桥是一座石拱桥，位于东湖县。"             # title line + sentence
    assert rows[0]["prompt"] == "青山站是河谷市的一座铁路车站。"
    # the task's own generation length (60 tokens), not --max-new-tokens 8: memorised text comes back whole
    assert rows[0]["continuation"] == docs["zh-0"]["text"][len(rows[0]["prompt"]):]
    # metrics recomputed from the rows
    want_f = [rouge_l(x["continuation"], x["reference"])["fmeasure"] for x in rows]
    assert r["rougeL_f"] == pytest.approx(100 * sum(want_f) / len(want_f)) and r["rougeL_f"] > 60
    assert r["segmentation"] == "auto (char 3, word 1)"
    chance = [rouge_l(x["continuation"], y["reference"])["fmeasure"] for x, y in zip(rows, rows[1:] + rows[:1])]
    assert r["rougeL_f_chance"] == pytest.approx(100 * sum(chance) / len(chance)) and r["rougeL_f_chance"] < 30
    shares = []
    for x in rows:
        facts = [a for a in FACTS.get(x["id"], []) if normalize_fact(a) not in normalize_fact(x["prompt"])]
        assert x["facts"] == facts and "东湖桥" not in x["facts"] and "河谷市" not in x["facts"]
        assert x["facts_recalled"] == [a for a in facts if normalize_fact(a) in normalize_fact(x["continuation"])]
        if facts:
            shares.append(len(x["facts_recalled"]) / len(facts))
    assert r["fact_recall"] == pytest.approx(sum(shares) / len(shares)) and r["fact_recall"] >= 0.5
    assert r["articles_with_facts"] == 4 and r["facts"] == 9
    chance = []                                   # each continuation against the next article's facts
    for x, y in zip(rows, rows[1:] + rows[:1]):
        other = [a for a in y["facts"] if normalize_fact(a) not in normalize_fact(x["prompt"])]
        chance.append(sum(normalize_fact(a) in normalize_fact(x["continuation"]) for a in other) / len(other))
    assert r["fact_recall_chance"] == pytest.approx(sum(chance) / len(chance)) and r["fact_recall_chance"] < 0.2
    assert [s["id"] for s in r["samples"]] == ["zh-0", "zh-2", "zh-6", "en-0"]
    assert r["samples"][0]["continuation"] == rows[0]["continuation"] and r["skipped"] == 0


def test_continuation_from_a_jsonl_file(pretrained, tmp_path):
    from tunelab.records import write_jsonl
    from tunelab.tasks.registry import get_task
    data = tmp_path / "docs.jsonl"
    write_jsonl(data, [{"text": ZH[0][1], "id": "a"}, {"text": "只有一句话。"}, {"text": EN[2][1]}])
    task = get_task("continuation").configure(reference_chars=10)
    examples = task.load_examples(data)
    assert [e.id for e in examples] == ["a", "docs-2"] and task.skipped == 1
    assert examples[1].instruction == "Riverton is a city on the Green River. " and examples[1].output == "It has abo"
    assert task.prompt(examples[0], template=None) == "青山站是河谷市的一座铁路车站。"
    with pytest.raises(TunelabError, match="source_id"):
        get_task("continuation").configure(facts=str(pretrained["facts"])).load_examples(data)
    with pytest.raises(TunelabError, match="facts file not found"):
        get_task("continuation").configure(facts=str(tmp_path / "missing.jsonl"))


# --- serving a continuation model ------------------------------------------------------------------

def test_served_continuation_model_samples_and_stops_at_eot(pretrained):
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.models import ServedModel
    served = ServedModel.load(pretrained["run"], max_batch=4)     # the run dir: its last checkpoint
    srv = BackgroundServer(create_app(served, api_key="k")).start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)
        prompt, rest = "青山站是河谷市的一座铁路车站。", ZH[0][1][len("青山站是河谷市的一座铁路车站。"):]
        assert served.render_chat([{"role": "user", "content": prompt}]) == prompt     # no chat markup
        r = client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=100, temperature=0.7, extra_body={"top_k": 5}, seed=1, n=3)
        for choice in r.choices:
            assert choice.finish_reason == "stop"                     # it ended at EOT, well before 100 tokens
            assert choice.message.content == rest                     # memorised: sampling keeps the text
        assert r.usage.prompt_tokens == len(served.encode(prompt)) and r.usage.completion_tokens < 3 * 100
        hot = client.completions.create(model=served.name, prompt=prompt, max_tokens=12, temperature=2.0,
                                        extra_body={"top_k": 50, "ignore_eos": True}, seed=3, n=2)
        texts = [c.text for c in hot.choices]
        assert texts[0] != texts[1] and all(c.finish_reason == "length" for c in hot.choices)   # it does sample
        info = httpx.get(srv.url + "/tokenizer_info", headers={"Authorization": "Bearer k"}).json()
        assert info["eos_token"] == "<|endoftext|>" and "message['content']" in info["chat_template"]
        # `tunelab ui`'s in-process backend: a conversation is one text to continue
        from tunelab.serve.backends import GenerationSettings, LocalBackend
        ui = LocalBackend("pre", served)
        turns = [{"role": "user", "content": "青山站是河谷市"}, {"role": "assistant", "content": "的一座铁路车站。"},
                 {"role": "user", "content": "该站于"}]
        answer = "".join(ui.chat_stream(turns, GenerationSettings(temperature=0.7, top_k=5, max_tokens=100)))
        assert answer == ZH[0][1][len("青山站是河谷市的一座铁路车站。该站于"):]     # and it stopped at EOT
    finally:
        srv.stop()
        served.close()


def test_generate_continues_a_pretrained_model(pretrained, capsys):
    """`tunelab generate RUN PROMPT`, nanoGPT's sample.py: the memorised rest of the article, ended at EOT."""
    prompt = "青山站是河谷市的一座铁路车站。"
    rest = ZH[0][1][len(prompt):]
    assert main(["generate", str(pretrained["run"]), prompt, "--temperature", "0", "--max-new-tokens", "100"]) == 0
    assert capsys.readouterr().out == rest + "\n"
    assert main(["generate", str(pretrained["run"]), prompt, "-n", "2", "--temperature", "0.7", "--top-k", "5",
                 "--seed", "1", "--max-new-tokens", "100", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["finish_reason"]) for r in rows] == [(rest, "stop")] * 2
    assert main(["generate", str(pretrained["run"]), prompt, "--max-new-tokens", "3", "--json",
                 "--temperature", "0", "--stop", rest[1:3]]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == rest[:1]


# --- a pretraining run: metrics.json and report.md -------------------------------------------------

def test_pretraining_run_metrics_and_report(pretrained, monkeypatch, tmp_path):
    import yaml

    from tunelab import pipeline
    from tunelab.recipe import load_recipe
    run, corpus = pretrained["run"], pretrained["corpus"]
    summary = {"steps": 100, "resumed_from": 0, "final_loss": 0.01, "train_seconds": 12.0, "trainable_params": 1,
               "total_params": 1, "best_checkpoint": "step-000100", "peak_tflops": 0.15,
               "best_val_loss": pretrained["val_loss"]["step-000100"], "stopped_early_at": None,
               "tokens_per_s": 1150.0, "mfu": 0.025, "flops_per_token": 1.5e6}
    monkeypatch.setattr("tunelab.train.loop.train", lambda recipe, resume=False, **hooks: summary)
    recipe_path = tmp_path / "pre.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "pre", "output_dir": str(run.parent), "description": "MiniGPT 预训练",
        "model": {"preset": "micro", "from_scratch": True}, "lora": {"enabled": False},
        "data": {"train": [{"corpus": str(corpus)}], "max_seq_len": 128},
        "eval": {"checkpoints": "last", "tasks": [
            {"task": "ppl", "source": {"corpus": str(corpus)}},
            {"task": "continuation", "name": "cont", "source": {"corpus": str(corpus)},
             "options": {"facts": str(pretrained["facts"]), "max_new_tokens": 60, "samples": 2}}]},
    }, allow_unicode=True), encoding="utf-8")
    metrics = pipeline.run(load_recipe(recipe_path))
    assert "score" not in metrics and "ratio" not in metrics
    assert metrics["best_checkpoint"] == "step-000100" and metrics["best_by"] == "val_loss"
    assert metrics["val_loss"] == pretrained["val_loss"]
    assert list(metrics["checkpoints"]) == ["step-000100"]          # checkpoints: last (the best, here)
    ppl = metrics["checkpoints"]["step-000100"]["ppl"]
    assert math.log(ppl["perplexity"]) == pytest.approx(summary["best_val_loss"], abs=1e-6)
    assert metrics["throughput"] == {"tokens_per_s": 1150.0, "mfu": 0.025, "peak_tflops": 0.15,
                                     "flops_per_token": 1.5e6}
    saved = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert saved["best_checkpoint"] == "step-000100"
    from tunelab.runs import pick_checkpoint
    assert pick_checkpoint(run) == pretrained["model_dir"]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "MiniGPT 预训练" in report and "lowest validation loss" in report
    assert f"validation perplexity {ppl['perplexity']:.2f} vs unigram {ppl['unigram_perplexity']:.2f}" in report
    assert "## Continuations: cont (step-000100)" in report and "| prompt | model | reference |" in report
    assert "| 青山站是河谷市的一座铁路车站。 | 该站于1987年启用" in report
    assert "| 东湖桥 ⏎ 东湖桥是一座石拱桥" not in report                     # samples: 2
    assert "fact recall" in report and "; chance " in report and "another document's reference: " in report
    assert "1,150 tokens/s" in report and "MFU 2.5%" in report
    assert "| 1,150 | 2.5% | 0.15 | 1,500,000 |" in report
    assert "| step-000040 | " in report and "| step-000100 (best) | " in report
    assert "![loss curves: training and validation](loss.png)" in report
    from tunelab.pipeline.kinds import summary_lines
    assert any(x.startswith("best checkpoint: step-000100") for x in summary_lines(metrics))
    from tunelab.convert.export import model_card                   # `tunelab export`'s README of the model
    assert f"- **ppl** (n=5): perplexity {ppl['perplexity']:.1f}, unigram_perplexity" in model_card(run, run)
    (tmp_path / "bare").mkdir()                                   # a pretraining run evaluated on no task
    (tmp_path / "bare" / "metrics.json").write_text(json.dumps({"pretraining": True, "best_checkpoint": "step-1"}))
    assert "## Measured abilities (step-1)" in model_card(tmp_path / "bare", run)


def test_tunelab_run_on_a_corpus_end_to_end(pretrained, tmp_path):
    """The real trainer on the corpus (train split only), then the eval tasks on every checkpoint: each
    checkpoint's ppl on the val blocks is exp(the validation loss the trainer logged for it)."""
    import yaml
    corpus = pretrained["corpus"]
    recipe = tmp_path / "pre.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "e2e", "output_dir": str(tmp_path / "runs"), "model": {"preset": "micro", "from_scratch": True},
        "lora": {"enabled": False}, "data": {"train": [{"corpus": str(corpus)}], "max_seq_len": 128},
        "train": {"max_steps": 30, "batch_size": 4, "lr": 1e-2, "eval_every": 10, "num_checkpoints": 3,
                  "threads": 1, "log_every": 5},
        "eval": {"checkpoints": "last", "tasks": [
            {"task": "ppl", "source": {"corpus": str(corpus)}},
            {"task": "continuation", "source": {"corpus": str(corpus)},
             "options": {"facts": str(pretrained["facts"]), "max_new_tokens": 40}}]},
    }, allow_unicode=True), encoding="utf-8")
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "runs" / "e2e"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert list(metrics["val_loss"]) == ["step-000010", "step-000020", "step-000030"]
    best = min(metrics["val_loss"], key=metrics["val_loss"].get)
    assert metrics["best_checkpoint"] == best
    assert set(metrics["checkpoints"]) == {best, "step-000030"}       # checkpoints: last, and the best
    for name, results in metrics["checkpoints"].items():
        assert math.log(results["ppl"]["perplexity"]) == pytest.approx(metrics["val_loss"][name], abs=1e-5)
        assert results["continuation"]["n"] == 4 and "fact_recall" in results["continuation"]
    assert metrics["best_val_loss"] == pytest.approx(min(metrics["val_loss"].values()))
    assert "score" not in metrics and metrics["throughput"]["tokens_per_s"] > 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "vs unigram" in report and "| prompt | model | reference |" in report and (run / "loss.png").exists()


def test_pretraining_report_from_hand_made_metrics(tmp_path):
    from tunelab.recipe import validate_recipe
    from tunelab.pipeline.kinds import write_report
    recipe = validate_recipe({"name": "r", "model": {"preset": "micro", "from_scratch": True},
                              "data": {"train": [{"generate": "arithmetic"}]}})
    metrics = {"name": "r", "pretraining": True, "best_checkpoint": "step-000002", "best_by": "val_loss",
               "best_val_loss": 2.0, "val_loss": {"step-000001": 2.5, "step-000002": 2.0, "step-000003": 2.1},
               "throughput": {"tokens_per_s": 1234.5},
               "train": {"steps": 3, "train_seconds": 5.0, "final_loss": 2.2, "stopped_early_at": 3},
               "checkpoints": {"step-000002": {"continuation": {
                   "n": 1, "rougeL_f": 12.5, "rougeL_p": 10.0, "rougeL_r": 20.0, "segmentation": "char",
                   "reference_chars": 200, "samples": [{"id": "x", "prompt": "a|b\nc", "continuation": "长" * 300,
                                                        "reference": ""}]}}}}
    write_report(recipe, metrics, tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "best checkpoint: step-000002 (lowest validation loss: 2.0000, perplexity 7.39)" in report
    assert "stopped early at step 3" in report and "1,234 tokens/s" in report and "tokens/s, MFU" not in report
    assert "| a\\|b ⏎ c | " + "长" * 160 + "… | – |" in report
    assert "| step-000001 | 2.5000 | – |" in report and "| step-000002 (best) | 2.0000 | Rouge-L 12.5 |" in report
    assert "Perplexity" not in report and "fact recall" not in report


def test_the_summary_says_which_way_perplexity_differs_from_the_unigrams():
    """A model only a few steps in is worse than token frequencies; the summary said "0.1x lower" for it."""
    from tunelab.pipeline.kinds import summary_lines

    def line(ppl):
        metrics = {"pretraining": True, "best_checkpoint": "s", "train": {"steps": 4, "train_seconds": 1.0,
                                                                         "final_loss": 7.0},
                   "checkpoints": {"s": {"ppl": {"perplexity": ppl, "unigram_perplexity": 150.0, "tokens": 900}}}}
        return next(x for x in summary_lines(metrics) if x.startswith("ppl:"))
    assert line(15.0).endswith("on the same 900 tokens (10.0x lower)")
    assert line(1050.0).endswith("(7.0x higher: not yet better than token frequencies)")
    assert line(150.0).endswith("(the same)")
