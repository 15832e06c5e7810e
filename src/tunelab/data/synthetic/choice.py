"""Generated single-choice reading questions in Chinese and English: a CPU rehearsal of the competition's
stage 2 (single-choice questions), a stand-in for its data and never called it.

Each passage states facts about two to four people, several of them of the type the question asks about, so the
wrong options are mostly the other people's values of that type — read from the same passage — and only then
values of the same type the passage does not hold. A model has to find the asked person's fact, not recognise a
word that occurs in the passage. Records are question records (`tunelab.data.formats`'s `choice` format):
`{"id", "question", "choices", "answer", "lang", "kind"}`, `answer` the right option's 0-based index; the
right option's position cycles through the letters in a seeded order, so every letter is right equally often
(within one) and a model that always answers "B" scores 1 / options.
"""

from __future__ import annotations

import random

from tunelab.data.synthetic.reading import EN, EN_FACTS, ZH, ZH_FACTS
from tunelab.errors import TunelabError

# the wrong options of a numeric fact: other numbers in the fact's range
_NUMBERS = {"age": (5, 90), "books": (2, 999)}
_QUESTION = {"zh": "阅读下面的短文，回答问题。\n{passage}\n问题：{question}",
             "en": "Read the passage and answer the question.\n{passage}\nQuestion: {question}"}


def _values(fact: str, words: dict, rng: random.Random, k: int) -> list[str]:
    """`k` distinct values of one fact type."""
    if fact in _NUMBERS:
        lo, hi = _NUMBERS[fact]
        return [str(v) for v in rng.sample(range(lo, hi + 1), k)]
    return rng.sample(words[fact], k)


def _one(rng: random.Random, lang: str, options: int, right: int, people_range: tuple[int, int]) -> dict:
    words, facts = (ZH, ZH_FACTS) if lang == "zh" else (EN, EN_FACTS)
    fact = rng.choice(sorted(facts))
    people = rng.sample(words["name"], k=rng.randint(*people_range))
    asked_values = _values(fact, words, rng, max(len(people), options))  # the passage's first, then spare ones
    stated = [(p, fact, v) for p, v in zip(people, asked_values)]
    others = [f for f in facts if f != fact]
    for person in people:  # one or two facts of other types each, so the passage is not a list of one fact
        for other in rng.sample(others, k=rng.randint(0, 2)):
            stated.append((person, other, _values(other, words, rng, 1)[0]))
    rng.shuffle(stated)
    passage = ("" if lang == "zh" else " ").join(facts[f][0].format(n=p, v=v) for p, f, v in stated)
    asked = rng.randrange(len(people))
    answer = asked_values[asked]
    wrong = [v for i, v in enumerate(asked_values[:len(people)]) if i != asked]
    rng.shuffle(wrong)
    wrong = (wrong + asked_values[len(people):])[: options - 1]
    rng.shuffle(wrong)
    choices = wrong[:right] + [answer] + wrong[right:]
    question = _QUESTION[lang].format(passage=passage, question=facts[fact][1].format(n=people[asked]))
    return {"question": question, "choices": choices, "answer": right, "lang": lang, "kind": f"choice-{lang}"}


OPTIONS = {"lang": "mix", "options": 4, "people": [2, 4]}


def generate(count: int, seed: int = 0, **settings) -> list[dict]:
    """`count` questions, deterministic for a seed. Settings: `lang` "zh", "en" or "mix" (default), `options` 2 to 6
    a question (default 4; the smallest word list, pets, has seven values), `people` how many people a passage names:
    a number or [fewest, most] from 1 to 6 (default [2, 4]). The fewer people, the fewer wrong options the passage
    itself holds: with one, none does, and finding the option the passage states answers the question."""
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        raise TunelabError(f"unknown choice option '{unknown[0]}' (known: {', '.join(OPTIONS)})", field=unknown[0])
    lang, options = settings.get("lang", OPTIONS["lang"]), settings.get("options", OPTIONS["options"])
    if lang not in ("zh", "en", "mix"):
        raise TunelabError(f"unknown language {lang!r} (choose from zh, en, mix)", field="lang")
    if isinstance(options, bool) or not isinstance(options, int) or not 2 <= options <= 6:
        raise TunelabError(f"expected an integer from 2 to 6, got {options!r}", field="options")
    people = _people(settings.get("people", OPTIONS["people"]))
    rng = random.Random(seed)
    positions = [i % options for i in range(count)]
    rng.shuffle(positions)
    out = []
    for i, right in enumerate(positions):
        item_lang = rng.choice(["zh", "en"]) if lang == "mix" else lang
        out.append({"id": f"choice-{i:06d}", **_one(rng, item_lang, options, right, people)})
    return out


def _people(value) -> tuple[int, int]:
    """The `people` setting as (fewest, most)."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in pair) or not 1 <= pair[0] <= pair[1] <= 6):
        raise TunelabError(f"expected a number from 1 to 6 or [fewest, most] within it, got {value!r}",
                           field="people")
    return pair[0], pair[1]
