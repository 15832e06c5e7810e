"""`tunelab data corpus`: sentence-aligned blocks with no character lost, verify/show, uint32, errors."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.data.corpus.chunks import ReadSettings
from tunelab.data.corpus.encode import ByteLevelEncoder, TiktokenEncoder, _byte_chars, _pipeline, _single_regex, fast_encoder
from tunelab.data.corpus.clean import CleaningConfig, Deduplicator, clean_document, text_digest
from tunelab.data.corpus.prepare import prepare_corpus
from tunelab.data.corpus.read import iter_documents, list_inputs
from tunelab.data.corpus.store import CorpusBlocks, SplitWriter, read_docs, read_meta
from tunelab.data.corpus.verify import show_blocks, verify_corpus
from tunelab.data.corpus.sentences import split_sentences
from tunelab.errors import TunelabError
from tunelab.model.tokenizer import train_bpe_tokenizer, train_corpus_tokenizer

ZH = "北京上海铁路车站物种化合物人物地方发现命名位于开通年份研究描述城市河流山脉博物馆人口中心"
EN = ["the", "station", "railway", "species", "was", "first", "described", "in", "London", "by", "a", "river"]


def _zh_sentence(rng: random.Random, long: bool = False) -> str:
    n = rng.randint(60, 120) if long else rng.randint(4, 18)
    s = "".join(rng.choice(ZH) for _ in range(n))
    if rng.random() < 0.3:
        s += f"（{rng.choice(EN).capitalize()}）"
    if rng.random() < 0.3:
        s += f"，{rng.randint(1800, 2024)}年"
    return s + ("" if long else rng.choice(["。", "！", "？", "；", "。」", "……"]))


def _en_sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(EN) for _ in range(rng.randint(4, 12))).capitalize() + rng.choice([". ", "! ", "? "])


def _article(rng: random.Random, i: int) -> str:
    title = "".join(rng.choice(ZH) for _ in range(rng.randint(2, 5)))
    paras = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.2:
            paras.append("".join(_en_sentence(rng) for _ in range(rng.randint(2, 5))).strip())
        elif kind < 0.3:
            paras.append(_zh_sentence(rng, long=True) + "，".join(_zh_sentence(rng) for _ in range(3)))
        else:
            paras.append("".join(_zh_sentence(rng) for _ in range(rng.randint(2, 6))))
    body = "\n\n".join(paras)
    if i % 7 == 0:
        body += "（）<br>【】&amp;  \u3000 😀 <|endoftext|> 结束。"    # noise, an emoji, a literal EOT string
    return f"{title}\n\n{body}"


def _write_corpus(root: Path, n: int = 120, seed: int = 0) -> Path:
    """A zh/en corpus: a .jsonl, a .txt.gz and a .json array, with duplicates and a too-short document."""
    rng = random.Random(seed)
    arts = [_article(rng, i) for i in range(n)]
    arts[5] = arts[3]                         # an exact duplicate
    arts[8] = "短。"                          # too short
    root.mkdir(parents=True, exist_ok=True)
    a, b = n // 2, 3 * n // 4
    with open(root / "a.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(arts[:a]):
            f.write(json.dumps({"id": f"a{i}", "text": t}, ensure_ascii=i % 2 == 0) + "\n")
    with gzip.open(root / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n\n".join(t.replace("\n\n", "\n") for t in arts[a:b]) + "\n")
    (root / "c.json").write_text(json.dumps([{"id": f"c{i}", "text": t} for i, t in enumerate(arts[b:])],
                                            ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus_inputs(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("inputs") / "raw")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus_inputs) -> Path:
    texts = [d.text for d in iter_documents(list_inputs([corpus_inputs]))]
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_corpus_tokenizer(texts, 500).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, corpus_inputs, tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    prepare_corpus([corpus_inputs], str(tokenizer_dir), 24, out, ReadSettings(val_fraction=0.2), workers=2,
                   progress=False)
    return out


def _decoded_documents(directory: Path) -> list[str]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(directory / "tokenizer" / "tokenizer.json"))
    texts: dict[int, list[str]] = {}
    for split in ("train", "val"):
        blocks = CorpusBlocks(directory, split)
        for i in range(len(blocks)):
            ids = blocks.block(i).tolist()
            assert ids[-1] == blocks.eot_id and blocks.eot_id not in ids[:-1]
            assert len(ids) <= blocks.block_size
            texts.setdefault(int(blocks.index["doc"][i]), []).append(tok.decode(ids[:-1], skip_special_tokens=False))
    return ["".join(texts[i]) for i in sorted(texts)]


def test_every_cleaned_document_equals_its_decoded_blocks(corpus_inputs, corpus_dir):
    """Recompute the cleaned documents here (reader + cleaning + dedup) and compare with the decoded blocks."""
    cfg, dedup, expected = CleaningConfig(), Deduplicator(), []
    for raw in iter_documents(list_inputs([corpus_inputs])):
        doc, _ = clean_document(raw, cfg)
        if doc is not None and not dedup.seen(text_digest(doc.text)):
            expected.append(doc.text)
    assert _decoded_documents(corpus_dir) == expected
    meta = read_meta(corpus_dir)
    s = meta["summary"]
    assert s["documents_read"] == 120 and s["documents_kept"] == len(expected) == 118
    assert s["duplicates_removed"] == 1 and s["too_short"] == 1
    assert s["long_sentence_splits"]["at_soft_point"] + s["long_sentence_splits"]["at_token_boundary"] > 0
    assert s["cleaning"]["empty_brackets"] > 0 and s["cleaning"]["markup"] > 0
    assert meta["splits"]["val"]["documents"] > 0 and meta["dtype"] == "uint16"
    assert [i["path"] for i in meta["inputs"]] == [str(p.resolve()) for p in sorted(corpus_inputs.iterdir())]
    assert "<|endoftext|>" in "".join(expected)        # typed in a document: text, never an EOT inside a block


def test_blocks_end_at_sentence_ends(corpus_dir):
    """A block that is not a document's last ends where a sentence ends (up to its trailing whitespace),
    except the counted long-sentence cuts."""
    decoded = {}
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(corpus_dir / "tokenizer" / "tokenizer.json"))
    for split in ("train", "val"):
        b = CorpusBlocks(corpus_dir, split)
        for i in range(len(b)):
            decoded.setdefault(int(b.index["doc"][i]), []).append(tok.decode(b.block(i)[:-1].tolist(),
                                                                              skip_special_tokens=False))
    mid_sentence = 0
    for parts in decoded.values():
        text = "".join(parts)
        ends = set()
        at = 0
        for s in split_sentences(text):
            at += len(s)
            ends.update(range(at - (len(s) - len(s.rstrip())), at + 1))   # anywhere in its trailing whitespace
        at = 0
        for p in parts[:-1]:
            at += len(p)
            mid_sentence += at not in ends
    s = read_meta(corpus_dir)["summary"]["long_sentence_splits"]
    assert 0 < mid_sentence <= s["at_soft_point"] + s["at_token_boundary"]


def test_one_worker_and_two_give_the_same_corpus(tmp_path, corpus_inputs, tokenizer_dir, corpus_dir):
    out = tmp_path / "one"
    prepare_corpus([corpus_inputs], str(tokenizer_dir), 24, out, ReadSettings(val_fraction=0.2), workers=1,
                   progress=False)
    for name in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy", "docs.jsonl"):
        assert (out / name).read_bytes() == (corpus_dir / name).read_bytes(), name


def test_verify_passes_and_finds_a_changed_token(tmp_path, corpus_dir, capsys):
    assert verify_corpus(corpus_dir, workers=1, progress=False)["differences"] == 0
    assert main(["data", "corpus", "--verify", str(corpus_dir), "--workers", "1"]) == 0
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(corpus_dir, broken)
    tokens = np.memmap(broken / "train.bin", dtype=np.uint16, mode="r+")
    tokens[3] = (int(tokens[3]) + 7) % 400 + 3
    tokens.flush()
    del tokens
    first_train_doc = int(CorpusBlocks(broken, "train").index["doc"][0])
    result = verify_corpus(broken, workers=1, progress=False)
    assert result["differences"] == 1 and result["examples"][0]["doc"] == first_train_doc
    capsys.readouterr()
    assert main(["data", "corpus", "--verify", str(broken), "--workers", "1"]) == 1
    assert f'"doc": {first_train_doc},' in capsys.readouterr().out


def test_show_prints_a_documents_blocks(corpus_dir, capsys):
    docs = read_docs(corpus_dir)
    target = next(d for d in docs if d["blocks"] >= 2 and d["id"])
    rows = list(show_blocks(corpus_dir, doc=target["id"], limit=100))
    assert [r["doc"] for r in rows] == [target["doc"]] * target["blocks"]
    assert all(r["text"].endswith("<|endoftext|>") for r in rows)
    assert main(["data", "corpus", "--show", str(corpus_dir), "--limit", "3", "--split", "val"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and {r["split"] for r in lines} == {"val"}
    assert set(lines[0]) == {"doc", "id", "split", "block", "tokens", "text"}


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    rng = random.Random(1)
    texts = [_article(rng, i) for i in range(20)]
    tok = train_bpe_tokenizer(texts, 400)
    tok.add_tokens([f"词{i}号" for i in range(65_600)])
    assert len(tok) > 65_536
    tok.save_pretrained(tmp_path / "tok")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t + " 词65599号 末尾。"}, ensure_ascii=False) + "\n" for t in texts),
                   encoding="utf-8")
    meta = prepare_corpus([src], str(tmp_path / "tok"), 64, tmp_path / "c", ReadSettings(val_fraction=0),
                          workers=1, progress=False)
    assert meta["dtype"] == "uint32"
    blocks = CorpusBlocks(tmp_path / "c", "train")
    assert blocks.tokens.dtype == np.uint32 and int(blocks.tokens.max()) > 65_535
    assert verify_corpus(tmp_path / "c", workers=1, progress=False)["differences"] == 0


def test_malformed_line_names_file_and_line_and_leaves_nothing(tmp_path, tokenizer_dir, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"text": "第一篇文章的正文内容。"}, ensure_ascii=False) + "\n{\"text\": broken\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["data", "corpus", str(src), "--tokenizer", str(tokenizer_dir), "--block-size", "32",
               "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{src}:2" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [src]                   # neither out nor out.tmp-<pid>
    assert main(["data", "corpus", str(src), "--tokenizer", str(tokenizer_dir), "--block-size", "32",
                 "--out", str(out), "--workers", "1", "--skip-bad"]) == 0
    assert read_meta(out)["summary"]["bad_lines"] == 1
    assert main(["data", "corpus", str(src), "--tokenizer", str(tokenizer_dir), "--block-size", "32",
                 "--out", str(out)]) == 2                      # never overwritten
    assert "exists" in capsys.readouterr().err


def _damage(directory: Path, how: str) -> tuple[str, str]:
    """Damage a copy of a corpus one way; returns (the file the error must name, a phrase it must say)."""
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if how == "meta not JSON":
        meta_path.write_text('{"format": ', encoding="utf-8")
        return "meta.json:1", "malformed JSON"
    if how in ("meta without dtype", "block size a string", "dtype float64"):
        if how == "meta without dtype":
            del meta["dtype"]
        elif how == "block size a string":
            meta["block_size"] = "256"
        else:
            meta["dtype"] = "float64"
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
        return "meta.json", {"meta without dtype": "field 'dtype'", "block size a string": "field 'block_size'",
                             "dtype float64": "not uint16 or uint32"}[how]
    if how == "index missing":
        (directory / "train.idx.npy").unlink()
        return "train.idx.npy", "missing"
    if how == "index not numpy":
        (directory / "train.idx.npy").write_bytes(b"garbage")
        return "train.idx.npy", "not a block index"
    if how == "index past the tokens":
        index = np.load(directory / "train.idx.npy")
        index["offset"][1] = 10 ** 9
        np.save(directory / "train.idx.npy", index)
        return "train.idx.npy", "points outside"
    if how == "tokens missing":
        (directory / "val.bin").unlink()
        return "val.bin", "missing"
    if how == "docs line broken":
        lines = (directory / "docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        lines[2] = '{"doc": 2, broken\n'
        (directory / "docs.jsonl").write_text("".join(lines), encoding="utf-8")
        return "docs.jsonl:3", "malformed JSON"
    if how == "docs doc a string":
        lines = (directory / "docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        record = json.loads(lines[1])
        lines[1] = json.dumps({**record, "doc": str(record["doc"])}) + "\n"
        (directory / "docs.jsonl").write_text("".join(lines), encoding="utf-8")
        return "docs.jsonl:2", "field 'doc'"
    if how == "tokenizer missing":
        (directory / "tokenizer" / "tokenizer.json").unlink()
        return "tokenizer/tokenizer.json", "missing"
    if how == "tokenizer broken":
        (directory / "tokenizer" / "tokenizer.json").write_text('{"model": ', encoding="utf-8")
        return "tokenizer/tokenizer.json", "cannot read the tokenizer"
    assert how == "id outside the vocabulary"
    tokens = np.memmap(directory / "train.bin", dtype=np.dtype(meta["dtype"]), mode="r+")
    tokens[0] = meta["vocab_size"] + 5
    tokens.flush()
    del tokens
    return "train.bin", "outside the vocabulary"


@pytest.mark.parametrize("how", ["meta not JSON", "meta without dtype", "block size a string", "dtype float64",
                                 "index missing", "index not numpy", "index past the tokens", "tokens missing",
                                 "docs line broken", "docs doc a string", "tokenizer missing", "tokenizer broken",
                                 "id outside the vocabulary"])
def test_a_damaged_corpus_is_named_not_a_traceback(tmp_path, corpus_dir, capsys, how):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(corpus_dir, broken)
    where, says = _damage(broken, how)
    first_doc = str(int(np.load(corpus_dir / "train.idx.npy")["doc"][0]))
    capsys.readouterr()
    rc = main(["data", "corpus", "--show", str(broken), "--doc", first_doc, "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{broken / where}" in err and says in err and "Traceback" not in err, err
    if how == "id outside the vocabulary":  # training reads blocks the same way; --verify reports, not decodes
        from tunelab.train.corpus_rows import CorpusRows
        with pytest.raises(TunelabError, match="block 0 holds token id"):
            CorpusBlocks(broken, "train").block(0)
        with pytest.raises(TunelabError, match="block 0 holds token id"):  # before training starts
            CorpusRows(CorpusBlocks(broken, "train"), 256, True, "random")
        result = verify_corpus(broken, workers=1, progress=False)
        assert result["documents"] == 0 and any("1 token ids outside" in p["problem"] for p in result["examples"])
        assert main(["data", "corpus", "--verify", str(broken), "--workers", "1"]) == 1
    if how == "tokenizer broken":  # the same tokenizer given to prepare a corpus is named where it is kept
        src = tmp_path / "in.jsonl"
        src.write_text(json.dumps({"text": "第一篇文章的正文内容。"}, ensure_ascii=False) + "\n", encoding="utf-8")
        capsys.readouterr()
        assert main(["data", "corpus", str(src), "--tokenizer", str(broken / "tokenizer"), "--block-size", "32",
                     "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
        err = capsys.readouterr().err
        assert f"{broken / 'tokenizer' / 'tokenizer.json'}: cannot read" in err and "Traceback" not in err
        assert not list(tmp_path.glob("out*"))  # neither out nor its staging dir


# Qwen2's pre-tokenizer regex (Llama-3's differs only in \p{N}{1,3})
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _fuzz_texts(seed: int, n: int) -> list[str]:
    """zh/en/digits/punctuation/whitespace/emoji, and the characters the CJK pipeline's classes hinge on:
    CJK marks that are letters (々〆) or numbers (〇), kana marks (・゛), fullwidth digits and letters, an
    ideograph outside the BMP, the ideographic space."""
    rng = random.Random(seed)
    alphabet = (list(ZH) + list("abcXYZ 0123456789.,!?'s'll，。、：；！？“”（）《》\n\t\u3000  😀é々〆〇・゛カナ한１Ａ—…·_")
                + ["'re", " \n ", "\U00020001", "\r\n"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(n)]


def _qwen2_style_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return tok


def _gpt2_tokenizer(texts: list[str]):
    """GPT-2's pipeline: ByteLevel with its own regex, nothing before it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return tok


def test_fast_encoders_give_the_tokenizers_own_ids(tokenizer_dir):
    """Fuzzed text: tiktoken (one regex for each pipeline, the CJK one composite) and the cached Python
    encoder both give the ids of `tokenizers` itself, for tunelab's two pipelines, GPT-2's and a Qwen2-style one."""
    from tokenizers import Tokenizer
    texts = _fuzz_texts(3, 400)
    plain = train_bpe_tokenizer(texts, 400).backend_tokenizer
    cjk = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    for tok in (plain, cjk, _qwen2_style_tokenizer(texts), _gpt2_tokenizer(texts)):
        tok.encode_special_tokens = True
        encoders = [fast_encoder(tok), ByteLevelEncoder.for_tokenizer(tok)]
        assert isinstance(encoders[0], TiktokenEncoder) and encoders[1] is not None
        for t in texts + ["<|endoftext|> typed in a document", ""]:
            want = tok.encode(t, add_special_tokens=False).ids
            assert [e.encode(t) for e in encoders] == [want, want], t


def test_one_regex_cuts_the_pieces_each_pipeline_cuts(tokenizer_dir):
    """Stronger than equal ids (a small vocabulary rarely merges across a wrong cut): the single regex finds
    exactly the pieces the tokenizer's pre-tokenizer sequence gives, and so does its look-ahead-free form on
    the text cut first, which is what tiktoken runs."""
    import regex
    from tokenizers import Tokenizer
    texts = _fuzz_texts(4, 400) + ["a  b", "a \n\n 1", "\n\n标题", "x\u3000\u3000 y", "  ", " \t\nZ", "a  ，b"]
    byte_of = {c: b for b, c in _byte_chars().items()}
    for tok in (train_bpe_tokenizer(texts, 300).backend_tokenizer, _gpt2_tokenizer(texts),
                Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")), _qwen2_style_tokenizer(texts)):
        one = _single_regex(_pipeline(json.loads(tok.to_str())))
        pattern, fast = regex.compile(one.pattern, regex.V1), regex.compile(one.fast, regex.V1)
        cut = regex.compile(one.cut) if one.cut else None
        for t in texts:
            pieces = [bytes(byte_of[c] for c in p).decode("utf-8") for p, _ in tok.pre_tokenizer.pre_tokenize_str(t)]
            assert pattern.findall(t) == pieces, t
            assert [x for part in (cut.split(t) if cut else [t]) for x in fast.findall(part)] == pieces, t


def test_tiktoken_is_not_used_when_ids_are_not_merge_order(tokenizer_dir):
    """tiktoken merges by id: a vocabulary renumbered out of merge order keeps the Python encoder."""
    from tokenizers import Tokenizer
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    first_merge = "".join(spec["model"]["merges"][0]) if isinstance(spec["model"]["merges"][0], list) \
        else spec["model"]["merges"][0].replace(" ", "")
    vocab[last], vocab[first_merge] = vocab[first_merge], vocab[last]
    tok = Tokenizer.from_str(json.dumps(spec))
    assert isinstance(fast_encoder(tok), ByteLevelEncoder)


def test_fast_encoder_survives_its_cache_starting_over(monkeypatch):
    """More distinct pieces than the cache holds: it starts over and still gives the tokenizer's ids (a piece
    cached just before the clear used to raise KeyError and stop corpora above ~30 MB)."""
    import tunelab.data.corpus.encode as bpe_encode
    monkeypatch.setattr(bpe_encode, "CACHE_LIMIT", 3)
    rng = random.Random(5)
    texts = ["".join(rng.choice(ZH + "，。ab 12") for _ in range(rng.randint(5, 60))) for _ in range(200)]
    tok = train_bpe_tokenizer(texts, 400).backend_tokenizer
    fast = ByteLevelEncoder.for_tokenizer(tok)
    for t in texts:
        assert fast.encode(t) == tok.encode(t, add_special_tokens=False).ids, t


def test_offsets_path_and_a_lossy_tokenizer(tmp_path, corpus_inputs):
    """With a normalizer the blocks are cut by character offsets: a no-op one (NFC on NFC text) still loses
    nothing; a lossy one (lowercase) prepares, and --verify names the documents it changed."""
    from tokenizers import normalizers
    texts = [d.text for d in iter_documents(list_inputs([corpus_inputs]))]
    results = {}
    for name, normalizer in (("nfc", normalizers.NFC()), ("lower", normalizers.Lowercase())):
        tok = train_corpus_tokenizer(texts, 400)
        tok.backend_tokenizer.normalizer = normalizer
        tok.save_pretrained(tmp_path / name)
        meta = prepare_corpus([corpus_inputs], str(tmp_path / name), 16, tmp_path / f"c-{name}",
                              ReadSettings(val_fraction=0), workers=1, progress=False)
        assert sum(meta["summary"]["long_sentence_splits"].values()) > 0
        results[name] = verify_corpus(tmp_path / f"c-{name}", workers=1, progress=False)
    assert results["nfc"]["differences"] == 0
    lower = results["lower"]
    assert lower["differences"] > 0 and lower["examples"][0]["decoded"] == lower["examples"][0]["expected"].lower()


def test_a_killed_preparation_leaves_no_pile_of_staging_dirs(tmp_path, corpus_inputs, tokenizer_dir):
    """A kill -9 leaves `OUT.tmp-<pid>`; the next preparation removes it (its process is gone), not a live one's."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()                                                         # its pid now belongs to no process
    out = tmp_path / "c"
    stale, live = tmp_path / f"c.tmp-{dead.pid}", tmp_path / "c.tmp-1"   # pid 1 is always alive
    for d in (stale, live):
        d.mkdir()
        (d / "train.bin").write_bytes(b"half")
    prepare_corpus([corpus_inputs], str(tokenizer_dir), 32, out, ReadSettings(), workers=1, progress=False)
    assert (out / "meta.json").is_file() and not stale.exists() and live.exists()


def test_split_writer_keeps_no_earlier_chunk_alive(tmp_path):
    """Documents arrive as views of their chunk's array; a split that takes one document from each of many
    chunks (the val split) must not keep every chunk alive until it has gathered enough to write: memory
    would grow with the corpus (it did: 1.9x the main process's peak at a 10x corpus)."""
    import gc
    import weakref
    writer = SplitWriter(tmp_path, "val", "uint16")
    refs, want = [], []
    for k in range(50):
        chunk = np.arange(k, k + 10_000, dtype=np.uint32)       # a chunk's tokens; one document taken from it
        writer.add_blocks(chunk[:5], np.array([2, 3], dtype=np.int32), k)
        refs.append(weakref.ref(chunk))
        want += list(range(k, k + 5))
        del chunk
    gc.collect()
    assert sum(r() is not None for r in refs) <= 1
    writer.add_blocks([7, 8], [2], 49)          # more blocks of the last document, in a call of their own
    want += [7, 8]
    assert writer.close() == {"blocks": 101, "tokens": 252, "documents": 50}
    assert np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist() == want
    index = np.load(tmp_path / "val.idx.npy")
    assert index["offset"].tolist() == [o for k in range(50) for o in (5 * k, 5 * k + 2)] + [250]
    assert index["length"].tolist() == [2, 3] * 50 + [2]
    assert index["doc"].tolist() == [k for k in range(50) for _ in (0, 1)] + [49]


@pytest.mark.parametrize("kind", ["bpe", "cjk"])
def test_hostile_text_prepares_and_verifies_through_the_fast_encoder(tmp_path, kind):
    """Arbitrary code points, every odd corner of the text fuzz, a 200,000-digit number, emoji and combining
    marks by the thousand: prepared with tiktoken doing the encoding (both tunelab pipelines), nothing
    crashes and `--verify` finds every cleaned document in its blocks. (The digits once took 84 s alone: each
    block of a long sentence searched the whole sentence for its cut points again.)"""
    from test_corpus_text import random_texts
    texts = [t for t in random_texts(400, seed=11) if not any(0xD800 <= ord(c) < 0xE000 for c in t)]
    texts += ["1" * 200_000, "😀" * 5000, "a" + "\u0301" * 3000, " " * 5000 + "x", "行\n" * 20_000]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(texts)), encoding="utf-8")
    train = train_corpus_tokenizer if kind == "cjk" else train_bpe_tokenizer
    train(texts[:200], 400).save_pretrained(tmp_path / "tok")
    from tokenizers import Tokenizer
    assert isinstance(fast_encoder(Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))), TiktokenEncoder)
    meta = prepare_corpus([src], str(tmp_path / "tok"), 32, tmp_path / "out",
                          ReadSettings(cleaning=CleaningConfig(min_chars=0)), workers=2, progress=False)
    assert meta["summary"]["documents_kept"] > 250
    report = verify_corpus(tmp_path / "out", workers=2, progress=False)
    assert report["differences"] == 0, report["examples"]


@pytest.mark.parametrize("workers", ["0", "-3", "100000", "two"])
def test_a_worker_count_out_of_range_is_refused(tmp_path, corpus_inputs, tokenizer_dir, capsys, workers):
    # --workers 100000 forked processes until the machine gave out
    with pytest.raises(SystemExit) as e:
        main(["data", "corpus", str(corpus_inputs), "--tokenizer", str(tokenizer_dir), "--block-size", "32",
              "--out", str(tmp_path / "out"), "--workers", workers])
    assert e.value.code == 2 and "argument --workers" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
