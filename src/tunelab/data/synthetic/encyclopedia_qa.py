"""The question–answer pairs about encyclopedia articles: the questions each fact is asked with, and the
drawing of an article's pairs from the facts it states.

The QA pairs `{"question", "answer", "source_id"}` (3–6 per article) are drawn from the facts the article
states: the answer is a short span of the article's text (a name, "1987年", "8条", "C15H21NO3"), present
before and after cleaning, so "answer in continuation" can score fact recall; the question names its
entity (never "文中"/"本文"), so it can be asked without the article. A fact that several kinds of article
state (a person's birth year, a station's line, a species' describer) gets its questions from one function
per entity here, under one key, so a question always gets the same answer, whichever article it comes from;
facts only an entity's own article states are declared next to the sentences that state them.
"""

from __future__ import annotations

import random

from tunelab.data.synthetic.encyclopedia_words import OCCUPATIONS, PLANT_GROUPS
from tunelab.data.synthetic.encyclopedia_world import Compound, Person, Place, Species, Station, World

QA_PER_ARTICLE = (3, 6)
Facts = dict[str, tuple[list[str], str]]    # fact key -> (question templates, answer)


def draw_qa(rng: random.Random, facts: Facts, keys: list[str]) -> list[tuple[str, str]]:
    """3–6 (question, answer) pairs of the stated facts `keys`, in the order the article states them."""
    chosen = sorted(rng.sample(range(len(keys)), k=min(len(keys), rng.randint(*QA_PER_ARTICLE))))
    qa = []
    for i in chosen:
        questions, answer = facts[keys[i]]
        qa.append((rng.choice(questions), answer))
    return qa


def person_facts(w: World, p: Person, facts: Facts) -> None:
    """A person's facts under the keys and questions every article uses (so a question has one answer)."""
    n = p.name
    facts.update({
        f"born:{n}": ([f"{n}出生于哪一年？", f"{n}是哪一年出生的？"], f"{p.born}年"),
        f"died:{n}": ([f"{n}于哪一年逝世？", f"{n}是哪一年去世的？"], f"{p.died}年"),
        f"bp:{n}": ([f"{n}出生在哪里？", f"{n}的出生地是哪里？"], p.birthplace),
        f"bpv:{n}": ([f"{n}出生于哪个省？"], w.places[p.birthplace].province),
        f"occ:{n}": ([f"{n}的职业是什么？", f"{n}从事什么职业？"], OCCUPATIONS[p.occupation][0]),
        f"uni:{n}": ([f"{n}毕业于哪所大学？"], p.university),
        f"work:{n}": ([f"{n}曾长期在哪个机构工作？"], p.workplace),
    })


def station_facts(w: World, st: Station, facts: Facts) -> None:
    """A station's place, line and opening year, and its line's year, length and engineer."""
    s, line = st.name, w.lines[st.line]
    facts.update({
        f"st_place:{s}": ([f"{s}位于哪个市县？", f"{s}坐落在哪里？"], st.place),
        f"st_province:{s}": ([f"{s}位于哪个省？", f"{s}在哪个省份？"], w.places[st.place].province),
        f"st_line:{s}": ([f"{s}是哪条铁路线上的车站？", f"{s}隶属于哪条铁路？"], line.name),
        f"st_year:{s}": ([f"{s}是哪一年启用的？", f"{s}于哪一年开通？"], f"{st.year}年"),
        f"line_year:{line.name}": ([f"{line.name}于哪一年建成通车？"], f"{line.year}年"),
        f"line_len:{line.name}": ([f"{line.name}全长多少公里？"], f"{line.length}公里"),
        f"line_eng:{line.name}": ([f"{line.name}的总工程师是谁？", f"谁主持修建了{line.name}？"], line.engineer),
    })


def place_facts(pl: Place, facts: Facts) -> None:
    """A place's province, river and specialty."""
    facts.update({
        f"pl_province:{pl.name}": ([f"{pl.name}隶属于哪个省？", f"{pl.name}位于哪个省？"], pl.province),
        f"pl_river:{pl.name}": ([f"流经{pl.name}的主要河流是哪条？", f"{pl.name}境内的主要河流是什么？"], pl.river),
        f"pl_spec:{pl.name}": ([f"{pl.name}最著名的特产是什么？", f"{pl.name}以盛产什么闻名？"], pl.specialty),
    })


def species_facts(sp: Species, province: str, facts: Facts) -> None:
    """A species' Latin name, family, province, type locality, describer, year and habitat."""
    verb = "生长" if sp.group in PLANT_GROUPS else "生活"
    facts.update({
        f"sp_latin:{sp.name}": ([f"{sp.name}的学名是什么？", f"{sp.name}的拉丁学名是什么？"], sp.latin),
        f"sp_family:{sp.name}": ([f"{sp.name}属于哪个科？", f"{sp.name}是哪个科的物种？"], sp.family),
        f"sp_province:{sp.name}": ([f"{sp.name}分布在哪个省？", f"{sp.name}是哪个省的特有种？"], province),
        f"sp_type:{sp.name}": ([f"{sp.name}的模式产地是哪里？"], sp.place),
        f"sp_who:{sp.name}": ([f"{sp.name}是由谁首次描述的？", f"哪位学者首次描述了{sp.name}？"], sp.describer),
        f"sp_year:{sp.name}": ([f"{sp.name}是在哪一年被首次描述的？"], f"{sp.year}年"),
        f"sp_habitat:{sp.name}": ([f"{sp.name}通常{verb}在什么环境中？"], sp.habitat),
    })


def compound_facts(c: Compound, facts: Facts) -> None:
    """A compound's formula, source species, chemist and year of isolation."""
    facts.update({
        f"c_formula:{c.name}": ([f"{c.name}的化学式是什么？", f"{c.name}的分子式是什么？"], c.formula),
        f"c_source:{c.name}": ([f"{c.name}最早是从哪种生物中分离得到的？", f"{c.name}最初是从什么生物中发现的？"],
                               c.source),
        f"c_who:{c.name}": ([f"{c.name}是由谁首次分离得到的？", f"哪位化学家首次分离出了{c.name}？"], c.chemist),
        f"c_year:{c.name}": ([f"{c.name}是在哪一年被首次分离出来的？"], f"{c.year}年"),
    })
