"""Corpus text: reading every input format with errors that say where, each cleaning rule on and off with its
count, and sentence splitting that never loses or changes a character (fuzzed on generated zh/en text)."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import re
import time
import tracemalloc

import pytest

from tunelab.data.corpus import clean as cleaning, read as corpus_read, sentences
from tunelab.data.corpus.clean import COUNT_KEYS, CleanDoc, CleaningConfig, Deduplicator, clean_document, text_digest
from tunelab.data.corpus.read import BadLines, RawDoc, iter_documents, list_inputs, split_of
from tunelab.data.corpus.sentences import CLOSERS, TERMINATORS, count_sentences, soft_split_points, split_sentences
from tunelab.errors import TunelabError

# ---------------------------------------------------------------------------------------------------------
# generated text: Chinese, English, mixed, and the odd corners of Unicode

CJK = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
FRAGMENTS = (
    list(CJK) + ["北京", "上海", "中华人民共和国", "长江"] * 3
    + ["Hello", "world", "the", "Beijing", "A", "Z", "iPhone", "x", "e.g.", "Dr.", "U.S.", "3.14", "2024", "v1.2"]
    + list("。！？!?；;…") + ["……", "！？", "?!", "...", ".", ". ", "，", "、", ",", "：", ":"]
    + list(CLOSERS) + list("“‘「『《【（([")
    + [" ", "  ", "\n", "\n\n", "\r\n", "\r", "\t", "\u3000", "\u00a0", "\u2028", "\x85", "\x0b", "\x1c"]
    + ["😀", "👨\u200d👩\u200d👧", "\u0301", "e\u0301", "\u202e", "\u200b", "\ufeff", "\x00", "ｆｕｌｌ", "ﬁ"]
    + ["\ud800", "\udfff", "\udc80", "\U00020000", "한국어", "日本語です。", "עברית", "العربية"]
    + ["（北京）", "（）", "()", "《红楼梦》", "《》", "【】", '""', "''", "“”", "O", "（", "）"]
    + ["<br>", "<ref>注</ref>", "&amp;", "&nbsp;", "[[北京市|北京]]", "[[长江]]", "'''粗'''", "{{cite|x}}", "== 标题 =="]
)


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\n", "。", ".", "\ud800", "a. B", "。」", "\n\n\n"]
    while len(out) < n:
        r = rng.random()
        if r < 0.1:  # arbitrary code points, surrogates included
            out.append("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 40))))
        else:
            out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 60))))
    return out


FUZZ = random_texts(800, seed=9)

# ---------------------------------------------------------------------------------------------------------
# sentences

_T, _C = re.escape(TERMINATORS), re.escape(CLOSERS)
# The readable definition of a sentence end; sentences._END is a faster regex that must agree with it.
READABLE_END = re.compile(f"(?:[{_T}]+[{_C}]*)+\\s*|\\.+[{_C}]*\\s+(?=[{sentences._NEXT_START}])|\n\\s*")


def test_split_sentences_invariants_fuzzed():
    for text in FUZZ:
        pieces = split_sentences(text)
        assert "".join(pieces) == text
        assert count_sentences(text) == len(pieces), text
        assert all(pieces), text
        assert [m.end() for m in READABLE_END.finditer(text)] == [m.end() for m in sentences._END.finditer(text)]
        for i, piece in enumerate(pieces):
            if i:  # whitespace stays with the sentence before: the next one starts with a visible character
                assert not piece[0].isspace(), (text, pieces)
            if i < len(pieces) - 1:
                body = piece.rstrip()
                assert body[-1:] in set(TERMINATORS + CLOSERS + ".") or "\n" in piece[len(body):], (text, pieces)


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("北京是首都。上海很大！真的吗？", ["北京是首都。", "上海很大！", "真的吗？"]),
    ("他说：“好。”然后走了。", ["他说：“好。”", "然后走了。"]),
    ("「走吧！」她说。（完）", ["「走吧！」", "她说。", "（完）"]),
    ("真的吗？！不……好吧", ["真的吗？！", "不……", "好吧"]),
    ("What?! No way.", ["What?! ", "No way."]),
    ("第一行\n第二行\n\n第三段", ["第一行\n", "第二行\n\n", "第三段"]),
    ("Hello. World is 3.14 wide, e.g. here. 中文", ["Hello. ", "World is 3.14 wide, e.g. here. ", "中文"]),
    ('He said "stop." Then left.', ['He said "stop." ', "Then left."]),
    ("首都。  \n  下一句", ["首都。  \n  ", "下一句"]),
    ("分号；分开;也是", ["分号；", "分开;", "也是"]),
    ("Wait... What", ["Wait... ", "What"]),
    ("end.", ["end."]),
    ("。。。", ["。。。"]),
])
def test_split_sentences_cases(text, expected):
    assert split_sentences(text) == expected
    assert count_sentences(text) == len(expected)


def test_soft_split_points_fuzzed_and_ordered():
    for text in FUZZ:
        points = soft_split_points(text)
        assert len(set(points)) == len(points)
        assert all(0 < p < len(text) for p in points)
        punct = [p for p in points if text[:p].rstrip()[-1:] in set("，、,：:")]
        assert points[:len(punct)] == punct  # commas and colons first ...
        assert punct == sorted(punct, reverse=True)  # ... from the last one back
        spaces = points[len(punct):]
        assert spaces == sorted(spaces, reverse=True) and all(text[p - 1].isspace() for p in spaces)


def test_soft_split_points_cases():
    s = "北京，上海、广州, and Paris: big"
    assert soft_split_points(s) == [s.index("big"), s.index("and"), s.index("广州"), s.index("上海"),
                                   s.index("Paris")]
    assert soft_split_points("一句没有标点的很长的中文句子") == []
    assert soft_split_points("共1,000人12:30到,a") == [len("共1,000人12:30到,")]

# ---------------------------------------------------------------------------------------------------------
# cleaning


def only(rule: str | None = None, **kw) -> CleaningConfig:
    """A config with every rule off except `rule` (and no length limit)."""
    cfg = dict(split_title=False, prepend_title=False, empty_brackets=False, markup=False, whitespace=False,
               nfkc=False, min_chars=0, dedup=False)
    if rule:
        cfg[rule] = True
    cfg.update(kw)
    return CleaningConfig(**cfg)


def clean(text: str, cfg: CleaningConfig, title: str | None = None) -> tuple[CleanDoc | None, dict]:
    return clean_document(RawDoc(text, "f.jsonl", 7, "id7", title), cfg)


RULE_CASES = {
    "empty_brackets": ("北京（）是首都（北京）《》，书名《红楼梦》【 】（1）() O （（））「」『』[]“”‘’\"\"'' 尾（",
                       "北京是首都（北京），书名《红楼梦》（1） O  尾（", 13),
    "markup": ("<p>甲<br/>乙</p>&amp;丙<ref name=\"a\">脚注</ref>[[北京市|北京]][[长江]]{{a|{{b}}}}'''粗'''",
               "甲乙&丙北京长江粗", 10),
    "whitespace": ("\u3000\u3000第一段\t有 \u00a0 空格\r\n\r\n\r\n\r\n第二段\u200b  \n\n", "第一段 有 空格\n\n第二段", 15),
    "nfkc": ("ｆｕｌｌ（宽）１２", "full(宽)12", 1),
}
COUNT_NAMES = {"empty_brackets": "empty_brackets", "markup": "markup", "whitespace": "whitespace_chars",
               "nfkc": "nfkc_changed"}


@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_each_rule_on_and_off_with_its_count(rule):
    raw, expected, count = RULE_CASES[rule]
    doc, counts = clean(raw, only(rule))
    assert doc.text == expected
    assert counts == {COUNT_NAMES[rule]: count}
    doc, counts = clean(raw, only())
    assert doc.text == raw and counts == {}
    assert set(counts) <= set(COUNT_KEYS)


@pytest.mark.parametrize("raw, expected", [
    ("a<ref>x</ref>b<ref name=n/>c<!-- 注释 -->d", "abcd"),
    ("{{外|{{内|1}}|2}}正文{{x}}", "正文"),
    ("[[File:a.jpg|thumb|图]]见[[分类:城市]][[Category:X]]文", "见文"),
    ("[[a|b|c]] [[目标|显示]] [[只有]]", "c 显示 只有"),
    ("'''粗''' ''斜'' '''''两者''''' rock 'n' roll", "粗 斜 两者 rock 'n' roll"),
    ("== 历史 ==\n正文\n=== 早期 ===", "历史\n正文\n早期"),
    ('<div class="x" id=y>内容</div><span>在</span>', "内容在"),
    ("a<b and c>d, x < y > z, <unknown>tag</unknown>", "a<b and c>d, x < y > z, <unknown>tag</unknown>"),
    ("&lt;b&gt; &#26085;&#x672C; &nbsp; &bogus; & ok", "<b> 日本 \u00a0 &bogus; & ok"),
    ("[1] 1 = 1 == 2", "[1] 1 = 1 == 2"),
])
def test_markup_exactly(raw, expected):
    assert clean(raw, only("markup"))[0].text == expected


@pytest.mark.parametrize("kept", ["（北京）", "(1)", "《红楼梦》", "【注】", "「对」", "“好”", '"a"', "O", "（", "）",
                                  "(", "[", "《", '"a" "b"', "it's 'x' 'y'", "（，）", "OO（O）"])
def test_non_empty_brackets_and_lone_ones_stay(kept):
    text = f"前文{kept}后文"
    doc, counts = clean(text, only("empty_brackets"))
    assert doc.text == text and counts == {}
    assert clean(f"中华人民共和国{kept}首都", CleaningConfig())[0].text == f"中华人民共和国{kept}首都"


def _remove_empty_pairs_slowly(text: str) -> str:
    """Reference: find an opener, skip spaces, remove the pair if its closer follows; repeat from the start."""
    pairs = dict(p for p in ["（）", "()", "《》", "【】", "[]", "「」", "『』", "〈〉", "〔〕", "［］", "“”", "‘’"])
    changed = True
    while changed:
        changed = False
        for i, ch in enumerate(text):
            if ch in "\"'" and text[i + 1:i + 2] == ch:
                text, changed = text[:i] + text[i + 2:], True
                break
            if ch in pairs:
                j = i + 1
                while j < len(text) and text[j] in " \t\u00a0\u3000":
                    j += 1
                if j < len(text) and text[j] == pairs[ch]:
                    text, changed = text[:i] + text[j + 1:], True
                    break
    return text


def test_empty_brackets_match_a_slow_reference_fuzzed():
    rng = random.Random(3)
    parts = list("（）()《》【】[]「」『』“”‘’\"'O北a_1 ") + ["\u3000", "（北京）", "(1)", "f()"]
    for _ in range(1000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 30)))
        expected = _remove_empty_pairs_slowly(text)
        doc, counts = clean(text, only("empty_brackets"))
        assert doc.text == expected, text
        assert counts.get("empty_brackets", 0) * 2 <= len(text) - len(expected)
        assert cleaning._strip_nested_pairs(text)[0] == expected  # the one-pass fallback for deep nesting


def test_title_split_prepend_and_known_titles():
    text = "北京\n\n北京是中华人民共和国的首都。"
    doc, counts = clean(text, CleaningConfig())
    assert (doc.title, doc.text, counts) == ("北京", "北京是中华人民共和国的首都。", {"title_split": 1})
    assert clean(text, CleaningConfig(split_title=False))[0].text == text
    assert clean(text, CleaningConfig(prepend_title=True))[0].text == "北京\n北京是中华人民共和国的首都。"
    # a first paragraph that reads like a sentence, or a long one, is not a title
    for body in ["这是第一段。\n\n第二段也很长很长。", "标" * 101 + "\n\n第二段也很长很长。"]:
        doc, counts = clean(body, CleaningConfig())
        assert doc.text == body and doc.title is None and "title_split" not in counts
    # a title field read from the record wins; the header goes only if it repeats that title
    assert clean(text, CleaningConfig(), title="北京")[0].text == "北京是中华人民共和国的首都。"
    doc, _ = clean(text, CleaningConfig(), title="Beijing")
    assert (doc.title, doc.text) == ("Beijing", text)
    # \r\n and stray spaces around the header work with the whitespace rule off too
    doc, _ = clean("  标题 \r\n \r\n正文内容足够长了。", only("split_title"))
    assert (doc.title, doc.text) == ("标题", "正文内容足够长了。")


def test_min_chars_counts_the_body_not_the_title():
    doc, counts = clean("很长很长的标题\n\n短", CleaningConfig(min_chars=2, prepend_title=True))
    assert doc is None and counts == {"title_split": 1, "too_short": 1}
    doc, counts = clean("短文", CleaningConfig(min_chars=2))
    assert doc.text == "短文" and counts == {}
    doc, counts = clean("   \n\t ", CleaningConfig(min_chars=1))
    assert doc is None and counts["too_short"] == 1


def test_cleaning_full_document():
    raw = ("北京市\n\n\u3000\u3000北京市（英语：Beijing<ref>官方</ref>；）简称“京”（），是中华人民共和国的首都。"
           "[[长城|万里长城]]位于此地&nbsp;。\r\n\r\n\r\n== 历史 ==\r\n北京有3000余年历史（《》）。  ")
    doc, counts = clean(raw, CleaningConfig())
    assert doc.title == "北京市"
    assert doc.text == ("北京市（英语：Beijing；）简称“京”，是中华人民共和国的首都。万里长城位于此地 。\n\n"
                        "历史\n北京有3000余年历史。")
    assert (doc.id, doc.file, doc.line, doc.raw_chars) == ("id7", "f.jsonl", 7, len(raw))
    assert counts == {"markup": 4, "empty_brackets": 3, "whitespace_chars": 8, "title_split": 1}


def test_cleaning_is_pure_and_deterministic_on_fuzz():
    cfg = CleaningConfig(nfkc=True, min_chars=0)
    for text in FUZZ:
        raw = RawDoc(text, "f", 1)
        first = clean_document(raw, cfg)
        assert first == clean_document(raw, cfg) == pickle.loads(pickle.dumps(first))  # worker-safe
        assert raw.text == text
        doc = first[0]
        if doc is not None:
            body = doc.text
            assert body == body.strip() and "\r" not in body and "\n\n\n" not in body and "  " not in body
            assert not re.search("[\t\u00a0\u3000\u200b\ufeff\x00]", body)


PATHOLOGICAL = {  # inputs on which a careless regex backtracks quadratically (minutes for these sizes)
    "unclosed refs": "<ref>文" * 20000, "unclosed comments": "<!--文" * 20000, "bold runs": "'''文 " * 30000,
    "unclosed links": "[[文|" * 30000, "deep templates": "{{" * 10000 + "}}" * 10000,
    "deep brackets": "（" * 30000 + " " * 10 + "）" * 30000, "almost tags": "<div " + "a=b " * 30000,
    "dots": "." * 50000 + " a", "spaced dots": ". " * 50000 + "a", "headings": "==" + "文=" * 30000 + "\n",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_no_input_takes_quadratic_time(name):
    text = PATHOLOGICAL[name]
    start = time.perf_counter()
    doc, _ = clean(text, CleaningConfig(nfkc=True))
    assert "".join(split_sentences(text)) == text and soft_split_points(text) is not None
    assert time.perf_counter() - start < 3  # linear: ~0.05 s; quadratic: minutes


def test_config_as_meta_is_json():
    assert CleaningConfig().as_meta() == {"split_title": True, "prepend_title": False, "empty_brackets": True,
                                          "markup": True, "whitespace": True, "nfkc": False, "min_chars": 10,
                                          "dedup": True}
    meta = CleaningConfig(nfkc=True, min_chars=5).as_meta()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["nfkc"] is True and meta["min_chars"] == 5 and set(meta) >= {"split_title", "dedup", "markup"}


def test_deduplicator():
    d = Deduplicator()
    assert [d.seen(text_digest(t)) for t in ["甲", "乙", "甲", "甲 ", "乙", "\ud800"]] == [False, False, True, False, True, False]

# ---------------------------------------------------------------------------------------------------------
# reading

DOCS = [{"id": "a1", "title": "北京", "text": "北京\n\n北京是首都。"},
        {"id": 2, "text": "English text. Second sentence!"},
        {"text": "第三篇，带\"引号\"和\\反斜杠\t。😀"}]


def docs_of(paths, **kw):
    return [(d.text, d.id, d.title) for d in iter_documents(paths, **kw)]


EXPECTED = [("北京\n\n北京是首都。", "a1", "北京"), ("English text. Second sentence!", "2", None),
            ("第三篇，带\"引号\"和\\反斜杠\t。😀", None, None)]


def write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_formats_read_the_same_documents(tmp_path, gz):
    opener, ext = (gzip.open, ".gz") if gz else (open, "")
    jl = write_jsonl(tmp_path / f"a.jsonl{ext}", DOCS, opener)
    arr = tmp_path / f"b.json{ext}"
    with opener(arr, "wt", encoding="utf-8") as f:
        json.dump(DOCS, f, ensure_ascii=False, indent=2)
    assert docs_of([jl]) == docs_of([arr]) == EXPECTED
    assert [d.line for d in iter_documents([jl])] == [1, 2, 3]
    assert [d.line for d in iter_documents([arr])] == [2, 7, 11]
    txt = tmp_path / f"c.txt{ext}"
    with opener(txt, "wt", encoding="utf-8") as f:
        f.write("第一篇\n第二行\n\n  \n第二篇\r\n\n\n\nthird doc\n")
    docs = list(iter_documents([txt]))
    assert [(d.text, d.line, d.id) for d in docs] == [("第一篇\n第二行", 1, None), ("第二篇\r", 5, None),
                                                      ("third doc", 9, None)]
    assert all(d.file == str(txt) for d in docs)


def test_fields_bom_crlf_and_json_holding_jsonl(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"body": "\xe6\x96\x87", "name": 3.5, "head": true}\r\n\r\n'
                  b'{"body": "b", "name": null}\r\n')
    assert docs_of([p], text_field="body", id_field="name", title_field="head") == [("文", "3.5", "true"),
                                                                                   ("b", None, None)]
    assert docs_of([p], text_field="body", id_field=None, title_field=None) == [("文", None, None), ("b", None, None)]
    q = tmp_path / "lines.json"  # many "JSON" dumps are JSON lines
    write_jsonl(q, DOCS)
    assert docs_of([q]) == EXPECTED
    pretty = tmp_path / "one.json"
    pretty.write_text('{\n  "text": "x"\n}\n')
    with pytest.raises(TunelabError, match="one JSON array, or one JSON object per line"):
        list(iter_documents([pretty]))
    empty = tmp_path / "e.json"
    empty.write_text(" [ ] \n")
    assert docs_of([empty]) == []


def _bad_file(tmp_path, body: bytes, name="bad.jsonl"):
    p = tmp_path / name
    p.write_bytes(body)
    return p


@pytest.mark.parametrize("line, message, field", [
    (b'{"text": "ok"', "malformed JSON", None),
    (b'["text"]', "expected a JSON object, got list", None),
    (b'{"txt": "x"}', "missing", "text"),
    (b'{"text": 5}', "expected a string, got int", "text"),
    (b'{"text": null}', "expected a string, got null", "text"),
    (b'{"text": "x", "id": [1]}', "expected a string or number, got list", "id"),
    (b'{"text": "\xe4\xb8"}', "not UTF-8 text (bad byte 0xe4 at column 11)", None),
    (b'{"text": "a\\ud800b"}', "lone surrogate", "text"),
    (b'{"text": "ok", "title": {"a": 1}}', "expected a string or number, got dict", "title"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, message, field):
    p = _bad_file(tmp_path, b'{"text": "good"}\n\n' + line + b'\n{"text": "after"}\n')
    with pytest.raises(TunelabError) as e:
        list(iter_documents([p]))
    assert (e.value.file, e.value.line, e.value.field) == (str(p), 3, field)
    assert message in e.value.message and str(e.value).startswith(f"{p}:3")
    bad = BadLines()
    assert docs_of([p], skip_bad=True, bad=bad) == [("good", None, None), ("after", None, None)]
    assert bad.count == 1 and bad.examples[0].startswith(f"{p}:3: ") and message in bad.examples[0]


LINE_POOL = [
    b'{"text": "\xe5\x8c\x97\xe4\xba\xac\xe3\x80\x82ok", "id": 7}', b'{"text": "two\\nlines", "title": "t"}',
    b'', b'   ', b'\t', b'{"text": "crlf"}\r', b'{"text": "x"', b'{"nope": 1}', b'{"text": "\xe4\xb8"}',
    b'{"text": "a\\ud800b"}', b'["text"]', b'\xff\xfe', b'{"text": "' + "长".encode() * 300 + b'"}',
    b'{"text": "\xef\xbb\xbfbom inside"}', b'{"text": "\r lone cr \r"}',
]


@pytest.mark.parametrize("seed", range(40))
def test_worker_chunks_read_exactly_what_one_pass_reads_fuzzed(tmp_path, seed):
    # the main process cuts JSONL into byte chunks at newlines (iter_work) and workers parse them
    # (parse_chunk): documents, line numbers, skipped lines and the first error must all be the same as one
    # pass over the file, whatever the chunk size (smaller than a line, a BOM, no final newline, CR, bad bytes)
    from tunelab.data.corpus.read import iter_work, parse_chunk
    rng = random.Random(seed)
    lines = [rng.choice(LINE_POOL) for _ in range(rng.randint(1, 40))]
    body = b"\n".join(lines) + rng.choice([b"", b"\n", b"\n\n"])
    if rng.random() < 0.3:
        body = b"\xef\xbb\xbf" + body
    path = tmp_path / f"f{seed}.jsonl"
    path.write_bytes(gzip.compress(body) if seed % 5 == 0 else body)
    if seed % 5 == 0:
        path = path.rename(tmp_path / f"f{seed}.jsonl.gz")
    as_tuple = lambda d: (d.text, d.file, d.line, d.id, d.title)  # noqa: E731

    one_bad = BadLines()
    expected = [as_tuple(d) for d in iter_documents([path], skip_bad=True, bad=one_bad)]
    for chunk_chars in (1, 5, 40, 1 << 16):
        bad, got = BadLines(), []
        for work in iter_work([path], chunk_chars, skip_bad=True, bad=bad):
            docs, skipped = parse_chunk(work, skip_bad=True)
            got += [as_tuple(d) for d in docs]
            bad.merge(skipped)
        assert got == expected and (bad.count, bad.examples) == (one_bad.count, one_bad.examples), chunk_chars

    try:
        list(iter_documents([path]))
        first_error = None
    except TunelabError as e:
        first_error = str(e)
    for chunk_chars in (1, 40):
        try:
            for work in iter_work([path], chunk_chars):
                parse_chunk(work)
            error = None
        except TunelabError as e:
            error = str(e)
        assert error == first_error


def test_skip_bad_counts_everything_and_keeps_ten_examples(tmp_path):
    body = b"".join(b'{"text": "ok %d"}\n{"nope": 1}\n' % i for i in range(15))
    p = _bad_file(tmp_path, body + b'\xff\n')
    bad = BadLines()
    assert len(docs_of([p, p], skip_bad=True, bad=bad)) == 30
    assert bad.count == 32 and len(bad.examples) == 10 and bad.examples[0] == f"{p}:2: field 'text': missing"
    with pytest.raises(ValueError):
        list(iter_documents([p], skip_bad=True))  # counting needs somewhere to count


def test_json_array_errors(tmp_path):
    cases = [
        (b'[\n{"text": "a"},\n{"text": "b"}\n{"text": "c"}]', 4, "expected ',' or ']'"),
        (b'[\n{"text": "a"},\n{"text": "b"', 3, "malformed JSON"),
        (b'[\n{"text": "a"}\n] x', 3, "extra data"),
        (b'[\n{"text": "a"},\n\n  {"text": "a\xff"}]', 4, "not UTF-8"),
        (b'[\n{"text": "a"},\n 7]', 3, "expected a JSON object"),
        (b'[\n{"text": "a"},', 2, "malformed JSON"),
    ]
    for body, line, message in cases:
        p = _bad_file(tmp_path, body, "bad.json")
        with pytest.raises(TunelabError) as e:
            list(iter_documents([p]))
        assert (e.value.line, message in e.value.message) == (line, True), (body, str(e.value))
    p = _bad_file(tmp_path, b'[{"text": "a"}, {"text": "b\xff"}, {"x": 1},\n {"text": "c"}]', "skip.json")
    bad = BadLines()
    assert docs_of([p], skip_bad=True, bad=bad) == [("a", None, None), ("c", None, None)] and bad.count == 2


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_json_array_across_buffer_boundaries(tmp_path, monkeypatch, chunk):
    rng = random.Random(chunk)
    safe = [f for f in FRAGMENTS if not re.search("[\ud800-\udfff\r\x85\u2028]", f)]
    records = [{"id": i, "text": "".join(rng.choice(safe) for _ in range(rng.randint(0, 20))),
                "n": rng.choice([12345678, -1.5e-7, True, None, "\\u"]), "emoji": "😀"}
               for i in range(40)]
    pieces, lines, line = ["\ufeff[ "], [], 1
    for r in records:
        pieces.append("\n" * rng.randint(0, 2) + " " * rng.randint(0, 3))
        line += pieces[-1].count("\n")
        lines.append(line)
        pieces.append(json.dumps(r, ensure_ascii=rng.random() < 0.5) + " ,")
    text = "".join(pieces)[:-1] + "\n]\n"
    p = tmp_path / "arr.json"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(corpus_read, "CHUNK_CHARS", chunk)
    docs = list(iter_documents([p]))
    assert [(d.text, d.id, d.line) for d in docs] == [(r["text"], str(r["id"]), n) for r, n in zip(records, lines)]


def test_txt_bad_bytes_skip_their_document(tmp_path):
    p = _bad_file(tmp_path, "一\n\n二\n".encode() + b"\xff\n\n" + "三\n".encode(), "t.txt")
    with pytest.raises(TunelabError) as e:
        list(iter_documents([p]))
    assert e.value.line == 4
    bad = BadLines()
    assert docs_of([p], skip_bad=True, bad=bad) == [("一", None, None), ("三", None, None)] and bad.count == 1


def test_unreadable_and_unsupported_files(tmp_path):
    gz = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b'{"text": "x"}\n' * 1000)
    gz.write_bytes(data[:len(data) // 2])
    with pytest.raises(TunelabError, match="cannot read"):
        list(iter_documents([gz]))
    with pytest.raises(TunelabError, match="unsupported"):
        list(iter_documents([tmp_path / "a.xml"]))
    for missing in ("missing.jsonl", "missing.csv", "missing.parquet"):
        with pytest.raises(TunelabError, match="not found"):
            list(iter_documents([tmp_path / missing]))
    with pytest.raises(TunelabError, match="folder"):
        list(iter_documents([tmp_path]))


def test_list_inputs(tmp_path):
    for name in ["b/2.jsonl", "b/1.txt.gz", "a.json", "b/c/0.jsonl", "b/notes.md", ".hidden/x.jsonl",
                 "b/.h.jsonl", "b/prepared/train.bin", "b/prepared/docs.jsonl", "z.TXT"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = list_inputs([tmp_path / "z.TXT", tmp_path, tmp_path / "b/2.jsonl"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["z.TXT", "a.json", "b/1.txt.gz", "b/2.jsonl",
                                                                   "b/c/0.jsonl"]
    with pytest.raises(TunelabError, match="not found"):
        list_inputs([tmp_path / "nope"])
    with pytest.raises(TunelabError, match="unsupported"):
        list_inputs([tmp_path / "b/notes.md"])
    with pytest.raises(TunelabError, match="prepared corpus"):
        list_inputs([tmp_path / "b/prepared"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunelabError, match="no corpus files"):
        list_inputs([tmp_path / "empty"])


def test_split_of():
    texts = [f"文档{i}" for i in range(2000)]
    splits = [split_of(t, 0.1, 0) for t in texts]
    assert splits == [split_of(t, 0.1, 0) for t in texts]
    assert 140 < splits.count("val") < 260
    assert splits != [split_of(t, 0.1, 1) for t in texts]
    assert {split_of(t, 0.0, 0) for t in texts} == {"train"} and {split_of(t, 1.0, 0) for t in texts} == {"val"}
    assert split_of("\ud800", 0.5, 0) in ("train", "val")


def test_reading_50mb_keeps_memory_bounded(tmp_path):
    """A 50 MB JSONL (and a 10 MB JSON array, gzipped too) streams through with a small, fixed peak."""
    line = json.dumps({"id": 0, "text": "中文句子，带一些English words。" * 30}, ensure_ascii=False) + "\n"
    chunk = (line * 1000).encode()
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        for _ in range(50_000_000 // len(chunk) + 1):
            f.write(chunk)
    arr = tmp_path / "big.json.gz"
    with gzip.open(arr, "wb", compresslevel=1) as f:
        f.write(b"[" + b",".join([line.strip().encode()] * (10_000_000 // len(line.encode()))) + b"]")
    for path, size in [(big, 50_000_000), (arr, 10_000_000)]:
        tracemalloc.start()
        try:
            chars = sum(len(d.text) for d in iter_documents([path]))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert chars * 3 > size * 0.9
        assert peak < 8_000_000, (path.name, peak)
