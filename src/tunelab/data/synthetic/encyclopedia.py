"""Chinese encyclopedia-style articles about an invented world, with the true question–answer pairs of each.

`generate_articles(count, seed)` writes `count` articles over about 500 subjects of five kinds
(station, species, compound, person, place) of one seeded world, cycling through the subjects in a seeded
order, so with a few thousand articles each subject has several articles — independent drafts from the same
facts. An article is `{"id", "title", "text", "kind"}` with text "标题\\n\\n正文", 2–4 paragraphs separated by
one newline; its QA pairs are `{"question", "answer", "source_id"}`. 5,000 articles take 2–3 s.

The parts, each in its own module: the word lists (`encyclopedia_words`), the world and its facts
(`encyclopedia_world`), an entity rendered as an article (`encyclopedia_articles`), the questions about its
facts (`encyclopedia_qa`) and wiki-dump noise (`encyclopedia_noise`). This module numbers the articles and
puts the parts together; the pairs are split for fine-tuning by `qa_split`.
"""

from __future__ import annotations

import random
from pathlib import Path

from tunelab.data.synthetic.encyclopedia_articles import draft_article
from tunelab.data.synthetic.encyclopedia_noise import NOISE, add_noise, link_pattern
from tunelab.data.synthetic.encyclopedia_world import generate_world
from tunelab.errors import TunelabError
from tunelab.records import building_dir, write_jsonl


def generate_articles(count: int, seed: int = 0, noise: bool = True) -> tuple[list[dict], list[dict]]:
    """`count` articles and their QA pairs; the same arguments always give the same output.

    Articles cycle through the world's subjects in a seeded order. Article i is drafted from its own random
    stream, so `noise` changes only the noise (and which slots are duplicates), never the drafts.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise TunelabError(f"expected a non-negative integer, got {count!r}", field="count")
    w = generate_world(seed)
    subjects = w.subjects()
    order_rng = random.Random(f"encyclopedia-order:{seed}")
    order: list[tuple[str, str]] = []
    while len(order) < count:
        batch = list(subjects)
        order_rng.shuffle(batch)
        order += batch
    noise_rng = random.Random(f"encyclopedia-noise:{seed}")
    link_names = link_pattern(w)
    articles: list[dict] = []
    qa: list[dict] = []
    bodies: set[str] = set()
    originals: list[int] = []
    for i in range(count):
        art_id = f"enc-{i:06d}"
        if noise and originals and noise_rng.random() < NOISE["duplicate"]:
            src = articles[noise_rng.choice(originals)]
            articles.append({"id": art_id, "title": src["title"], "text": src["text"], "kind": src["kind"]})
            continue
        kind, name = order[i]
        attempt = 0
        while True:  # a draft identical to an earlier one is redrawn: duplicates come only from the noise
            rng = random.Random(f"encyclopedia:{seed}:{i}:{attempt}")
            paragraphs, pairs, answers = draft_article(w, kind, name, rng)
            body = "\n".join(paragraphs)
            if body not in bodies:
                bodies.add(body)
                break
            attempt += 1
        if noise:
            links = sorted(set(link_names.findall(body)) - {name})
            text = add_noise(name, paragraphs, answers, links, noise_rng)
        else:
            text = f"{name}\n\n{body}"
        originals.append(i)
        articles.append({"id": art_id, "title": name, "text": text, "kind": kind})
        qa += [{"question": q, "answer": a, "source_id": art_id} for q, a in pairs]
    return articles, qa


def write_encyclopedia(out: str | Path, articles: list[dict], qa: list[dict]) -> Path:
    """Write OUT/articles.jsonl and OUT/qa.jsonl together: built in a temporary sibling, then renamed.

    An existing OUT is refused (an empty directory is replaced), so a finished folder is never mixed
    with another run's files.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TunelabError("output already exists; choose a new directory", file=out)
    with building_dir(out) as tmp:
        write_jsonl(tmp / "articles.jsonl", articles)
        write_jsonl(tmp / "qa.jsonl", qa)
    return out
