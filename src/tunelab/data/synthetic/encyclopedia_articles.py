"""Encyclopedia articles: one entity of the world rendered as a Chinese article, with the facts it states.

An article is written from the world's facts and nothing else, as a draft: paragraphs of sentences, each
sentence choosing one of several phrasings and declaring the facts it states, so the QA pairs drawn from a
draft are answerable from its text. Several drafts of one entity are independent (their own choice of
facts, phrasings and sentence order, like several mirrors or revisions of a page in a dump). A draft is
2–4 paragraphs and is trimmed towards a length drawn from `BODY_CHARS` (in practice 150–420 characters of
body, median ≈ 270), with Latin names, English names in brackets（英语：…）, formulas, numbers and “quoted”
names; a sentence the article needs (what the subject is, when it began) is never trimmed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from tunelab.data.synthetic.encyclopedia_qa import (Facts, QA_PER_ARTICLE, compound_facts, draw_qa, person_facts,
                                                   place_facts, species_facts, station_facts)
from tunelab.data.synthetic.encyclopedia_words import OCCUPATIONS, PLANT_GROUPS, STATUS
from tunelab.data.synthetic.encyclopedia_world import Compound, Person, Place, Species, Station, World

KINDS = ("station", "species", "compound", "person", "place")
BODY_CHARS = (150, 600)     # an article's body is trimmed towards a length drawn from this range


@dataclass
class _Sentence:
    text: str
    facts: list[str]        # keys of the facts it states
    required: bool


class _Draft:
    """An article being written: paragraphs of sentences, each knowing which facts it states.

    `facts` maps a key to (question templates, answer); a sentence declares the keys it states and its
    text must contain their answers, so every QA pair drawn later is answerable from the article.
    """

    def __init__(self, rng: random.Random, facts: Facts, slots: dict):
        self.rng, self.facts, self.slots = rng, facts, slots
        self.paragraphs: list[list[_Sentence]] = []
        self.stated: set[str] = set()

    def paragraph(self) -> None:
        self.paragraphs.append([])

    def say(self, templates: list[str], *keys: str, required: bool = False, **extra) -> None:
        text = self.rng.choice(templates).format_map(self.slots | extra)
        for key in keys:
            answer = self.facts[key][1]
            if answer not in text:
                raise AssertionError(f"fact {key!r} ({answer!r}) missing from {text!r}")
        self.stated.update(keys)
        self.paragraphs[-1].append(_Sentence(text, list(keys), required))

    def pick(self, options: list[tuple[list[str], tuple[str, ...]]], required: bool = False) -> None:
        """Say one of several groups of templates, each group stating its own facts."""
        templates, keys = self.rng.choice(options)
        self.say(templates, *keys, required=required)

    def finish(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(paragraph texts, QA pairs): trimmed to a drawn length, 2–4 paragraphs, 3–6 pairs."""
        rng = self.rng
        paragraphs = [p for p in self.paragraphs if p]
        for p in paragraphs:
            if len(p) > 2 and rng.random() < 0.6:
                rest = p[1:]
                rng.shuffle(rest)
                p[1:] = rest
        while len(paragraphs) > 4:  # merge the two shortest neighbours
            i = min(range(len(paragraphs) - 1), key=lambda k: len(paragraphs[k]) + len(paragraphs[k + 1]))
            paragraphs[i:i + 2] = [paragraphs[i] + paragraphs[i + 1]]
        target = rng.randint(*BODY_CHARS)

        def size() -> int:
            return sum(len(s.text) for p in paragraphs for s in p) + len(paragraphs) - 1

        while (now := size()) > target:
            stated = Counter(k for p in paragraphs for s in p for k in set(s.facts))
            removable = [(pi, s) for pi, p in enumerate(paragraphs) for s in p
                         if not s.required and (len(p) > 1 or len(paragraphs) > 2)
                         and now - len(s.text) >= BODY_CHARS[0]
                         and len(stated) - sum(stated[k] == 1 for k in set(s.facts)) >= QA_PER_ARTICLE[0]]
            if not removable:
                break
            pi, s = rng.choice(removable)
            paragraphs[pi].remove(s)
            if not paragraphs[pi]:
                del paragraphs[pi]
        keys = list(dict.fromkeys(k for p in paragraphs for s in p for k in s.facts))
        return ["".join(s.text for s in p) for p in paragraphs], draw_qa(rng, self.facts, keys)


def _person_ref(p: Person) -> str:
    return f"{OCCUPATIONS[p.occupation][0]}{p.name}（{p.born}年—{p.died}年）"


def _about_person(w: World, p: Person, d: _Draft) -> None:
    """A paragraph on a person the article mentions: their birthplace, university and workplace."""
    n = p.name
    person_facts(w, p, d.facts)
    d.paragraph()
    d.say(["{pn}是{pv}{pbp}人，{pg}年毕业于{puni}。", "{pn}出生于{pv}{pbp}，早年就读于{puni}。"],
          f"bp:{n}", f"bpv:{n}", f"uni:{n}", pn=n, pv=w.places[p.birthplace].province, pbp=p.birthplace,
          pg=p.graduated, puni=p.university)
    d.say(["{pn}曾长期任职于{pwork}。", "{pn}长期在{pwork}工作。"], f"work:{n}", pn=n, pwork=p.workplace)


def _about_place(w: World, pl: Place, d: _Draft) -> None:
    """A paragraph on a place the article mentions: province, river and specialty."""
    place_facts(pl, d.facts)
    d.paragraph()
    d.say(["{qn}位于{qv}{qdir}部，{qriver}流经境内。", "{qn}地处{qv}{qdir}部，境内的主要河流为{qriver}。"],
          f"pl_province:{pl.name}", f"pl_river:{pl.name}", qn=pl.name, qv=pl.province, qdir=pl.direction,
          qriver=pl.river)
    d.say(["{qn}以盛产{qspec}闻名。", "{qn}素有“{qspec}之乡”之称。"], f"pl_spec:{pl.name}", qn=pl.name,
          qspec=pl.specialty)


def _about_species(w: World, sp: Species, d: _Draft) -> None:
    """A paragraph on a species the article mentions: Latin name, family, type locality."""
    species_facts(sp, w.places[sp.place].province, d.facts)
    d.paragraph()
    d.say(["{sn}（学名：{slatin}）是{sfam}的一种{sform}。", "{sn}的学名为{slatin}，隶属于{sfam}。"],
          f"sp_latin:{sp.name}", f"sp_family:{sp.name}", sn=sp.name, slatin=sp.latin, sfam=sp.family,
          sform=sp.form)
    d.say(["{sn}的模式产地为{stl}，由{swho}于{sy}年首次描述。", "{sy}年，{swho}根据采自{stl}的标本首次描述了{sn}。"],
          f"sp_type:{sp.name}", f"sp_who:{sp.name}", f"sp_year:{sp.name}", sn=sp.name, stl=sp.place,
          swho=sp.describer, sy=sp.year)


def _station_article(w: World, st: Station, d: _Draft) -> None:
    s, line, place = st.name, w.lines[st.line], w.places[st.place]
    eng = w.people[line.engineer]
    i = line.stations.index(s)
    f = d.facts
    station_facts(w, st, f)
    person_facts(w, eng, f)
    place_facts(place, f)
    f.update({
        "grade": ([f"{s}是几等站？", f"{s}的车站等级是什么？"], st.grade),
        "platforms": ([f"{s}有几座站台？"], f"{st.platforms}座"),
        "tracks": ([f"{s}有多少条股道？"], f"{st.tracks}条"),
        "code": ([f"{s}的电报码是什么？"], st.code),
        "en": ([f"{s}的英文名称是什么？"], st.en),
        "km": ([f"{s}距{line.name}起点多少公里？"], f"{st.km}公里"),
        "start": ([f"{line.name}的起点站是哪一站？"], line.stations[0]),
        "end": ([f"{line.name}的终点站是哪一站？"], line.stations[-1]),
        "rebuilt": ([f"{s}在哪一年进行了扩建？"], f"{st.rebuilt}年"),
        "trains": ([f"{s}每天停靠多少对旅客列车？"], f"{st.trains}对"),
        "hall": ([f"{s}的站房面积是多少？"], f"{st.hall}平方米"),
    })
    if 0 < i < len(line.stations) - 1:
        f["next"] = ([f"在{line.name}上，{line.stations[i - 1]}的下一站是哪一站？"], s)
    d.slots.update(s=s, en=st.en, code=st.code, p=place.name, v=place.province, l=line.name, y=st.year,
                   mo=st.month, g=st.grade, pf=st.platforms, tr=st.tracks, km=st.km, start=line.stations[0],
                   end=line.stations[-1], ly=line.year, len=line.length, e=_person_ref(eng), ry=st.rebuilt,
                   river=place.river, dir=place.direction, spec=place.specialty)
    P, V, L, Y = f"st_place:{s}", f"st_province:{s}", f"st_line:{s}", f"st_year:{s}"
    d.paragraph()
    d.pick([
        (["{s}（英语：{en}）是位于{v}{p}的一座铁路车站。", "{s}（英语：{en}）是{v}{p}境内的一座铁路车站。",
          "{s}是{v}{p}的一座铁路车站，英文名称为{en}。"], (P, V, "en")),
        (["{s}（英语：{en}）是{l}上的一座{g}，位于{v}{p}。"], (L, "grade", P, V, "en")),
        (["{s}（英语：{en}，电报码：{code}）位于{v}{p}，是{l}沿线的车站之一。"], (P, V, L, "en", "code")),
        (["{s}是{l}上的一座车站，位于{v}{p}境内。", "{s}是{v}{p}境内的一座车站，隶属于{l}。"], (L, P, V)),
    ], required=True)
    if L not in d.stated:
        d.say(["该站隶属于{l}。", "车站位于{l}上。", "{s}是{l}沿线的车站之一。"], L)
    d.say(["该站于{y}年启用。", "{s}于{y}年{mo}月正式开通运营。", "车站建成于{y}年，同年{mo}月投入使用。"],
          Y, required=True)
    if "grade" not in d.stated:
        d.say(["{s}目前为{g}。", "按车站等级划分，{s}属于{g}。", "该站现为{g}。"], "grade")
    if "code" not in d.stated:
        d.say(["{s}的电报码为{code}。", "该站的电报码是{code}。"], "code")
    d.paragraph()
    d.say(["车站设有{pf}座站台和{tr}条股道。", "{s}共有{pf}座站台、{tr}条股道。", "站内现有站台{pf}座、股道{tr}条。"],
          "platforms", "tracks")
    if i == 0:
        d.say(["{s}是{l}的起点站。", "{l}以{s}为起点。"], "start")
    else:
        d.say(["{s}距{l}起点{start}{km}公里。", "从{l}的起点{start}到{s}的线路距离为{km}公里。"], "km", "start")
    if i == len(line.stations) - 1:
        d.say(["{s}是{l}的终点站。", "{l}的终点站即为{s}。"], "end")
    elif i > 0:
        d.say(["在{l}上，{s}的相邻车站为{prev}和{nxt}。", "{s}的上一站是{prev}，下一站是{nxt}。"], "next",
              prev=line.stations[i - 1], nxt=line.stations[i + 1])
    d.say(["目前每天约有{trains}对旅客列车在{s}停靠。", "{s}每日停靠的旅客列车约{trains}对。"], "trains",
          trains=st.trains)
    d.say(["车站站房面积{hall}平方米，设有候车室和售票厅。", "{s}的站房建筑面积为{hall}平方米。"], "hall",
          hall=st.hall)
    if st.rebuilt:
        d.say(["{ry}年，车站进行了扩建，新建了站房。", "该站于{ry}年扩建，站房面积有所增加。"], "rebuilt")
    d.paragraph()
    d.say(["{l}全长{len}公里，于{ly}年建成通车。", "{l}于{ly}年建成，全长{len}公里。"],
          f"line_year:{line.name}", f"line_len:{line.name}")
    d.say(["{l}由{e}主持修建。", "{e}担任了{l}的总工程师。"], f"line_eng:{line.name}",
          f"born:{eng.name}", f"died:{eng.name}")
    _about_place(w, place, d)
    others = [o for o in w.stations.values() if o.place == place.name and o.name != s]
    if others:
        d.say(["{p}境内另有{o}，位于{ol}上。"], o=others[0].name, ol=others[0].line)
    _about_person(w, eng, d)


def _species_article(w: World, sp: Species, d: _Draft) -> None:
    s, province = sp.name, w.places[sp.place].province
    who = w.people[sp.describer]
    plant = sp.group in PLANT_GROUPS
    f = d.facts
    species_facts(sp, province, f)
    person_facts(w, who, f)
    f.update({
        "genus": ([f"{s}属于哪个属？"], sp.genus),
        "size": ([f"{s}的{sp.size_label}约为多少？"], sp.size),
        "alt": ([f"{s}分布在海拔多少米的地区？"], f"{sp.alt[0]}至{sp.alt[1]}米"),
        "season": ([f"{s}的花期是几月？" if plant else f"{s}的繁殖期在几月？"], f"{sp.season[0]}至{sp.season[1]}月"),
        "status": ([f"{s}的保护现状是什么？", f"{s}在IUCN红色名录中被列为什么等级？"], sp.status),
        "nick": ([f"{s}在当地俗称什么？"], sp.nickname or ""),
    })
    for c in sp.compounds[:1]:
        compound_facts(w.compounds[c], f)
    places = "、".join(sp.places) + ("等地" if len(sp.places) > 1 else "一带")
    d.slots.update(s=s, latin=sp.latin, genus=sp.genus, family=sp.family, form=sp.form, v=province,
                   tl=sp.place, places=places, ref=_person_ref(who), y=sp.year, size=sp.size,
                   label=sp.size_label, a1=sp.alt[0], a2=sp.alt[1], habitat=sp.habitat, look=sp.look,
                   m1=sp.season[0], m2=sp.season[1], status=sp.status,
                   code=dict(STATUS)[sp.status], nick=sp.nickname,
                   live="生长" if plant else "栖息")
    LAT, FAM, PROV = f"sp_latin:{s}", f"sp_family:{s}", f"sp_province:{s}"
    d.paragraph()
    d.pick([
        (["{s}（学名：{latin}）是{family}{genus}的一种{form}。"], (LAT, FAM, "genus")),
        (["{s}（学名：{latin}）为{family}{genus}{form}，是{v}的特有种。"], (LAT, FAM, "genus", PROV)),
        (["{s}，学名{latin}，是一种分布于{v}的{form}。"], (LAT, PROV)),
        (["{s}（拉丁语：{latin}）是{v}特有的一种{form}，隶属于{family}。"], (LAT, PROV, FAM)),
    ], required=True)
    if FAM not in d.stated:
        d.say(["{s}隶属于{family}{genus}。", "在分类上，{s}属于{family}{genus}。"], FAM, "genus")
    if plant:
        d.say(["{s}{label}可达{size}。", "成年植株{label}约{size}。"], "size")
        d.say(["花期{m1}至{m2}月。", "{s}每年{m1}至{m2}月开花。"], "season")
    else:
        d.say(["{s}成体{label}约{size}。", "{s}的{label}一般为{size}左右。"], "size")
        d.say(["繁殖期为{m1}至{m2}月。", "{s}每年{m1}至{m2}月进入繁殖期。"], "season")
    d.say(["其{look}。", "{s}{look}。"])
    d.paragraph()
    d.say(["{s}分布于{v}的{places}，{live}于海拔{a1}至{a2}米的{habitat}。",
           "{s}见于{v}{places}，多{live}在海拔{a1}至{a2}米的{habitat}。"],
          PROV, "alt", f"sp_habitat:{s}", required=True)
    d.say(["其模式产地为{tl}。", "本种的模式标本采自{tl}。"], f"sp_type:{s}")
    if sp.nickname:
        d.say(["当地俗称“{nick}”。", "{s}在当地被称为“{nick}”。"], "nick")
    d.paragraph()
    d.pick([
        (["{s}由{ref}于{y}年首次描述。", "本种最早由{ref}在{y}年发表。"],
         (f"sp_who:{s}", f"sp_year:{s}", f"born:{who.name}", f"died:{who.name}")),
        (["{y}年，{ref}根据采自{tl}的标本首次描述了本种。"],
         (f"sp_who:{s}", f"sp_year:{s}", f"sp_type:{s}", f"born:{who.name}", f"died:{who.name}")),
    ])
    d.say(["种加词{ep}意为“来自{tl}的”。", "其种加词{ep}取自模式产地{tl}的拼音。"], f"sp_type:{s}",
          ep=sp.latin.split()[1])
    d.say(["在世界自然保护联盟（IUCN）的红色名录中，{s}被列为{status}（{code}）。", "{s}目前的保护现状为{status}。"],
          "status")
    for c in sp.compounds[:1]:
        comp = w.compounds[c]
        d.say(["从{s}中可以分离出{c}。", "化学家从{s}中分离得到了{c}（{fm}）。"], f"c_source:{c}", c=c,
              fm=comp.formula)
    _about_person(w, who, d)


def _compound_article(w: World, c: Compound, d: _Draft) -> None:
    n, sp = c.name, w.species[c.source]
    chemist = w.people[c.chemist]
    province = w.places[sp.place].province
    f = d.facts
    compound_facts(c, f)
    person_facts(w, chemist, f)
    species_facts(sp, province, f)
    f.update({
        "en": ([f"{n}的英文名称是什么？"], c.en),
        "cls": ([f"{n}属于哪一类化合物？"], c.cls),
        "mass": ([f"{n}的摩尔质量是多少？"], f"{c.mass} g/mol"),
        "mp": ([f"{n}的熔点是多少？"], f"{c.melting} °C"),
        "app": ([f"{n}在常温下是什么外观？"], c.appearance),
        "cas": ([f"{n}的CAS号是多少？"], c.cas),
        "structure": ([f"{n}的化学结构是哪一年确定的？"], f"{c.structure_year}年"),
    })
    d.slots.update(c=n, en=c.en, cls=c.cls, fm=c.formula, mass=c.mass, s=sp.name, sform=sp.form,
                   sfamily=sp.family, v=province, ref=_person_ref(chemist), y=c.year, app=c.appearance,
                   mp=c.melting, sol=c.solubility, act=c.activity, cas=c.cas)
    FM, SRC = f"c_formula:{n}", f"c_source:{n}"
    d.paragraph()
    d.pick([
        (["{c}（英语：{en}）是一种{cls}，化学式为{fm}。"], ("en", "cls", FM)),
        (["{c}（英语：{en}，化学式：{fm}）是从{s}中分离得到的一种{cls}。"], ("en", FM, SRC, "cls")),
        (["{c}是一种{cls}（英语：{en}），最早发现于{s}。"], ("cls", "en", SRC)),
    ], required=True)
    if FM not in d.stated:
        d.say(["其化学式为{fm}，摩尔质量为{mass} g/mol。", "{c}的化学式是{fm}，摩尔质量{mass} g/mol。"],
              FM, "mass", required=True)
    else:
        d.say(["{c}的摩尔质量为{mass} g/mol。", "其摩尔质量为{mass} g/mol。"], "mass")
    d.say(["{c}的CAS号为{cas}。", "其CAS登记号是{cas}。"], "cas")
    d.paragraph()
    d.say(["常温下，{c}为{app}，熔点为{mp} °C。", "{c}在常温下是{app}，熔点约{mp} °C。"], "app", "mp",
          required=True)
    d.say(["{c}{sol}。", "它{sol}。"])
    d.say(["研究表明，{c}{act}。", "{c}{act}。"])
    d.say(["{c}的化学结构于{sy}年通过X射线晶体衍射确定。", "{sy}年，研究者借助X射线晶体学确定了{c}的结构。"],
          "structure", sy=c.structure_year)
    d.paragraph()
    d.say(["{y}年，{ref}首次从{s}中分离出{c}。", "{c}由{ref}于{y}年首次从{s}中分离并鉴定。",
           "{ref}在{y}年从{s}中分离得到了{c}。"],
          f"c_who:{n}", f"c_year:{n}", SRC, f"born:{chemist.name}", f"died:{chemist.name}")
    d.say(["{s}是{sfamily}的一种{sform}，分布于{v}。", "{s}隶属于{sfamily}，是{v}的特有种。"],
          f"sp_family:{sp.name}", f"sp_province:{sp.name}")
    _about_species(w, sp, d)
    _about_person(w, chemist, d)


def _person_article(w: World, p: Person, d: _Draft) -> None:
    n, place = p.name, w.places[p.birthplace]
    occ = OCCUPATIONS[p.occupation][0]
    f = d.facts
    person_facts(w, p, f)
    place_facts(place, f)
    f.update({
        "en": ([f"{n}的英文名是什么？"], p.en),
        "grad": ([f"{n}于哪一年大学毕业？"], f"{p.graduated}年"),
        "acad": ([f"{n}于哪一年当选为院士？"], f"{p.academician}年"),
    })
    d.slots.update(n=n, en=p.en, b=p.born, bm=p.born_month, d=p.died, dm=p.died_month, occ=occ, bp=p.birthplace,
                   v=place.province, uni=p.university, g=p.graduated, work=p.workplace, acad=p.academician,
                   pron=p.pronoun, dir=place.direction, spec=place.specialty)
    B, D, BP, BPV, OCC = f"born:{n}", f"died:{n}", f"bp:{n}", f"bpv:{n}", f"occ:{n}"
    d.paragraph()
    d.pick([
        (["{n}（{en}，{b}年{bm}月—{d}年{dm}月），{v}{bp}人，{occ}。"], ("en", B, D, BP, BPV, OCC)),
        (["{n}（{b}年—{d}年）是一位{occ}，出生于{v}{bp}。"], (B, D, OCC, BP, BPV)),
        (["{n}（英语：{en}，{b}年—{d}年），{occ}。"], ("en", B, D, OCC)),
        (["{n}是{v}{bp}人，{occ}，生于{b}年，卒于{d}年。"], (BP, BPV, OCC, B, D)),
    ], required=True)
    if BP not in d.stated:
        d.say(["{pron}出生于{v}{bp}。", "{n}的故乡是{v}{bp}。"], BP, BPV, required=True)
    d.paragraph()
    d.say(["{n}早年就读于{uni}，{g}年毕业。", "{g}年，{n}毕业于{uni}。", "{pron}于{g}年从{uni}毕业。"],
          f"uni:{n}", "grad", required=True)
    d.say(["{n}曾长期任职于{work}。", "{pron}长期在{work}从事研究和教学工作。"], f"work:{n}")
    f["age"] = ([f"{n}享年多少岁？"], f"{p.died - p.born}岁")
    d.say(["{d}年{dm}月，{n}逝世，享年{age}岁。", "{n}于{d}年{dm}月去世，享年{age}岁。"], "age", D, age=p.died - p.born)
    if p.academician:
        d.say(["{acad}年，{pron}当选为院士。", "{n}于{acad}年当选院士。"], "acad")
    d.paragraph()
    if p.described:
        sp = w.species[p.described[0]]
        f["field"] = ([f"{n}主要研究哪一类生物？"], sp.genus)
        d.say(["{n}主要从事{genus}{realm}的分类研究。", "{pron}的研究集中在{genus}{realm}的分类学方面。"], "field",
              genus=sp.genus, realm="植物" if sp.group in PLANT_GROUPS else "动物")
    elif p.occupation == "engineer":
        d.say(["{n}长期从事铁路选线和桥梁设计工作。", "{pron}擅长山区铁路的选线设计。"])
    elif p.occupation == "chemist":
        d.say(["{n}长期从事天然产物化学研究。", "{pron}的研究领域是天然产物的分离与结构鉴定。"])
    elif p.works:
        d.say(["{n}的作品多以{bp}一带的风土人情为题材。", "{pron}的小说和散文常以故乡{bp}为背景。"], BP)
    for sp_name in p.described[:3]:
        sp = w.species[sp_name]
        species_facts(sp, w.places[sp.place].province, f)
        d.say(["{y}年，{n}首次描述了{sp}（{latin}）。", "{n}于{y}年首次描述了{sp}。",
               "{sp}由{n}于{y}年首次描述。"], f"sp_who:{sp_name}", f"sp_year:{sp_name}",
              sp=sp_name, y=sp.year, latin=sp.latin)
    if p.described:
        f["n_species"] = ([f"{n}一生共描述了多少个新物种？"], f"{len(p.described)}个")
        d.say(["{n}一生共描述了{k}个新物种。", "{pron}一生描述的新物种共有{k}个。"], "n_species",
              k=len(p.described))
    for c_name in p.isolated[:3]:
        c = w.compounds[c_name]
        compound_facts(c, f)
        d.say(["{y}年，{n}从{sp}中首次分离出{c}。", "{n}于{y}年从{sp}中分离得到了{c}（{fm}）。"],
              f"c_who:{c_name}", f"c_year:{c_name}", f"c_source:{c_name}", c=c_name, sp=c.source, y=c.year,
              fm=c.formula)
    for line_name in p.lines:
        line = w.lines[line_name]
        f.update({
            f"line_year:{line_name}": ([f"{line_name}于哪一年建成通车？"], f"{line.year}年"),
            f"line_len:{line_name}": ([f"{line_name}全长多少公里？"], f"{line.length}公里"),
            f"line_eng:{line_name}": ([f"{line_name}的总工程师是谁？", f"谁主持修建了{line_name}？"], n),
        })
        d.say(["{n}曾担任{l}的总工程师，该线于{ly}年建成通车，全长{len}公里。",
               "{n}主持修建了{l}，这条铁路全长{len}公里，于{ly}年通车。"],
              f"line_eng:{line_name}", f"line_year:{line_name}", f"line_len:{line_name}",
              l=line_name, ly=line.year, len=line.length)
    if p.works:
        first, year = p.works[0]
        f["first_work"] = ([f"{n}的成名作是哪部作品？"], first)
        for title, y in p.works:
            f[f"author:{title}"] = ([f"{title}的作者是谁？"], n)
            f[f"work_year:{title}"] = ([f"{title}出版于哪一年？"], f"{y}年")
        d.say(["{n}的成名作是{y}年出版的{t}。", "{n}的成名作{t}出版于{y}年。"], "first_work",
              f"author:{first}", f"work_year:{first}", t=first, y=year)
        for title, y in p.works[1:]:
            d.say(["{y}年，{n}出版了{t}。", "{t}是{n}于{y}年出版的作品。"], f"author:{title}",
                  f"work_year:{title}", t=title, y=y)
    _about_place(w, place, d)


def _place_article(w: World, pl: Place, d: _Draft) -> None:
    P = pl.name
    f = d.facts
    place_facts(pl, f)
    kind = "地级市" if pl.capital else "县级市" if pl.city else "县"
    f.update({
        "en": ([f"{P}的英文名称是什么？"], pl.en),
        "capital": ([f"{pl.province}的省会是哪座城市？"], P),
        "pop": ([f"{P}的常住人口约为多少？"], f"{pl.population}万"),
        "area": ([f"{P}的总面积是多少？"], f"{pl.area}平方公里"),
        "alt": ([f"{P}的平均海拔是多少？"], f"{pl.altitude}米"),
        "dyn": ([f"{P}始置于哪个朝代？"], pl.dynasty),
        "cy": ([f"{P}是哪一年撤县设市的？"], f"{pl.city_year}年"),
        "nick": ([f"{P}素有什么之称？"], f"{pl.specialty}之乡"),
        "towns": ([f"{P}下辖多少个镇？"], f"{pl.towns[0]}个镇"),
        "temp": ([f"{P}的年平均气温是多少？"], f"{pl.temperature} °C"),
        "to_capital": ([f"{P}距离省会有多远？"], f"{pl.to_capital}公里"),
    })
    d.slots.update(P=P, en=pl.en, v=pl.province, dir=pl.direction, kind=kind, pop=pl.population, area=pl.area,
                   alt=pl.altitude, river=pl.river, dyn=pl.dynasty, cy=pl.city_year, spec=pl.specialty)
    V = f"pl_province:{P}"
    d.paragraph()
    if pl.capital:
        d.say(["{P}（英语：{en}）是{v}的省会，也是该省的政治、经济和文化中心。", "{P}是{v}的省会城市（英语：{en}）。"],
              "capital", V, "en", required=True)
    else:
        d.pick([
            (["{P}（英语：{en}）是{v}下辖的一个{kind}，位于该省{dir}部。", "{P}是{v}{dir}部的一个{kind}（英语：{en}）。"],
             (V, "en")),
            (["{P}位于{v}{dir}部，是{v}下辖的{kind}。"], (V,)),
        ], required=True)
    d.say(["根据2020年人口普查，{P}常住人口为{pop}万人。", "{P}常住人口约{pop}万。"], "pop", required=True)
    if not pl.capital:
        d.say(["{P}距省会{cap}约{km}公里。", "从{P}到省会{cap}的距离约为{km}公里。"], "to_capital",
              cap=w.provinces[pl.province].capital, km=pl.to_capital)
    d.say(["全境总面积{area}平方公里。", "{P}总面积为{area}平方公里。"], "area")
    d.paragraph()
    d.say(["{river}流经{P}全境。", "{P}境内的主要河流为{river}。", "{P}地处{river}沿岸。"], f"pl_river:{P}")
    d.say(["{P}平均海拔约{alt}米。", "境内平均海拔{alt}米。"], "alt")
    d.say(["{P}年平均气温{temp} °C，四季分明。", "{P}气候温和，年平均气温为{temp} °C。"], "temp", temp=pl.temperature)
    d.say(["{P}下辖{t1}个镇、{t2}个乡。", "全境共辖{t1}个镇和{t2}个乡。"], "towns", t1=pl.towns[0], t2=pl.towns[1])
    d.paragraph()
    d.say(["{P}历史悠久，{dyn}始置县。", "{P}最早在{dyn}设县。"], "dyn")
    if pl.city_year:
        d.say(["{cy}年，{P}撤县设市。", "{P}于{cy}年撤县设市。"], "cy")
    d.pick([(["{P}以盛产{spec}闻名，素有“{spec}之乡”之称。"], (f"pl_spec:{P}", "nick")),
            (["{P}最著名的特产是{spec}。", "{P}以盛产{spec}闻名。"], (f"pl_spec:{P}",))])
    d.paragraph()
    for st in [s for s in w.stations.values() if s.place == P][:2]:
        station_facts(w, st, f)
        d.say(["{l}经过{P}，在境内设有{st}，该站于{y}年启用。", "{P}境内的{st}位于{l}上，于{y}年开通。"],
              f"st_place:{st.name}", f"st_line:{st.name}", f"st_year:{st.name}", st=st.name, l=st.line, y=st.year)
    for person in [p for p in w.people.values() if p.birthplace == P][:2]:
        person_facts(w, person, f)
        d.say(["{P}是{ref}的故乡。", "{ref}出生于{P}。"], f"bp:{person.name}", f"born:{person.name}",
              f"died:{person.name}", ref=_person_ref(person))
    for sp in [s for s in w.species.values() if s.place == P][:2]:
        species_facts(sp, pl.province, f)
        d.say(["{sp}的模式产地位于{P}境内。", "{sp}（{latin}）的模式标本采自{P}。"], f"sp_type:{sp.name}",
              sp=sp.name, latin=sp.latin)
    if not pl.capital:
        _about_place(w, w.places[w.provinces[pl.province].capital], d)


BUILDERS = {"station": _station_article, "species": _species_article, "compound": _compound_article,
            "person": _person_article, "place": _place_article}


def draft_article(w: World, kind: str, name: str,
                  rng: random.Random) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(paragraphs, QA pairs, every answer the article states) of one article about `name`."""
    entity = {"station": w.stations, "species": w.species, "compound": w.compounds, "person": w.people,
              "place": w.places}[kind][name]
    d = _Draft(rng, {}, {})
    BUILDERS[kind](w, entity, d)
    paragraphs, qa = d.finish()
    body = "\n".join(paragraphs)
    answers = sorted({a for q, a in d.facts.values() if a and a in body}, key=len, reverse=True)
    return paragraphs, qa, answers
