"""Wiki-dump noise for encyclopedia articles, so corpus cleaning has work to do on a generated corpus.

Noise (`generate_articles(noise=True)`, the default) imitates a wiki dump; every piece is removed exactly by a
rule of `tunelab.data.corpus.clean` (markup, empty_brackets, whitespace, dedup), so the cleaned noisy text
equals the noise-free text, and noise never lands inside a QA answer:
  - empty bracket pairs （） () 《》 【】 （ ） where a template was dropped (after the subject, before ，。);
  - '''bold''' subject, [[wiki links]] and [[target|text]] around names, <br> / <br /> at a paragraph's
    end, &nbsp; for a space in Latin text;
  - stray whitespace: spaces, tabs or U+3000 at line ends, a "　　" paragraph indent, \\r\\n line ends;
  - about 1% exact duplicates (`NOISE["duplicate"]`, drawn where the articles are numbered).
The noise has its own random stream, so article i is the same draft with and without noise (except the
duplicate slots).
"""

from __future__ import annotations

import random
import re

from tunelab.data.synthetic.encyclopedia_world import World

NOISE = {                   # chance per article of each kind of noise
    "empty_brackets": 0.35, "bold_subject": 0.3, "wiki_link": 0.3, "br": 0.1, "nbsp": 0.3,
    "line_end_space": 0.15, "indent": 0.05, "crlf": 0.03, "duplicate": 0.01,
}
EMPTY_PAIRS = ["（）", "()", "《》", "【】", "（ ）"]
LINE_END_SPACE = [" ", "  ", "\t", "\u3000"]


def _free(text: str, pos: int, answers: list[str]) -> bool:
    """True if inserting at `pos` splits no occurrence of an answer (so answers survive in the raw text)."""
    for a in answers:
        start = text.find(a)
        while start != -1 and start < pos:
            if pos < start + len(a):
                return False
            start = text.find(a, start + 1)
    return True


def _wrap(text: str, name: str, left: str, right: str, answers: list[str]) -> str:
    """Wrap the first occurrence of `name` that no answer straddles; unchanged if there is none."""
    start = text.find(name)
    while start != -1:
        end = start + len(name)
        if _free(text, start, answers) and _free(text, end, answers):
            return text[:start] + left + name + right + text[end:]
        start = text.find(name, end)
    return text


def add_noise(title: str, paragraphs: list[str], answers: list[str], links: list[str],
               rng: random.Random) -> str:
    """The article text with wiki-dump noise; `tunelab.data.corpus.clean` removes every piece exactly."""
    paras = list(paragraphs)
    if rng.random() < NOISE["bold_subject"]:
        paras[0] = _wrap(paras[0], title, "'''", "'''", answers)
    if rng.random() < NOISE["wiki_link"]:
        for name in rng.sample(links, k=min(len(links), rng.randint(1, 2))):
            i = next(k for k, p in enumerate(paras) if name in p)
            target = rng.choice(["", f"{name}|", f"{name} (消歧义)|"])
            paras[i] = _wrap(paras[i], name, "[[" + target, "]]", answers)
    for _ in range(rng.randint(1, 2) if rng.random() < NOISE["empty_brackets"] else 0):
        i = rng.randrange(len(paras))
        text = paras[i]
        spots = [k for k, ch in enumerate(text) if ch in "，。"]
        if i == 0 and text.startswith(title):
            spots.append(len(title))
        spots = [k for k in spots if _free(text, k, answers)]
        if spots:
            k = rng.choice(spots)
            paras[i] = text[:k] + rng.choice(EMPTY_PAIRS) + text[k:]
    if rng.random() < NOISE["nbsp"]:
        i = rng.randrange(len(paras))
        spaces = [k for k, ch in enumerate(paras[i]) if ch == " " and _free(paras[i], k, answers)
                  and _free(paras[i], k + 1, answers)]
        if spaces:
            k = rng.choice(spaces)
            paras[i] = paras[i][:k] + "&nbsp;" + paras[i][k + 1:]
    if rng.random() < NOISE["br"]:
        i = rng.randrange(len(paras))
        paras[i] += rng.choice(["<br>", "<br />", "<br/>"])
    if rng.random() < NOISE["line_end_space"]:
        i = rng.randrange(len(paras))
        paras[i] += rng.choice(LINE_END_SPACE)
    if rng.random() < NOISE["indent"]:  # a Chinese paragraph indent on every paragraph
        paras = ["\u3000\u3000" + p for p in paras]
    newline = "\r\n" if rng.random() < NOISE["crlf"] else "\n"
    return title + newline * 2 + newline.join(paras)


def link_pattern(w: World) -> re.Pattern:
    """Names an article may wiki-link (provinces, places, lines, people, species), longest first."""
    names = list(w.provinces) + list(w.places) + list(w.lines) + list(w.people) + list(w.species)
    return re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))
