"""Hugging Face datasets as a source (`hf:` in a recipe, Parquet / save_to_disk / hf:NAME corpus inputs).

Every dataset is built here (`Dataset.from_dict(...).save_to_disk`, `to_parquet`); nothing is downloaded: the
hub is switched off for the whole module (the offline variables, and `datasets`' / `huggingface_hub`'s own flags,
which they read when first imported), and the datasets cache is this module's own temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from tunelab.cli import main  # noqa: E402
from tunelab.data.corpus.chunks import ReadSettings  # noqa: E402
from tunelab.data.corpus.prepare import prepare_corpus  # noqa: E402
from tunelab.data.corpus.verify import verify_corpus  # noqa: E402
from tunelab.data.corpus.read import iter_documents, list_inputs  # noqa: E402
from tunelab.data.formats import read_examples  # noqa: E402
from tunelab.data.sources import load_source, training_examples  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.recipe import SourceConfig, load_recipe, validate_recipe  # noqa: E402

QUESTIONS = ["一加一等于几？", "What is 2 + 3?", "三乘四是多少？", "Name the capital of France.", "水的化学式是什么？",
             "How many legs does a spider have?", "十减七等于几？", "Translate 你好 into English."]
ANSWERS = ["二", "5", "十二", "Paris", "H₂O", "8", "三", "Hello"]


@pytest.fixture(autouse=True)
def offline(tmp_path_factory, monkeypatch):
    """No hub: the offline variables and the flags the libraries read from them at import; a cache of our own."""
    import huggingface_hub.constants
    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def qa_dataset(n: int = 8, start: int = 0):
    return datasets.Dataset.from_dict({"qid": [f"q{i}" for i in range(start, start + n)],
                                       "question": [QUESTIONS[i % 8] + f" ({i})" for i in range(start, start + n)],
                                       "answer": [ANSWERS[i % 8] for i in range(start, start + n)]})


MAPPING = {"instruction": "question", "output": "answer"}


# --- examples from datasets --------------------------------------------------------------------------------

def test_parquet_shards_with_a_mapping_read_as_the_same_records_in_a_file_would(tmp_path):
    """Parquet shards (a glob) with `fields` give the examples a JSONL file of the renamed records gives, and
    `count` samples the same rows with the same ids."""
    for k in range(3):
        qa_dataset(8, 8 * k).to_parquet(tmp_path / f"qa-{k:05d}.parquet")
    (tmp_path / "qa.jsonl").write_text("".join(
        json.dumps({"instruction": QUESTIONS[i % 8] + f" ({i})", "output": ANSWERS[i % 8], "qid": f"q{i}"},
                   ensure_ascii=False) + "\n" for i in range(24)), encoding="utf-8")
    hf = load_source(SourceConfig(hf=str(tmp_path / "qa-*.parquet"), fields=MAPPING, format="alpaca"))
    files = load_source(SourceConfig(path=str(tmp_path / "qa.jsonl"), format="alpaca"))
    assert [(e.instruction, e.output) for e in hf] == [(e.instruction, e.output) for e in files]
    assert len(hf) == 24 and hf[0].instruction == "一加一等于几？ (0)" and hf[0].id == "qa-0"
    sampled = load_source(SourceConfig(hf=str(tmp_path / "qa-*.parquet"), fields=MAPPING, count=5, seed=3))
    from_file = load_source(SourceConfig(path=str(tmp_path / "qa.jsonl"), count=5, seed=3))
    assert [(e.id.split("-")[-1], e.instruction) for e in sampled] == \
        [(e.id.split("-")[-1], e.instruction) for e in from_file]
    streamed = load_source(SourceConfig(hf=str(tmp_path / "qa-*.parquet"), fields=MAPPING, streaming=True, count=4))
    assert [e.output for e in streamed] == ANSWERS[:4]
    # the same mapping applies to a path source's keys
    (tmp_path / "raw.jsonl").write_text(json.dumps({"question": "一加一", "answer": "二"}, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    assert read_examples(tmp_path / "raw.jsonl", "alpaca", MAPPING)[0].output == "二"


@pytest.mark.parametrize("kind", ["csv", "json", "arrow"])
def test_csv_json_and_arrow_files(tmp_path, kind):
    ds = qa_dataset(4)
    if kind == "arrow":
        ds.save_to_disk(tmp_path / "saved")
        name = str(next((tmp_path / "saved").glob("*.arrow")))
    else:
        name = str(tmp_path / f"qa.{kind}")
        getattr(ds, f"to_{kind}")(name, **({"force_ascii": False} if kind == "json" else {}))
    examples = load_source(SourceConfig(hf=name, fields=MAPPING))
    assert [e.output for e in examples] == ANSWERS[:4]


def test_save_to_disk_folders_and_their_splits(tmp_path):
    datasets.DatasetDict({"train": qa_dataset(6), "test": qa_dataset(2, 6)}).save_to_disk(tmp_path / "dict")
    qa_dataset(3).save_to_disk(tmp_path / "one")
    assert len(load_source(SourceConfig(hf=str(tmp_path / "dict"), fields=MAPPING))) == 6
    test = load_source(SourceConfig(hf=str(tmp_path / "dict"), split="test", fields=MAPPING))
    assert [e.instruction for e in test] == [QUESTIONS[6] + " (6)", QUESTIONS[7] + " (7)"]
    assert len(load_source(SourceConfig(hf=str(tmp_path / "one"), fields=MAPPING, streaming=True))) == 3
    with pytest.raises(TunelabError, match=r'unknown split "validation" \(the dataset has train, test\)') as e:
        load_source(SourceConfig(hf=str(tmp_path / "dict"), split="validation", fields=MAPPING), "data.train.0.")
    assert e.value.field == "data.train.0.split"


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    qa_dataset(3).save_to_disk(tmp_path / "one")
    with pytest.raises(TunelabError) as e:
        load_source(SourceConfig(hf=str(tmp_path / "one"), fields={"instruction": "question", "output": "reply"}),
                    "data.train.1.")
    assert e.value.field == "data.train.1.fields.output"
    assert "column 'reply' is not in" in e.value.message and "question, answer" in e.value.message
    # a column the format needs and no mapping gives
    with pytest.raises(TunelabError, match=r"no column 'output' for this format \(the columns: qid, question, "
                                           r"answer\); map one with fields: \{output: COLUMN\}"):
        load_source(SourceConfig(hf=str(tmp_path / "one"), fields={"instruction": "question"}, format="alpaca"))


def make_hub_cache(cache: Path, name: str, ds) -> None:
    """`ds` in the datasets cache as a hub download of `name` leaves it (NAMESPACE___NAME/CONFIG/VERSION/HASH with
    the split's Arrow file and dataset_info.json): what `load_dataset(name)` finds there when offline."""
    namespace, short = name.split("/")
    build = cache.parent / f"build-{namespace}-{short}"
    ds.to_parquet(build / "x.parquet")
    datasets.load_dataset("parquet", data_files=str(build / "x.parquet"), cache_dir=str(build))
    src = next(p for p in build.glob("parquet/*/*/*") if p.is_dir())
    dst = cache / f"{namespace}___{short}" / "default" / "0.0.0" / "0123abcd"
    dst.mkdir(parents=True)
    (dst / f"{short}-train.arrow").write_bytes((src / "parquet-train.arrow").read_bytes())
    info = json.loads((src / "dataset_info.json").read_text())
    (dst / "dataset_info.json").write_text(json.dumps({**info, "dataset_name": short, "config_name": "default"}))


def test_a_hub_name_is_read_from_the_local_cache_offline(tmp_path, offline):
    make_hub_cache(offline, "someorg/tiny-qa", qa_dataset(5))
    examples = load_source(SourceConfig(hf="someorg/tiny-qa", fields=MAPPING))
    assert [e.output for e in examples] == ANSWERS[:5] and examples[0].id == "tiny-qa-0"
    sliced = load_source(SourceConfig(hf="someorg/tiny-qa", fields=MAPPING, split="train[:2]"))
    streamed = load_source(SourceConfig(hf="someorg/tiny-qa", fields=MAPPING, streaming=True, count=2))
    assert [e.output for e in sliced] == [e.output for e in streamed] == ANSWERS[:2]
    with pytest.raises(Exception, match="a stream reads whole splits, not 'train\\[:2\\]'"):
        SourceConfig(hf="someorg/tiny-qa", split="train[:2]", streaming=True)
    with pytest.raises(TunelabError) as e:
        load_source(SourceConfig(hf="someorg/tiny-qa", config="zh", fields=MAPPING), "data.train.0.")
    assert e.value.field == "data.train.0.config" and "config 'zh'" in e.value.message
    assert "Available configs in the cache: ['default']" in e.value.message     # not lost with the line break


def test_an_offline_hub_name_is_one_line_saying_how_to_get_it(tmp_path, make_recipe, capsys):
    path = make_recipe(data={"train": [{"hf": "someorg/not-downloaded", "fields": MAPPING}]})
    assert main(["data", "check", str(path)]) != 0
    err = one_error_line(capsys.readouterr().err)
    assert "field 'data.train.0.hf': dataset someorg/not-downloaded is not in the local cache" in err
    assert "offline" in err and "save_to_disk" in err


def one_error_line(stderr: str) -> str:
    """The one error line of a failed command (datasets' progress bars may come before it), and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("tunelab:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("bad, field, says", [
    ({"split": "dev"}, "data.train.0.split", 'unknown split "dev"'),
    ({"fields": {"instruction": "question", "output": "reply"}}, "data.train.0.fields.output",
     "column 'reply' is not in"),
])
def test_bad_inputs_end_in_one_line(tmp_path, make_recipe, capsys, bad, field, says):
    qa_dataset(4).to_parquet(tmp_path / "qa.parquet")
    path = make_recipe(data={"train": [{"hf": "qa.parquet", "fields": MAPPING, **bad}]})  # relative to the recipe
    assert main(["data", "check", str(path)]) != 0
    err = one_error_line(capsys.readouterr().err)
    assert f"field '{field}'" in err and says in err, err


def test_recipe_schema_for_hf_sources(tmp_path, make_recipe):
    def problem(source: dict, **data) -> str:
        raw = {"name": "r", "model": {"preset": "micro", "from_scratch": True}, "data": {"train": [source], **data}}
        with pytest.raises(TunelabError) as e:
            validate_recipe(raw)
        return str(e.value)
    assert "'split' is an option of a Hugging Face dataset" in problem({"path": "x.json", "split": "train"})
    assert "give exactly one of 'path', 'generate', 'hf' or 'corpus'" in problem({"path": "x", "hf": "y"})
    assert "'fields' maps the columns of records" in problem({"generate": "arithmetic", "fields": MAPPING})
    two = [{"hf": "a/b"}, {"hf": "c/d"}]
    assert "sum to 1" in problem(two[0], mix={"probabilities": [0.5, 0.6]})
    raw = {"name": "r", "model": {"preset": "micro", "from_scratch": True},
           "data": {"train": two, "mix": {"probabilities": [1.0]}}}
    with pytest.raises(TunelabError, match="one per example source"):
        validate_recipe(raw)
    path = make_recipe(data={"train": [{"hf": "shards/*.parquet", "fields": MAPPING}]})
    with pytest.raises(TunelabError, match=r"no data file matches shards/\*\.parquet") as e:
        load_recipe(path)
    assert e.value.field == "data.train.0.hf" and e.value.line is not None


def test_an_eval_entry_reads_a_dataset(tmp_path):
    """`eval.tasks[].source` takes the same `hf:` keys: a reading task from a DatasetDict's test split (CLUE-style
    columns mapped), its errors naming the entry's fields."""
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import validate_eval
    clue = datasets.Dataset.from_dict({"passage": ["小明住在北京。", "The cat sat on the mat."],
                                       "query": ["小明住在哪里？", "Where did the cat sit?"],
                                       "label_text": ["北京", "on the mat"]})
    datasets.DatasetDict({"train": clue, "test": clue.select([1])}).save_to_disk(tmp_path / "clue")
    source = {"hf": str(tmp_path / "clue"), "split": "test", "format": "reading",
              "fields": {"context": "passage", "question": "query", "answer": "label_text"}}
    sets = eval_sets(validate_eval({"tasks": [{"task": "reading", "source": source}]}))
    assert [e.output for e in sets["reading"].examples] == ["on the mat"]
    assert sets["reading"].source == f"hf:{tmp_path / 'clue'}" and "cat" in sets["reading"].examples[0].instruction
    with pytest.raises(TunelabError) as e:
        eval_sets(validate_eval({"tasks": [{"task": "reading", "source": {**source, "split": "dev"}}]}))
    assert e.value.field == "eval.tasks.0.source.split" and "train, test" in e.value.message


# --- mixing ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stopping", ["first_exhausted", "all_exhausted"])
def test_mixing_is_interleave_datasets(tmp_path, make_recipe, stopping):
    """`data.mix` gives the examples in the order `datasets.interleave_datasets` gives the same rows."""
    a, b = qa_dataset(20), qa_dataset(6, 100)
    a.to_parquet(tmp_path / "a.parquet")
    b.save_to_disk(tmp_path / "b")
    mix = {"probabilities": [0.3, 0.7], "seed": 4, "stopping_strategy": stopping}
    path = make_recipe(data={"train": [{"hf": "a.parquet", "fields": MAPPING}, {"hf": "b", "fields": MAPPING}],
                             "mix": mix})
    got = [e.instruction for e in training_examples(load_recipe(path))]
    want = datasets.interleave_datasets([a, b], probabilities=[0.3, 0.7], seed=4, stopping_strategy=stopping)
    assert got == list(want["question"])
    assert len(got) != 26      # really interleaved: under- or oversampled, not one source after the other
    plain = load_recipe(path, overrides=["data.mix=null"])
    assert [e.instruction for e in training_examples(plain)] == list(a["question"]) + list(b["question"])


# --- training ----------------------------------------------------------------------------------------------

def test_a_recipe_trains_from_a_saved_dataset_and_parquet_shards(tmp_path, make_recipe):
    """The issue's acceptance: a run trains on a save_to_disk folder and on Parquet shards with a column mapping,
    mixed by probabilities."""
    from tunelab.train.loop import train
    data = tmp_path / "data"
    qa_dataset(40).save_to_disk(data / "saved")
    convo = datasets.Dataset.from_dict({"prompt": [QUESTIONS[i % 8] for i in range(60)],
                                        "reply": [ANSWERS[i % 8] for i in range(60)]})
    for k in range(3):
        convo.shard(3, k).to_parquet(data / f"shard-{k}.parquet")
    path = make_recipe(data={"train": [{"hf": "data/saved", "fields": MAPPING},
                                       {"hf": "data/shard-*.parquet", "format": "alpaca",
                                        "fields": {"instruction": "prompt", "output": "reply"}}],
                             "mix": {"probabilities": [0.5, 0.5], "seed": 1, "stopping_strategy": "all_exhausted"}},
                       train={"max_steps": 3, "batch_size": 2})
    recipe = load_recipe(path)
    examples = training_examples(recipe)
    assert {e.id.rsplit("-", 1)[0] for e in examples} == {"saved", "shard"} and len(examples) >= 100
    summary = train(recipe)
    assert summary["steps"] == 3
    metrics = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss"] > 0 for m in metrics if "loss" in m)


# --- corpora -----------------------------------------------------------------------------------------------

ARTICLE = "第{i}篇文章讲的是北京的天气。今天晴，气温二十度，有一些 English words in between。明天会下雨吗？也许会。"


def articles(n: int, start: int = 0, repeat: int = 1) -> list[str]:
    return [ARTICLE.format(i=i) * repeat for i in range(start, start + n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tunelab.model.tokenizer import train_corpus_tokenizer
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_corpus_tokenizer(articles(200), 400).save_pretrained(out)
    return out


def test_a_parquet_corpus_prepares_the_blocks_its_jsonl_would(tmp_path, tokenizer):
    """The same documents as Parquet shards (a `content` column) and as JSONL give the same corpus, and it
    verifies; a save_to_disk folder among the inputs is one input."""
    texts = articles(90)
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "a.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False)
                                                        + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    shards = tmp_path / "shards"
    shards.mkdir()
    table = datasets.Dataset.from_dict({"id": [f"d{i}" for i in range(90)], "content": texts})
    for k in range(3):
        table.select(range(30 * k, 30 * k + 30)).to_parquet(shards / f"part-{k}.parquet")
    settings = ReadSettings(val_fraction=0.1)
    want = prepare_corpus([tmp_path / "jsonl"], str(tokenizer), 32, tmp_path / "want", settings, workers=1,
                          progress=False)
    got = prepare_corpus([shards], str(tokenizer), 32, tmp_path / "got", ReadSettings(text_field="content",
                         val_fraction=0.1), workers=2, progress=False)
    for split in ("train", "val"):
        assert (tmp_path / "got" / f"{split}.bin").read_bytes() == (tmp_path / "want" / f"{split}.bin").read_bytes()
    assert got["splits"] == want["splits"] and got["summary"]["documents_kept"] == 90
    assert verify_corpus(tmp_path / "got", workers=1, progress=False)["differences"] == 0
    datasets.Dataset.from_dict({"text": articles(5, 500)}).save_to_disk(shards / "more")
    assert [p.name for p in list_inputs([shards])] == ["more", "part-0.parquet", "part-1.parquet", "part-2.parquet"]
    docs = list(iter_documents(list_inputs([shards / "more"])))
    assert [d.line for d in docs] == [1, 2, 3, 4, 5] and docs[0].text == articles(1, 500)[0]


def test_a_corpus_from_a_hub_name_and_its_errors(tmp_path, tokenizer, offline, capsys):
    make_hub_cache(offline, "someorg/wiki-zh", datasets.Dataset.from_dict({"text": articles(20)}))
    out = tmp_path / "c"
    assert main(["data", "corpus", "hf:someorg/wiki-zh", "--tokenizer", str(tokenizer), "--block-size", "32",
                 "--out", str(out), "--workers", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["inputs"][0]["hf"] == "someorg/wiki-zh" and meta["summary"]["documents_kept"] == 20
    assert main(["data", "corpus", "--verify", str(out)]) == 0
    capsys.readouterr()
    for args, says in [(["hf:someorg/absent"], "dataset someorg/absent is not in the local cache"),
                       (["hf:someorg/wiki-zh", "--text-field", "body"],
                        "--text-field: no column 'body' to read the text from (its columns: text)"),
                       (["hf:someorg/wiki-zh", "--hf-split", "test"], 'unknown split "test"')]:
        assert main(["data", "corpus", *args, "--tokenizer", str(tokenizer), "--block-size", "32",
                     "--out", str(tmp_path / "bad"), "--workers", "1"]) != 0
        assert says in one_error_line(capsys.readouterr().err)
        assert not (tmp_path / "bad").exists()


def _hwm() -> int:
    """This process's peak resident memory (VmHWM, bytes) since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_streaming_a_parquet_corpus_keeps_memory_flat(tmp_path):
    """Six Parquet shards (~41 MB of UTF-8 text), and the same rows in one file, stream through the reader a batch
    at a time: the Python heap's peak (tracemalloc, as the JSONL reading test measures it) stays small and fixed,
    and so does the process's resident peak, where Arrow's own buffers are: reading six shards or one six times
    as large costs what reading one shard does. (Holding a file's record batches while reading it, the big file
    alone raised the resident peak by 46 MB.)"""
    import tracemalloc
    texts = articles(400, repeat=120)                # ~ 7 MB of UTF-8 a shard
    tables = [datasets.Dataset.from_dict({"text": [f"{k}:{t}" for t in texts]}) for k in range(6)]
    for k, table in enumerate(tables):
        table.to_parquet(tmp_path / f"wiki-{k}.parquet", batch_size=100)
    datasets.concatenate_datasets(tables).to_parquet(tmp_path / "all" / "wiki.parquet", batch_size=100)
    size = sum(len(t.encode()) for t in texts) * 6

    shards = sorted(tmp_path.glob("wiki-*.parquet"))
    # measured in a fresh interpreter: after hundreds of tests, this process's allocators (Arrow's pool, the C
    # heap) hold memory in ways that move the resident peak by tens of MB whatever the reader does
    script = f"""
import gc, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_hf_datasets import _hwm
from tunelab.data.corpus.read import iter_documents

def resident_growth(paths):
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")   # reset the resident high-water mark to what is resident
    before = _hwm()
    chars = sum(len(d.text) for d in iter_documents(paths))
    assert chars * 3 > len(paths) * {size} / 6 * 0.9
    return _hwm() - before

shards = [Path(p) for p in {[str(p) for p in shards]!r}]
resident_growth(shards[:1])                        # warm up: imports, the first allocations
# the least of three reads each: Arrow's pool (mimalloc) keeps freed pages for a while, and one read of the big
# file has grown the peak anywhere from 14 to 42 MB on one host; a reader that held the file would do so each time
best = lambda paths: min(resident_growth(paths) for _ in range(3))  # noqa: E731
print(best(shards[:1]), best(shards), best([Path({str(tmp_path / "all" / "wiki.parquet")!r})]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    one, six, big = (int(x) for x in out.stdout.split())
    print(f"resident peak growth: one shard {one / 1e6:.1f} MB, six {six / 1e6:.1f} MB, one big file "
          f"{big / 1e6:.1f} MB ({size / 1e6:.0f} MB of text)")
    assert six < one + 24_000_000 and big < one + 24_000_000, (one, six, big)
    sum(len(d.text) for d in iter_documents(shards[:1]))  # warm up here too: imports, the first allocations
    tracemalloc.start()
    try:
        chars = sum(len(d.text) for d in iter_documents(shards))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chars * 3 > size * 0.9                      # every character was read
    assert peak < 8_000_000, peak                      # Python heap: a batch of rows, not the corpus


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_tunelab_data_corpus_prepares_parquet_shards_with_flat_memory(tmp_path, tokenizer):
    """The whole `tunelab data corpus` (read, clean, tokenise, write blocks) on six Parquet shards, ~18 MB of
    text: its resident peak grows no more than for one shard (measured: -0.2 MB and -0.1 MB). Reading every input
    before cleaning it, as a non-streaming reader would, raised it by 44 MB for six shards and 20 MB for one."""
    import gc
    texts = articles(400, repeat=50)                  # ~ 3 MB of UTF-8 a shard
    for k in range(6):
        datasets.Dataset.from_dict({"text": [f"{k}:{t}" for t in texts]}).to_parquet(tmp_path / f"wiki-{k}.parquet",
                                                                                     batch_size=100)
    shards = [str(p) for p in sorted(tmp_path.glob("wiki-*.parquet"))]

    def resident_growth(inputs, out) -> int:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = _hwm()
        assert main(["--quiet", "data", "corpus", *inputs, "--tokenizer", str(tokenizer), "--block-size", "128",
                     "--out", str(tmp_path / out), "--workers", "1"]) == 0
        return _hwm() - before

    resident_growth(shards[:1], "warm")               # imports, the tokenizer, the first allocations
    one, six = resident_growth(shards[:1], "one"), resident_growth(shards, "six")
    meta = json.loads((tmp_path / "six" / "meta.json").read_text())
    assert meta["summary"]["documents_kept"] == 2400 and len(meta["inputs"]) == 6
    print(f"resident peak growth of tunelab data corpus: one shard {one / 1e6:.1f} MB, six {six / 1e6:.1f} MB")
    assert six < one + 16_000_000, (one, six)
