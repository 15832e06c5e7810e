"""Chinese encyclopedia-style articles about an invented world, with the true question–answer pairs of each.

The CPU pretraining demo needs a corpus a tiny GPT can learn *facts* from in minutes, with nothing
downloaded. So the articles describe one shared, seeded world (`generate_world`): provinces, rivers,
about 120 places, 100 people, 13 railway lines with their stations, about 110 species and 70 compounds.
Every fact is fixed in the world and only the wording varies, so it is stated consistently wherever it
appears: a station's line, city and opening year in the station's article, in its city's article and in
its line engineer's article; a person's birth year and birthplace in their own article, in their home
town's and in the species or compounds they described or isolated (described in a year of their working
life, from a species already described, on a line they built...).

`generate_articles(count, seed)` writes `count` articles over about 500 subjects of five kinds
(station, species, compound, person, place), cycling through the subjects in a seeded order, so with a few
thousand articles each subject has several articles — independent drafts from the same facts, each with
its own choice of facts, several phrasings per fact and sentence order (like several mirrors or revisions
of a page in a dump). An article is `{"id", "title", "text", "kind"}` with text "标题\\n\\n正文", 2–4
paragraphs separated by one newline, 150–600 characters of body (a draft is trimmed towards a drawn
length; in practice 150–420, median ≈ 270), with Latin names, English names in brackets（英语：…）,
formulas, numbers and “quoted” names. 5,000 articles take 2–3 s.

The QA pairs `{"question", "answer", "source_id"}` (3–6 per article) are drawn from the facts the article
states: the answer is a short span of the article's text (a name, "1987年", "8条", "C15H21NO3"), present
before and after cleaning, so "answer in continuation" can score fact recall; the question names its
entity (never "文中"/"本文"), so it can be asked without the article. Questions of one fact come from one
function per entity, so a question always gets the same answer, whichever article it comes from.

Noise (`noise=True`, the default) imitates a wiki dump, so corpus cleaning has work to do; every piece is
removed exactly by a rule of `tunelab.data.corpus.clean` (markup, empty_brackets, whitespace, dedup), so the
cleaned noisy text equals the noise-free text, and noise never lands inside a QA answer:
  - empty bracket pairs （） () 《》 【】 （ ） where a template was dropped (after the subject, before ，。);
  - '''bold''' subject, [[wiki links]] and [[target|text]] around names, <br> / <br /> at a paragraph's
    end, &nbsp; for a space in Latin text;
  - stray whitespace: spaces, tabs or U+3000 at line ends, a "　　" paragraph indent, \\r\\n line ends;
  - about 1% exact duplicates: an article's raw text repeated under a new id (it has no QA pairs of its
    own: the original's cover it).
The noise has its own random stream, so article i is the same draft with and without noise (except the
duplicate slots).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.records import building_dir, write_jsonl

KINDS = ("station", "species", "compound", "person", "place")
BODY_CHARS = (150, 600)     # an article's body is trimmed towards a length drawn from this range
QA_PER_ARTICLE = (3, 6)
NOISE = {                   # chance per article of each kind of noise
    "empty_brackets": 0.35, "bold_subject": 0.3, "wiki_link": 0.3, "br": 0.1, "nbsp": 0.3,
    "line_end_space": 0.15, "indent": 0.05, "crlf": 0.03, "duplicate": 0.01,
}


def _pool(spec: str) -> dict[str, str]:
    """'青qing 云yun' -> {'青': 'qing', '云': 'yun'}: characters with their pinyin, for English names."""
    return {item[0]: item[1:] for item in spec.split()}


PLACE_HEAD = _pool("青qing 云yun 石shi 平ping 安an 宁ning 东dong 西xi 南nan 北bei 永yong 新xin 长chang "
                   "金jin 白bai 黄huang 红hong 玉yu 凤feng 龙long 临lin 洛luo 嘉jia 昌chang 德de 兴xing "
                   "丰feng 华hua 松song 柳liu 梧wu 桂gui 梅mei 鹤he 鹿lu 雁yan 霞xia 春chun 秋qiu 枫feng "
                   "竹zhu 茶cha 棠tang 泰tai 银yin 紫zi 翠cui 丹dan")
PLACE_TAIL = _pool("川chuan 山shan 河he 阳yang 江jiang 林lin 泉quan 溪xi 桥qiao 城cheng 岭ling 湖hu 州zhou "
                   "源yuan 口kou 坪ping 塘tang 湾wan 岗gang 峰feng 谷gu 台tai 关guan 岩yan 门men 田tian "
                   "坝ba 浦pu 庄zhuang 沟gou")
PROVINCE_TAIL = "原陵泽宁陇岳郡望渠衡"
RIVER_TAIL = "澜沙潭涧漪沧浔泷"
SURNAME = _pool("李li 王wang 张zhang 刘liu 陈chen 杨yang 赵zhao 周zhou 吴wu 徐xu 孙sun 胡hu 朱zhu 高gao "
                "何he 郭guo 罗luo 梁liang 宋song 郑zheng 谢xie 韩han 唐tang 冯feng 于yu 董dong 程cheng "
                "曹cao 袁yuan 邓deng 许xu 傅fu 沈shen 曾zeng 彭peng 苏su 卢lu 蒋jiang 蔡cai 贾jia 丁ding "
                "魏wei 薛xue 叶ye 余yu 潘pan 杜du 戴dai 夏xia 钟zhong 汪wang 任ren 姜jiang 范fan 方fang "
                "姚yao 谭tan 廖liao 邹zou 熊xiong 陆lu 孔kong 崔cui 康kang 邱qiu 秦qin 顾gu 侯hou 邵shao "
                "孟meng 段duan 钱qian 汤tang 尹yin 易yi 常chang 乔qiao 贺he 龚gong 严yan")
GIVEN_MALE = _pool("伟wei 明ming 文wen 建jian 国guo 志zhi 立li 光guang 振zhen 俊jun 学xue 宏hong 瑞rui "
                   "思si 鹏peng 涛tao 毅yi 诚cheng 斌bin 博bo 翰han 哲zhe 远yuan 卓zhuo 守shou 仁ren "
                   "启qi 承cheng 鸿hong 霖lin 树shu 培pei 之zhi 仲zhong 其qi 达da 海hai 章zhang")
GIVEN_FEMALE = _pool("静jing 慧hui 丽li 婉wan 秀xiu 雪xue 芳fang 淑shu 英ying 如ru 君jun 敏min 琳lin 萍ping "
                     "洁jie 颖ying 佩pei 思si 文wen 玉yu")

# (name suffix, genus in Chinese, genus in Latin, family, Latin neuter?, group, life form)
SPECIES_BASES = [
    ("杜鹃", "杜鹃花属", "Rhododendron", "杜鹃花科", True, "shrub", "常绿灌木"),
    ("兰", "兰属", "Cymbidium", "兰科", True, "herb", "多年生草本植物"),
    ("冷杉", "冷杉属", "Abies", "松科", False, "tree", "常绿乔木"),
    ("报春", "报春花属", "Primula", "报春花科", False, "herb", "多年生草本植物"),
    ("秋海棠", "秋海棠属", "Begonia", "秋海棠科", False, "herb", "多年生草本植物"),
    ("槭", "槭属", "Acer", "无患子科", True, "tree", "落叶乔木"),
    ("百合", "百合属", "Lilium", "百合科", True, "herb", "多年生草本植物"),
    ("龙胆", "龙胆属", "Gentiana", "龙胆科", False, "herb", "一年生草本植物"),
    ("山雀", "山雀属", "Parus", "山雀科", False, "bird", "小型鸟类"),
    ("噪鹛", "噪鹛属", "Garrulax", "噪鹛科", False, "bird", "中型鸟类"),
    ("疣螈", "疣螈属", "Tylototriton", "蝾螈科", False, "amphibian", "有尾两栖动物"),
    ("树蛙", "树蛙属", "Rhacophorus", "树蛙科", False, "amphibian", "无尾两栖动物"),
    ("角蟾", "角蟾属", "Megophrys", "角蟾科", False, "amphibian", "无尾两栖动物"),
    ("高原鳅", "高原鳅属", "Triplophysa", "条鳅科", False, "fish", "淡水鱼类"),
    ("锦蛇", "锦蛇属", "Elaphe", "游蛇科", False, "reptile", "无毒蛇类"),
    ("凤蝶", "凤蝶属", "Papilio", "凤蝶科", False, "insect", "大型蝴蝶"),
]
PLANT_GROUPS = ("shrub", "herb", "tree")
SIZE = {  # group -> (label, low, high, unit, decimals)
    "shrub": ("株高", 1.0, 5.0, "米", 1), "herb": ("株高", 10, 80, "厘米", 0), "tree": ("树高", 10, 40, "米", 0),
    "bird": ("体长", 10, 30, "厘米", 0), "amphibian": ("体长", 4, 15, "厘米", 0),
    "fish": ("体长", 8, 20, "厘米", 0), "reptile": ("全长", 0.8, 2.0, "米", 1), "insect": ("翅展", 8, 14, "厘米", 0),
}
HABITAT = {
    "shrub": ["山地常绿阔叶林中", "高山灌丛中", "石灰岩山坡上"], "herb": ["林下阴湿处", "林缘草地上", "高山草甸上"],
    "tree": ["针阔混交林中", "亚高山针叶林中", "山地阔叶林中"], "bird": ["山地森林中", "竹林中", "次生林中"],
    "amphibian": ["山间溪流附近", "林下湿地中", "山区稻田附近"], "fish": ["高原溪流中", "山区河流中"],
    "reptile": ["山区农田附近", "低山丘陵地带"], "insect": ["山地林缘", "溪谷花丛中"],
}
LOOKS = {
    "plant": ["花冠{c}色，花朵簇生于枝顶", "花{c}色，常数朵聚生", "叶片革质，花{c}色"],
    "tree": ["树皮{c}色，叶片掌状分裂", "树皮{c}色，球果长圆形"],
    "bird": ["头顶{c}色，两颊白色", "背部{c}色，腹部淡黄色"],
    "amphibian": ["背面{c}色，皮肤较粗糙", "体背{c}色，散有深色斑点"],
    "fish": ["体背{c}色，带有不规则斑纹"], "reptile": ["体背{c}色，具四条纵纹"],
    "insect": ["翅面{c}色，后翅具尾突"],
}
COLORS = ["白", "淡紫", "粉红", "鲜红", "金黄", "紫红", "灰褐", "墨绿", "橄榄绿", "深褐"]
NICKNAMES = {
    "plant": ["映山红", "满山红", "山灯笼", "石上春", "岩上雪", "云中仙", "玉如意", "雪里娇"],
    "tree": ["青松王", "红叶树", "老鹰树"], "bird": ["山雀子", "白脸儿", "林中哨", "画眉子"],
    "amphibian": ["石蛤蟆", "山娃娃", "火龙", "绿衣郎"], "fish": ["石板鱼", "花鳅"],
    "reptile": ["菜花蛇", "乌梢子"], "insect": ["金凤子", "玉带蝶"],
}
STATUS = [("无危", "LC"), ("近危", "NT"), ("易危", "VU"), ("濒危", "EN"), ("极危", "CR")]
# (name suffix, class, English suffix, N atoms, O atoms)
COMPOUND_CLASSES = [
    ("碱", "生物碱", "ine", (1, 2), (1, 5)), ("素", "天然产物", "in", (0, 0), (2, 7)),
    ("醇", "醇类化合物", "ol", (0, 0), (1, 4)), ("酮", "酮类化合物", "one", (0, 0), (2, 5)),
    ("苷", "糖苷类化合物", "oside", (0, 0), (6, 12)), ("酸", "有机酸", "ic acid", (0, 0), (2, 6)),
]
APPEARANCE = ["白色晶体", "无色针状晶体", "淡黄色粉末", "无色油状液体", "白色结晶性粉末", "黄色片状晶体"]
SOLUBILITY = ["易溶于乙醇和氯仿，难溶于水", "微溶于水，易溶于甲醇", "可溶于热水和乙醇", "难溶于水，溶于乙醚和丙酮"]
ACTIVITY = ["具有一定的抗菌活性", "具有镇痛作用", "可用作天然染料", "对多种害虫有驱避作用", "具有抗氧化活性",
            "对神经系统有较强的毒性"]
SPECIALTY = ["茶叶", "柑橘", "蚕丝", "陶瓷", "竹编", "核桃", "板栗", "猕猴桃", "蜂蜜", "米酒", "木雕", "砚台",
             "药材", "腊肉", "油桐", "花椒"]
DYNASTY = ["秦代", "汉代", "晋代", "隋代", "唐代", "宋代", "元代", "明代", "清代"]
WORK_WORDS = ["青山", "远帆", "春水", "北窗", "松风", "晚霞", "雪夜", "长河", "渡口", "灯火", "故园", "归雁"]
WORK_SUFFIX = ["集", "记", "录", "书", "谣", "志", "纪行", "杂记"]
OCCUPATIONS = {"botanist": ("植物学家", 22), "zoologist": ("动物学家", 18), "chemist": ("化学家", 20),
               "engineer": ("铁路工程师", 10), "writer": ("作家", 30)}
DIRECTIONS = ["东", "西", "南", "北", "中"]
ATOMIC_MASS = {"C": 12.011, "H": 1.008, "N": 14.007, "O": 15.999}


# --- the world ------------------------------------------------------------------------------------

@dataclass
class Province:
    name: str
    capital: str = ""
    rivers: list[str] = field(default_factory=list)


@dataclass
class Place:
    name: str           # 云川市
    base: str           # 云川
    en: str             # Yunchuan
    province: str
    city: bool          # 市 (True) or 县
    capital: bool
    direction: str      # part of the province: 东/西/南/北/中
    population: str     # 万 people in 2020, "45.3"
    area: int           # km²
    altitude: int
    river: str
    dynasty: str        # 始置于
    city_year: int | None   # 撤县设市
    specialty: str
    towns: tuple[int, int]  # 镇, 乡
    to_capital: int         # km to the provincial capital (0 for the capital)
    temperature: str        # yearly mean, °C


@dataclass
class Person:
    name: str
    en: str
    pronoun: str
    occupation: str     # key of OCCUPATIONS
    born: int
    born_month: int
    died: int
    died_month: int
    birthplace: str     # place name
    university: str
    graduated: int
    workplace: str
    academician: int | None
    works: list[tuple[str, int]] = field(default_factory=list)   # writers: (《title》, year)
    described: list[str] = field(default_factory=list)           # species names
    isolated: list[str] = field(default_factory=list)            # compound names
    lines: list[str] = field(default_factory=list)               # line names (chief engineer)


@dataclass
class Line:
    name: str
    year: int
    engineer: str
    stations: list[str] = field(default_factory=list)
    length: int = 0


@dataclass
class Station:
    name: str
    en: str
    place: str
    line: str
    year: int
    month: int
    grade: str
    platforms: int
    tracks: int
    km: int
    code: str
    rebuilt: int | None
    trains: int         # passenger trains stopping per day (pairs)
    hall: int           # station building, m²


@dataclass
class Species:
    name: str
    latin: str
    genus: str
    family: str
    group: str
    form: str
    place: str          # type locality
    places: list[str]   # distribution (same province), type locality first
    describer: str
    year: int
    size: str
    size_label: str
    alt: tuple[int, int]
    habitat: str
    look: str
    season: tuple[int, int]
    status: str
    nickname: str | None
    compounds: list[str] = field(default_factory=list)


@dataclass
class Compound:
    name: str
    en: str
    cls: str
    formula: str
    mass: str
    source: str         # species name
    chemist: str
    year: int
    appearance: str
    melting: int
    solubility: str
    activity: str
    cas: str
    structure_year: int     # structure determined (X-ray)


@dataclass
class World:
    """Every entity by name; the articles are written from these facts and nothing else."""

    provinces: dict[str, Province]
    places: dict[str, Place]
    people: dict[str, Person]
    lines: dict[str, Line]
    stations: dict[str, Station]
    species: dict[str, Species]
    compounds: dict[str, Compound]

    def subjects(self) -> list[tuple[str, str]]:
        """(kind, name) of every entity that has articles of its own."""
        return ([("station", n) for n in self.stations] + [("species", n) for n in self.species]
                + [("compound", n) for n in self.compounds] + [("person", n) for n in self.people]
                + [("place", n) for n in self.places])


def _pinyin(chars: str, table: dict[str, str]) -> str:
    return "".join(table[c] for c in chars).capitalize()


def _unique(rng: random.Random, make, taken: set[str]) -> str:
    """Draw names with `make(rng)` until one is new (names never repeat, so every question has one answer)."""
    while True:
        name = make(rng)
        if name not in taken:
            taken.add(name)
            return name


def _formula(rng: random.Random, n_range, o_range) -> tuple[str, str]:
    """A formula with a whole, non-negative degree of unsaturation, in Hill order, and its molar mass."""
    c = rng.randint(10, 30)
    n = rng.randint(*n_range)
    o = rng.randint(*o_range)
    h = 2 * c + 2 + n - 2 * rng.randint(2, min(10, c))
    atoms = {"C": c, "H": h, "N": n, "O": o}
    text = "".join(f"{a}{k if k > 1 else ''}" for a, k in atoms.items() if k)
    mass = sum(ATOMIC_MASS[a] * k for a, k in atoms.items())
    return text, f"{mass:.2f}"


def _cas(rng: random.Random) -> str:
    """A CAS-style registry number with a valid check digit."""
    digits = str(rng.randint(10000, 9999999)) + f"{rng.randint(0, 99):02d}"
    check = sum(i * int(d) for i, d in enumerate(reversed(digits), start=1)) % 10
    return f"{digits[:-2]}-{digits[-2:]}-{check}"


def generate_world(seed: int = 0) -> World:
    """The invented world for `seed`: the same seed always gives the same entities and facts."""
    rng = random.Random(f"encyclopedia-world:{seed}")
    heads, tails = list(PLACE_HEAD), list(PLACE_TAIL)
    taken: set[str] = set()

    provinces: dict[str, Province] = {}
    for _ in range(10):
        name = _unique(rng, lambda r: r.choice(heads) + r.choice(PROVINCE_TAIL), taken) + "省"
        provinces[name] = Province(name)
    rivers = []
    for prov in provinces.values():
        for _ in range(rng.randint(1, 2)):
            river = _unique(rng, lambda r: r.choice(heads) + r.choice(RIVER_TAIL), taken)
            river += rng.choice("江河")
            prov.rivers.append(river)
            rivers.append(river)

    places: dict[str, Place] = {}
    prov_names = list(provinces)
    for i in range(120):
        prov = provinces[prov_names[i % len(prov_names)]]
        base = _unique(rng, lambda r: r.choice(heads) + r.choice(tails), taken)
        capital = not prov.capital
        city = capital or rng.random() < 0.35
        name = base + ("市" if city else "县")
        if capital:
            prov.capital = name
            population = f"{rng.uniform(150, 600):.1f}"
            area = rng.randint(5000, 20000)
        else:
            population = f"{rng.uniform(20, 120) if city else rng.uniform(8, 80):.1f}"
            area = rng.randint(600, 5000)
        places[name] = Place(
            name, base, _pinyin(base, PLACE_HEAD | PLACE_TAIL), prov.name, city, capital,
            direction="中" if capital else rng.choice(DIRECTIONS), population=population, area=area,
            altitude=rng.randint(50, 3200), river=rng.choice(prov.rivers), dynasty=rng.choice(DYNASTY),
            city_year=rng.randint(1949, 1996) if city else None, specialty=rng.choice(SPECIALTY),
            towns=(rng.randint(3, 15), rng.randint(0, 12)), temperature=f"{rng.uniform(6, 21):.1f}",
            to_capital=0 if capital else rng.randint(30, 400))
    place_names = list(places)

    people: dict[str, Person] = {}
    place_bases = [p.base for p in places.values()]
    universities = [p[:-1] + "大学" for p in provinces] + [p[:-1] + "师范大学" for p in prov_names[:4]]

    def person_name(r: random.Random, given: dict[str, str]) -> str:
        while True:
            name = r.choice(list(SURNAME)) + "".join(r.choice(list(given)) for _ in range(r.choice((1, 2, 2))))
            if not any(b in name for b in place_bases):
                return name

    for occupation, (_, n) in OCCUPATIONS.items():
        for _ in range(n):
            female = rng.random() < 0.3
            given = GIVEN_FEMALE if female else GIVEN_MALE
            name = _unique(rng, lambda r: person_name(r, given), taken)
            en = f"{SURNAME[name[0]].capitalize()} {_pinyin(name[1:], given)}"
            born = rng.randint(1860, 1950)
            died = rng.randint(born + 55, min(born + 95, 2023))
            graduated = born + rng.randint(21, 24)
            academician = (rng.randint(born + 45, min(died, 2019))
                           if occupation != "writer" and rng.random() < 0.4 else None)
            workplace = rng.choice(universities + [p + "科学院" for p in prov_names])
            people[name] = Person(name, en, "她" if female else "他", occupation, born, rng.randint(1, 12),
                                  died, rng.randint(1, 12), rng.choice(place_names), rng.choice(universities),
                                  graduated, workplace, academician)
    by_job = {job: [p for p in people.values() if p.occupation == job] for job in OCCUPATIONS}
    for writer in by_job["writer"]:
        years = sorted(rng.sample(range(writer.born + 20, writer.died), k=rng.randint(2, 3)))
        for year in years:
            title = _unique(rng, lambda r: "《" + r.choice(WORK_WORDS + place_bases) + r.choice(WORK_SUFFIX) + "》",
                            taken)
            writer.works.append((title, year))

    lines: dict[str, Line] = {}
    stations: dict[str, Station] = {}
    station_dirs: dict[str, list[str]] = {}
    codes: set[str] = set()
    for i in range(13):
        engineer = by_job["engineer"][i % len(by_job["engineer"])]
        route_provs = rng.sample(prov_names, k=2)
        route = [p for p in place_names if places[p].province == route_provs[0]]
        route = rng.sample(route, k=min(len(route), rng.randint(4, 7)))
        other = [p for p in place_names if places[p].province == route_provs[1]]
        route += rng.sample(other, k=min(len(other), rng.randint(1, 4)))
        a, b = places[route[0]].base, places[route[-1]].base
        name = next((x + y + "铁路" for x in a for y in b if x + y not in taken and x + y + "铁路" not in taken),
                    a + b + "铁路")
        taken.add(name)
        lo = max(engineer.born + 30, 1905)
        year = rng.randint(lo, max(lo, min(engineer.died - 1, 2015)))
        line = Line(name, year, engineer.name)
        engineer.lines.append(name)
        km = 0
        for place_name in route:
            place = places[place_name]
            dirs = station_dirs.setdefault(place_name, [""] + rng.sample(["东", "西", "南", "北"], k=4))
            if not dirs:  # five stations in one place are enough
                continue
            d = dirs.pop(0)
            st_name = place.base + d + "站"
            en_dir = {"": "", "东": " East", "西": " West", "南": " South", "北": " North"}[d]
            st_year = year if rng.random() < 0.7 else min(2020, year + rng.randint(1, 25))
            grade = ("一等站" if place.capital else rng.choice(["二等站", "三等站"]) if place.city
                     else rng.choice(["三等站", "四等站"]))
            platforms = {"一等站": 5, "二等站": 3, "三等站": 2, "四等站": 1}[grade] + rng.randint(0, 2)
            initials = (PLACE_HEAD[place.base[0]][0] + PLACE_TAIL[place.base[1]][0]).upper()
            code = _unique(rng, lambda r: initials + r.choice("ABCDEFGHJKLMNPQRSTWXYZ"), codes)
            rebuilt = rng.randint(st_year + 10, 2020) if st_year < 2005 and rng.random() < 0.5 else None
            stations[st_name] = Station(st_name, f"{place.en}{en_dir} Railway Station", place_name, name,
                                        st_year, rng.randint(1, 12), grade, platforms,
                                        platforms + rng.randint(1, 4), km, code, rebuilt,
                                        platforms * rng.randint(3, 9), rng.randrange(400, 3000 * platforms, 50))
            line.stations.append(st_name)
            km += rng.randint(18, 65)
        line.length = stations[line.stations[-1]].km
        lines[name] = line

    species: dict[str, Species] = {}
    describers = {"plant": by_job["botanist"], "animal": by_job["zoologist"]}
    counters = {"plant": 0, "animal": 0}
    for _ in range(110):
        while True:
            place = places[rng.choice(place_names)]
            suffix, genus_zh, genus, family, neuter, group, form = rng.choice(SPECIES_BASES)
            name = place.base + suffix
            if name not in taken:
                taken.add(name)
                break
        realm = "plant" if group in PLANT_GROUPS else "animal"
        person = describers[realm][counters[realm] % len(describers[realm])]
        counters[realm] += 1
        lo = max(person.born + 25, 1885)
        year = rng.randint(lo, max(lo, min(person.died, 2015)))
        person.described.append(name)
        label, low, high, unit, decimals = SIZE[group]
        size = f"{rng.uniform(low, high):.{decimals}f}{unit}"
        neighbours = [p for p in place_names if places[p].province == place.province and p != place.name]
        alt_low = rng.randrange(200, 2400, 100)
        start = rng.randint(2, 7)
        looks = LOOKS["tree" if group == "tree" else "plant" if realm == "plant" else group]
        nick = NICKNAMES["plant" if group in ("shrub", "herb") else group]
        species[name] = Species(
            name, f"{genus} {place.en.lower()}{'ense' if neuter else 'ensis'}", genus_zh, family, group, form,
            place.name, [place.name] + rng.sample(neighbours, k=min(len(neighbours), rng.randint(0, 2))),
            person.name, year, size, label, (alt_low, alt_low + rng.randrange(400, 1600, 100)),
            rng.choice(HABITAT[group]), rng.choice(looks).format(c=rng.choice(COLORS)),
            (start, start + rng.randint(1, 3)), rng.choice(STATUS)[0],
            rng.choice(nick) if rng.random() < 0.6 else None)

    compounds: dict[str, Compound] = {}
    chemists = by_job["chemist"]
    species_names = list(species)
    english: set[str] = set()
    for i in range(70):
        while True:
            sp = species[rng.choice(species_names)]
            suffix, cls, en_suffix, n_range, o_range = rng.choice(COMPOUND_CLASSES)
            name = sp.name + suffix
            en = places[sp.place].en.lower() + en_suffix
            fit = [c for c in chemists if min(c.died, 2018) > max(c.born + 25, sp.year)]
            if name not in taken and en not in english and fit:
                taken.add(name)
                english.add(en)
                break
        chemist = min(fit, key=lambda c: (len(c.isolated), rng.random()))
        year = rng.randint(max(chemist.born + 25, sp.year) + 1, min(chemist.died, 2018))
        formula, mass = _formula(rng, n_range, o_range)
        chemist.isolated.append(name)
        sp.compounds.append(name)
        compounds[name] = Compound(name, en, cls, formula, mass, sp.name, chemist.name, year,
                                   rng.choice(APPEARANCE), rng.randint(40, 320), rng.choice(SOLUBILITY),
                                   rng.choice(ACTIVITY), _cas(rng), min(2020, year + rng.randint(1, 30)))
    return World(provinces, places, people, lines, stations, species, compounds)


# --- drafting an article --------------------------------------------------------------------------

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

    def __init__(self, rng: random.Random, facts: dict[str, tuple[list[str], str]], slots: dict):
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
        chosen = sorted(rng.sample(range(len(keys)), k=min(len(keys), rng.randint(*QA_PER_ARTICLE))))
        qa = []
        for i in chosen:
            questions, answer = self.facts[keys[i]]
            qa.append((rng.choice(questions), answer))
        return ["".join(s.text for s in p) for p in paragraphs], qa


def _person_ref(p: Person) -> str:
    return f"{OCCUPATIONS[p.occupation][0]}{p.name}（{p.born}年—{p.died}年）"


def _person_facts(w: World, p: Person, facts: dict) -> None:
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


def _about_person(w: World, p: Person, d: _Draft) -> None:
    """A paragraph on a person the article mentions: their birthplace, university and workplace."""
    n = p.name
    _person_facts(w, p, d.facts)
    d.paragraph()
    d.say(["{pn}是{pv}{pbp}人，{pg}年毕业于{puni}。", "{pn}出生于{pv}{pbp}，早年就读于{puni}。"],
          f"bp:{n}", f"bpv:{n}", f"uni:{n}", pn=n, pv=w.places[p.birthplace].province, pbp=p.birthplace,
          pg=p.graduated, puni=p.university)
    d.say(["{pn}曾长期任职于{pwork}。", "{pn}长期在{pwork}工作。"], f"work:{n}", pn=n, pwork=p.workplace)


def _about_place(w: World, pl: Place, d: _Draft) -> None:
    """A paragraph on a place the article mentions: province, river and specialty."""
    _place_facts(pl, d.facts)
    d.paragraph()
    d.say(["{qn}位于{qv}{qdir}部，{qriver}流经境内。", "{qn}地处{qv}{qdir}部，境内的主要河流为{qriver}。"],
          f"pl_province:{pl.name}", f"pl_river:{pl.name}", qn=pl.name, qv=pl.province, qdir=pl.direction,
          qriver=pl.river)
    d.say(["{qn}以盛产{qspec}闻名。", "{qn}素有“{qspec}之乡”之称。"], f"pl_spec:{pl.name}", qn=pl.name,
          qspec=pl.specialty)


def _about_species(w: World, sp: Species, d: _Draft) -> None:
    """A paragraph on a species the article mentions: Latin name, family, type locality."""
    _species_facts(sp, w.places[sp.place].province, d.facts)
    d.paragraph()
    d.say(["{sn}（学名：{slatin}）是{sfam}的一种{sform}。", "{sn}的学名为{slatin}，隶属于{sfam}。"],
          f"sp_latin:{sp.name}", f"sp_family:{sp.name}", sn=sp.name, slatin=sp.latin, sfam=sp.family,
          sform=sp.form)
    d.say(["{sn}的模式产地为{stl}，由{swho}于{sy}年首次描述。", "{sy}年，{swho}根据采自{stl}的标本首次描述了{sn}。"],
          f"sp_type:{sp.name}", f"sp_who:{sp.name}", f"sp_year:{sp.name}", sn=sp.name, stl=sp.place,
          swho=sp.describer, sy=sp.year)


def _station_facts(w: World, st: Station, facts: dict) -> None:
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


def _place_facts(pl: Place, facts: dict) -> None:
    facts.update({
        f"pl_province:{pl.name}": ([f"{pl.name}隶属于哪个省？", f"{pl.name}位于哪个省？"], pl.province),
        f"pl_river:{pl.name}": ([f"流经{pl.name}的主要河流是哪条？", f"{pl.name}境内的主要河流是什么？"], pl.river),
        f"pl_spec:{pl.name}": ([f"{pl.name}最著名的特产是什么？", f"{pl.name}以盛产什么闻名？"], pl.specialty),
    })


def _species_facts(sp: Species, province: str, facts: dict) -> None:
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


def _compound_facts(c: Compound, facts: dict) -> None:
    facts.update({
        f"c_formula:{c.name}": ([f"{c.name}的化学式是什么？", f"{c.name}的分子式是什么？"], c.formula),
        f"c_source:{c.name}": ([f"{c.name}最早是从哪种生物中分离得到的？", f"{c.name}最初是从什么生物中发现的？"],
                               c.source),
        f"c_who:{c.name}": ([f"{c.name}是由谁首次分离得到的？", f"哪位化学家首次分离出了{c.name}？"], c.chemist),
        f"c_year:{c.name}": ([f"{c.name}是在哪一年被首次分离出来的？"], f"{c.year}年"),
    })


def _station_article(w: World, st: Station, d: _Draft) -> None:
    s, line, place = st.name, w.lines[st.line], w.places[st.place]
    eng = w.people[line.engineer]
    i = line.stations.index(s)
    f = d.facts
    _station_facts(w, st, f)
    _person_facts(w, eng, f)
    _place_facts(place, f)
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
    _species_facts(sp, province, f)
    _person_facts(w, who, f)
    f.update({
        "genus": ([f"{s}属于哪个属？"], sp.genus),
        "size": ([f"{s}的{sp.size_label}约为多少？"], sp.size),
        "alt": ([f"{s}分布在海拔多少米的地区？"], f"{sp.alt[0]}至{sp.alt[1]}米"),
        "season": ([f"{s}的花期是几月？" if plant else f"{s}的繁殖期在几月？"], f"{sp.season[0]}至{sp.season[1]}月"),
        "status": ([f"{s}的保护现状是什么？", f"{s}在IUCN红色名录中被列为什么等级？"], sp.status),
        "nick": ([f"{s}在当地俗称什么？"], sp.nickname or ""),
    })
    for c in sp.compounds[:1]:
        _compound_facts(w.compounds[c], f)
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
    _compound_facts(c, f)
    _person_facts(w, chemist, f)
    _species_facts(sp, province, f)
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
    _person_facts(w, p, f)
    _place_facts(place, f)
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
        _species_facts(sp, w.places[sp.place].province, f)
        d.say(["{y}年，{n}首次描述了{sp}（{latin}）。", "{n}于{y}年首次描述了{sp}。",
               "{sp}由{n}于{y}年首次描述。"], f"sp_who:{sp_name}", f"sp_year:{sp_name}",
              sp=sp_name, y=sp.year, latin=sp.latin)
    if p.described:
        f["n_species"] = ([f"{n}一生共描述了多少个新物种？"], f"{len(p.described)}个")
        d.say(["{n}一生共描述了{k}个新物种。", "{pron}一生描述的新物种共有{k}个。"], "n_species",
              k=len(p.described))
    for c_name in p.isolated[:3]:
        c = w.compounds[c_name]
        _compound_facts(c, f)
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
    _place_facts(pl, f)
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
        _station_facts(w, st, f)
        d.say(["{l}经过{P}，在境内设有{st}，该站于{y}年启用。", "{P}境内的{st}位于{l}上，于{y}年开通。"],
              f"st_place:{st.name}", f"st_line:{st.name}", f"st_year:{st.name}", st=st.name, l=st.line, y=st.year)
    for person in [p for p in w.people.values() if p.birthplace == P][:2]:
        _person_facts(w, person, f)
        d.say(["{P}是{ref}的故乡。", "{ref}出生于{P}。"], f"bp:{person.name}", f"born:{person.name}",
              f"died:{person.name}", ref=_person_ref(person))
    for sp in [s for s in w.species.values() if s.place == P][:2]:
        _species_facts(sp, pl.province, f)
        d.say(["{sp}的模式产地位于{P}境内。", "{sp}（{latin}）的模式标本采自{P}。"], f"sp_type:{sp.name}",
              sp=sp.name, latin=sp.latin)
    if not pl.capital:
        _about_place(w, w.places[w.provinces[pl.province].capital], d)


BUILDERS = {"station": _station_article, "species": _species_article, "compound": _compound_article,
            "person": _person_article, "place": _place_article}


# --- noise ----------------------------------------------------------------------------------------

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


def _add_noise(title: str, paragraphs: list[str], answers: list[str], links: list[str],
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


def _link_pattern(w: World) -> re.Pattern:
    """Names an article may wiki-link (provinces, places, lines, people, species), longest first."""
    names = list(w.provinces) + list(w.places) + list(w.lines) + list(w.people) + list(w.species)
    return re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))


# --- public API -----------------------------------------------------------------------------------

def _draft(w: World, kind: str, name: str, rng: random.Random) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(paragraphs, QA pairs, every answer the article states) of one article about `name`."""
    entity = {"station": w.stations, "species": w.species, "compound": w.compounds, "person": w.people,
              "place": w.places}[kind][name]
    d = _Draft(rng, {}, {})
    BUILDERS[kind](w, entity, d)
    paragraphs, qa = d.finish()
    body = "\n".join(paragraphs)
    answers = sorted({a for q, a in d.facts.values() if a and a in body}, key=len, reverse=True)
    return paragraphs, qa, answers


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
    link_names = _link_pattern(w)
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
            paragraphs, pairs, answers = _draft(w, kind, name, rng)
            body = "\n".join(paragraphs)
            if body not in bodies:
                bodies.add(body)
                break
            attempt += 1
        if noise:
            links = sorted(set(link_names.findall(body)) - {name})
            text = _add_noise(name, paragraphs, answers, links, noise_rng)
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


def cli_generate(args) -> int:
    """`tunelab data encyclopedia`: write the articles and QA pairs, print a one-line summary."""
    start = time.perf_counter()
    articles, qa = generate_articles(args.count, args.seed, noise=not args.no_noise)
    write_encyclopedia(args.out, articles, qa)
    kinds = Counter(a["kind"] for a in articles)
    texts = Counter(a["text"] for a in articles)
    duplicates = sum(n - 1 for n in texts.values())
    chars = sum(len(a["text"]) for a in articles)
    print(f"wrote {len(articles)} articles ({', '.join(f'{k} {kinds[k]}' for k in KINDS)}; {chars:,} characters; "
          f"{duplicates} exact duplicates; noise {'off' if args.no_noise else 'on'}) and {len(qa)} QA pairs "
          f"to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


# --- QA pairs for supervised fine-tuning, split as the corpus split the articles ---------------------------

def _question_key(text: str) -> str:
    import unicodedata
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def split_qa_by_corpus(qa_files: list[str | Path], corpus: str | Path, out: str | Path) -> dict:
    """Write OUT/train.jsonl and OUT/val.jsonl: the QA pairs ({question, answer, source_id}: this generator's
    qa.jsonl, or pairs synthesised from the articles) of the corpus's val-split articles, held out, and those of
    its train-split articles for fine-tuning. Returns the counts (also in OUT/summary.json).

    The corpus's document split decides, so the held-out articles are ones the pretrained model never read.
    Their facts recur in other articles, asked in the same words (one question per fact), so a training pair
    that asks a held-out question is dropped too: no held-out question is ever trained on. Exact repeats of a
    pair within a split are kept once; pairs of articles the corpus does not hold (dropped as duplicates or too
    short) are counted, not used. Records are alpaca ({id, instruction: question, output: answer, source_id}), which
    training and the `rougel` task read. Built in a temporary sibling and renamed: an existing OUT is refused."""
    from tunelab.data.corpus.store import read_docs, read_meta
    from tunelab.records import iter_records, require_str, write_json
    out = Path(out)
    if out.exists():
        raise TunelabError("output already exists; choose a new directory", file=out)
    read_meta(corpus)  # says why a folder is not a finished corpus
    split_of = {str(d["id"]): d["split"] for d in read_docs(corpus) if d.get("id") is not None}
    pairs: dict[str, list[dict]] = {"train": [], "val": []}
    seen: dict[str, set[tuple[str, str]]] = {"train": set(), "val": set()}
    counts = Counter()
    unknown = ""  # the first source_id that names no corpus document, for the error below
    for qa_file in qa_files:
        qa_file = Path(qa_file)
        for line, rec in iter_records(qa_file):
            question, answer = require_str(rec, "question", qa_file, line), require_str(rec, "answer", qa_file, line)
            source = require_str(rec, "source_id", qa_file, line)
            split = split_of.get(source)
            if split is None:
                counts["not_in_corpus"] += 1
                unknown = unknown or source
                continue
            key = (_question_key(question), _question_key(answer))
            if key in seen[split]:
                counts["repeated"] += 1
                continue
            seen[split].add(key)
            pairs[split].append({"id": f"{source}-{len(pairs[split])}", "instruction": question, "output": answer,
                                 "source_id": source})
    held_out = {_question_key(p["instruction"]) for p in pairs["val"]}
    train = [p for p in pairs["train"] if _question_key(p["instruction"]) not in held_out]
    summary = {"corpus": str(corpus), "qa_files": [str(f) for f in qa_files], "train": len(train),
               "val": len(pairs["val"]), "train_asking_held_out": len(pairs["train"]) - len(train),
               "train_articles": len({p["source_id"] for p in train}),
               "val_articles": len({p["source_id"] for p in pairs["val"]}),
               "repeated": counts["repeated"], "not_in_corpus": counts["not_in_corpus"]}
    if not train or not pairs["val"]:
        read = len(train) + summary["train_asking_held_out"] + len(pairs["val"]) + sum(counts.values())
        why = (f"; {counts['not_in_corpus']} of the {read} pairs name no document of the corpus (source_id "
               f"{unknown!r}: it must be a document id in {Path(corpus) / 'docs.jsonl'})" if unknown else "")
        raise TunelabError(f"no QA pair of the corpus's {'val' if not pairs['val'] else 'train'} split to use"
                           + why, file=qa_files[0])
    with building_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", pairs["val"])
        write_json(tmp / "summary.json", summary)
    return summary


def cli_split_qa(args) -> int:
    """`tunelab data qa-split`: write the split and print its counts."""
    s = split_qa_by_corpus(args.qa, args.corpus, args.out)
    print(f"{s['val']:,} held-out pairs ({s['val_articles']:,} val-split articles) and {s['train']:,} training pairs "
          f"({s['train_articles']:,} train-split articles; {s['train_asking_held_out']:,} asking a held-out question "
          f"and {s['repeated']:,} repeats left out, {s['not_in_corpus']:,} of articles not in the corpus) "
          f"-> {args.out}")
    return 0
