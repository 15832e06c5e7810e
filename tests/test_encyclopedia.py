"""The encyclopedia generator: reproducible, facts consistent across articles, QA answerable and surviving
cleaning, noise exactly removable by the corpus cleaning rules, CLI."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from tunelab.cli import main
from tunelab.data.corpus.clean import CleaningConfig, clean_document
from tunelab.data.corpus.read import RawDoc
from tunelab.data.synthetic.encyclopedia import generate_articles
from tunelab.data.synthetic.encyclopedia_articles import KINDS
from tunelab.data.synthetic.encyclopedia_world import generate_world
from tunelab.errors import TunelabError

COUNT = 3000
MARKERS = {"empty_brackets": re.compile(r"（\s*）|\(\)|《》|【】"), "bold": re.compile("'''"),
           "link": re.compile(r"\[\["), "br": re.compile("<br"), "nbsp": re.compile("&nbsp;"),
           "line_end_space": re.compile(r"[ \t\u3000]\r?\n|[ \t\u3000]$"), "indent": re.compile("\u3000\u3000"),
           "crlf": re.compile("\r\n")}


@pytest.fixture(scope="module")
def noisy():
    return generate_articles(COUNT, seed=7)


@pytest.fixture(scope="module")
def clean():
    return generate_articles(COUNT, seed=7, noise=False)


def _cleaned(article: dict) -> str:
    doc, _ = clean_document(RawDoc(article["text"], "x", 1, article["id"], article["title"]), CleaningConfig())
    return doc.text


def _body(article: dict) -> str:
    title, body = article["text"].split("\n\n", 1)
    assert title == article["title"]
    return body


def test_reproducible_by_seed(noisy):
    articles, qa = noisy
    assert generate_articles(200, seed=7) == (articles[:200], [r for r in qa if r["source_id"] < "enc-000200"])
    assert generate_articles(50, seed=8)[0] != articles[:50]
    assert generate_world(3) == generate_world(3)
    assert {a["kind"] for a in articles} == set(KINDS)
    assert [a["id"] for a in articles] == [f"enc-{i:06d}" for i in range(COUNT)]


def test_shape_of_noise_free_articles(clean):
    articles, qa = clean
    assert len({a["text"] for a in articles}) == len(articles)  # no duplicates without noise
    lengths = []
    for a in articles:
        body = _body(a)
        assert 2 <= body.count("\n") + 1 <= 4, a["text"]
        assert "\n\n" not in body and body == body.strip()
        lengths.append(len(body))
        assert not any(m.search(a["text"]) for m in MARKERS.values()), a["text"]
        # a fixed point of cleaning: nothing to remove but the title line
        assert _cleaned(a) == body
    lengths.sort()
    assert lengths[0] >= 120 and lengths[-1] <= 600
    assert 180 <= lengths[len(lengths) // 2] <= 400


def test_qa_answerable_self_contained_and_consistent(noisy, clean):
    articles, qa = noisy
    by_id = {a["id"]: a for a in articles}
    per_article = defaultdict(int)
    answers_of = defaultdict(set)
    sources_of = defaultdict(set)
    world = generate_world(7)
    names = (list(world.places) + list(world.people) + list(world.stations) + list(world.species)
             + list(world.compounds) + list(world.lines) + list(world.provinces))
    for r in qa:
        assert set(r) == {"question", "answer", "source_id"}
        article = by_id[r["source_id"]]
        assert r["answer"] and r["answer"] in article["text"], r
        assert r["answer"] in _cleaned(article), r
        assert not re.search("本文|文中|上文|这篇|该文|该站|本种|此人", r["question"]), r
        assert any(n in r["question"] for n in names) or "《" in r["question"], r
        per_article[r["source_id"]] += 1
        answers_of[r["question"]].add(r["answer"])
        sources_of[r["question"]].add(r["source_id"])
    # the same question always has the same answer, whichever article it came from
    assert all(len(v) == 1 for v in answers_of.values()), [(q, v) for q, v in answers_of.items() if len(v) > 1][:5]
    # facts recur: most questions are asked of several articles
    repeated = sum(len(s) >= 2 for s in sources_of.values()) / len(sources_of)
    assert repeated > 0.3, repeated
    duplicates = {a["id"] for a in articles if a["text"] in {b["text"] for b in articles if b["id"] < a["id"]}}
    for a in articles:
        n = per_article[a["id"]]
        assert (n == 0) if a["id"] in duplicates else (3 <= n <= 6), (a["id"], n)
    # without noise the drafts, and so the QA pairs of every non-duplicate slot, are the same
    clean_qa = {(r["source_id"], r["question"], r["answer"]) for r in clean[1]}
    assert {(r["source_id"], r["question"], r["answer"]) for r in qa} <= clean_qa


def test_world_facts_hang_together():
    w = generate_world(0)
    assert 80 <= len(w.stations) and len(w.places) == 120 and len(w.people) == 100
    for sp in w.species.values():
        who = w.people[sp.describer]
        assert who.born + 25 <= sp.year <= who.died and sp.name in who.described
        assert all(w.places[p].province == w.places[sp.place].province for p in sp.places)
    for c in w.compounds.values():
        chemist = w.people[c.chemist]
        assert w.species[c.source].year < c.year <= chemist.died and c.name in chemist.isolated
    for st in w.stations.values():
        line = w.lines[st.line]
        assert st.year >= line.year and st.name in line.stations and st.km <= line.length
        assert line.year < w.people[line.engineer].died
    for p in w.people.values():
        assert p.born + 55 <= p.died <= 2023 and p.birthplace in w.places
    for pl in w.places.values():
        assert 6 <= float(pl.temperature) <= 21 and 50 <= pl.altitude <= 3200 and pl.river in w.provinces[
            pl.province].rivers
        assert (pl.to_capital == 0) == pl.capital and (pl.city_year is not None) == pl.city
        assert 1 <= sum(p.capital for p in w.places.values() if p.province == pl.province) == 1


def test_station_facts_repeat_across_articles(clean):
    """A station's opening year, as printed next to its name, is the same in every article that states it."""
    articles, _ = clean
    w = generate_world(7)
    for name, st in list(w.stations.items())[:30]:
        stating = [a for a in articles if f"{name}于{st.year}年" in a["text"] or f"{name}，该站于{st.year}年" in a["text"]
                   or (a["title"] == name and f"{st.year}年" in a["text"])]
        assert len(stating) >= 2, name
        for a in articles:
            for year in re.findall(re.escape(name) + r"(?:，该站)?于(\d{4})年(?:启用|开通|\d+月正式开通)", a["text"]):
                assert int(year) == st.year, (name, a["text"])


def test_noise_present_and_exactly_removed_by_cleaning(noisy, clean):
    articles, _ = noisy
    plain = clean[0]
    seen = {k: sum(bool(m.search(a["text"])) for a in articles) for k, m in MARKERS.items()}
    assert all(n > 0 for n in seen.values()), seen
    assert seen["empty_brackets"] > COUNT * 0.2 and seen["link"] > COUNT * 0.2, seen
    texts = [a["text"] for a in articles]
    duplicates = len(texts) - len(set(texts))
    assert 0.003 * COUNT <= duplicates <= 0.02 * COUNT, duplicates
    first = {}
    for a, b in zip(articles, plain):
        if a["text"] in first:  # a duplicate slot: an exact copy of an earlier article
            continue
        first[a["text"]] = a["id"]
        assert a["title"] == b["title"] and a["kind"] == b["kind"]
        assert _cleaned(a) == _body(b), (a["text"], b["text"])


def test_cli_writes_both_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["data", "encyclopedia", "--count", "40", "--seed", "2", "--out", str(out)]) == 0
    assert "wrote 40 articles" in capsys.readouterr().out
    articles = [json.loads(line) for line in (out / "articles.jsonl").read_text(encoding="utf-8").splitlines()]
    qa = [json.loads(line) for line in (out / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (articles, qa) == tuple(map(list, generate_articles(40, seed=2)))
    assert main(["data", "encyclopedia", "--count", "5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert main(["data", "encyclopedia", "--count", "5", "--no-noise", "--out", str(tmp_path / "b")]) == 0
    with pytest.raises(TunelabError, match="non-negative"):
        generate_articles(-1)
