"""The encyclopedia's invented world: every entity and fact, built once from a seed, before any article is written.

The CPU pretraining demo needs a corpus a tiny GPT can learn *facts* from in minutes, with nothing
downloaded. So the articles describe one shared, seeded world (`generate_world`): provinces, rivers,
about 120 places, 100 people, 13 railway lines with their stations, about 110 species and 70 compounds.
Every fact is fixed here and only the wording varies, so it is stated consistently wherever it
appears: a station's line, city and opening year in the station's article, in its city's article and in
its line engineer's article; a person's birth year and birthplace in their own article, in their home
town's and in the species or compounds they described or isolated (described in a year of their working
life, from a species already described, on a line they built...). Names never repeat, so every question has
one answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tunelab.data.synthetic.encyclopedia_words import (ACTIVITY, APPEARANCE, ATOMIC_MASS, COLORS, COMPOUND_CLASSES,
                                                      DIRECTIONS, DYNASTY, GIVEN_FEMALE, GIVEN_MALE, HABITAT, LOOKS,
                                                      NICKNAMES, OCCUPATIONS, PLACE_HEAD, PLACE_TAIL, PLANT_GROUPS,
                                                      PROVINCE_TAIL, RIVER_TAIL, SIZE, SOLUBILITY, SPECIALTY,
                                                      SPECIES_BASES, STATUS, SURNAME, WORK_SUFFIX, WORK_WORDS)


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
    """The invented world for `seed`: the same seed always gives the same entities and facts.

    Every step draws from the one seeded stream, in this order: a step's draws follow from those before it,
    so reordering the steps (or the draws inside one) would change every world already generated.
    """
    rng = random.Random(f"encyclopedia-world:{seed}")
    taken: set[str] = set()
    provinces = _provinces(rng, taken)
    places = _places(rng, provinces, taken)
    people = _people(rng, provinces, places, taken)
    by_job = {job: [p for p in people.values() if p.occupation == job] for job in OCCUPATIONS}
    _add_works(rng, by_job["writer"], places, taken)
    lines, stations = _railways(rng, by_job["engineer"], provinces, places, taken)
    species = _species(rng, {"plant": by_job["botanist"], "animal": by_job["zoologist"]}, places, taken)
    compounds = _compounds(rng, by_job["chemist"], species, places, taken)
    return World(provinces, places, people, lines, stations, species, compounds)


def _provinces(rng: random.Random, taken: set[str]) -> dict[str, Province]:
    """Ten provinces, then one or two rivers for each."""
    heads = list(PLACE_HEAD)
    provinces: dict[str, Province] = {}
    for _ in range(10):
        name = _unique(rng, lambda r: r.choice(heads) + r.choice(PROVINCE_TAIL), taken) + "省"
        provinces[name] = Province(name)
    for prov in provinces.values():
        for _ in range(rng.randint(1, 2)):
            river = _unique(rng, lambda r: r.choice(heads) + r.choice(RIVER_TAIL), taken)
            river += rng.choice("江河")
            prov.rivers.append(river)
    return provinces


def _places(rng: random.Random, provinces: dict[str, Province], taken: set[str]) -> dict[str, Place]:
    """120 places dealt round the provinces in turn; a province's first place is its capital."""
    heads, tails = list(PLACE_HEAD), list(PLACE_TAIL)
    prov_names = list(provinces)
    places: dict[str, Place] = {}
    for i in range(120):
        prov = provinces[prov_names[i % len(prov_names)]]
        base = _unique(rng, lambda r: r.choice(heads) + r.choice(tails), taken)
        place = _place(rng, prov, base)
        places[place.name] = place
    return places


def _place(rng: random.Random, prov: Province, base: str) -> Place:
    """The place named `base` in `prov`: its capital when it has none yet (a city, larger, in the centre)."""
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
    return Place(
        name, base, _pinyin(base, PLACE_HEAD | PLACE_TAIL), prov.name, city, capital,
        direction="中" if capital else rng.choice(DIRECTIONS), population=population, area=area,
        altitude=rng.randint(50, 3200), river=rng.choice(prov.rivers), dynasty=rng.choice(DYNASTY),
        city_year=rng.randint(1949, 1996) if city else None, specialty=rng.choice(SPECIALTY),
        towns=(rng.randint(3, 15), rng.randint(0, 12)), temperature=f"{rng.uniform(6, 21):.1f}",
        to_capital=0 if capital else rng.randint(30, 400))


def _person_name(r: random.Random, given: dict[str, str], place_bases: list[str]) -> str:
    """A surname and one or two given characters; never containing a place's name, so no question is ambiguous."""
    while True:
        name = r.choice(list(SURNAME)) + "".join(r.choice(list(given)) for _ in range(r.choice((1, 2, 2))))
        if not any(b in name for b in place_bases):
            return name


def _people(rng: random.Random, provinces: dict[str, Province], places: dict[str, Place],
            taken: set[str]) -> dict[str, Person]:
    """The people of every occupation (`OCCUPATIONS` says how many), born in a place, taught at a university."""
    prov_names = list(provinces)
    place_names = list(places)
    place_bases = [p.base for p in places.values()]
    universities = [p[:-1] + "大学" for p in provinces] + [p[:-1] + "师范大学" for p in prov_names[:4]]
    workplaces = universities + [p + "科学院" for p in prov_names]
    people: dict[str, Person] = {}
    for occupation, (_, n) in OCCUPATIONS.items():
        for _ in range(n):
            female = rng.random() < 0.3
            given = GIVEN_FEMALE if female else GIVEN_MALE
            name = _unique(rng, lambda r: _person_name(r, given, place_bases), taken)
            en = f"{SURNAME[name[0]].capitalize()} {_pinyin(name[1:], given)}"
            born = rng.randint(1860, 1950)
            died = rng.randint(born + 55, min(born + 95, 2023))
            graduated = born + rng.randint(21, 24)
            academician = (rng.randint(born + 45, min(died, 2019))
                           if occupation != "writer" and rng.random() < 0.4 else None)
            workplace = rng.choice(workplaces)
            people[name] = Person(name, en, "她" if female else "他", occupation, born, rng.randint(1, 12),
                                  died, rng.randint(1, 12), rng.choice(place_names), rng.choice(universities),
                                  graduated, workplace, academician)
    return people


def _add_works(rng: random.Random, writers: list[Person], places: dict[str, Place], taken: set[str]) -> None:
    """Two or three titled works for each writer, published in their adult life."""
    place_bases = [p.base for p in places.values()]
    for writer in writers:
        years = sorted(rng.sample(range(writer.born + 20, writer.died), k=rng.randint(2, 3)))
        for year in years:
            title = _unique(rng, lambda r: "《" + r.choice(WORK_WORDS + place_bases) + r.choice(WORK_SUFFIX) + "》",
                            taken)
            writer.works.append((title, year))


def _railways(rng: random.Random, engineers: list[Person], provinces: dict[str, Province],
              places: dict[str, Place], taken: set[str]) -> tuple[dict[str, Line], dict[str, Station]]:
    """13 railway lines, each from one province into another, and their stations (at most five a place)."""
    lines: dict[str, Line] = {}
    stations: dict[str, Station] = {}
    station_dirs: dict[str, list[str]] = {}
    codes: set[str] = set()
    prov_names, place_names = list(provinces), list(places)
    for i in range(13):
        engineer = engineers[i % len(engineers)]
        route_provs = rng.sample(prov_names, k=2)
        route = [p for p in place_names if places[p].province == route_provs[0]]
        route = rng.sample(route, k=min(len(route), rng.randint(4, 7)))
        other = [p for p in place_names if places[p].province == route_provs[1]]
        route += rng.sample(other, k=min(len(other), rng.randint(1, 4)))
        line = _line(rng, engineer, places[route[0]].base, places[route[-1]].base, taken)
        km = 0
        for place_name in route:
            # the directions are drawn at every visit, used at the first: the stream's order depends on it
            dirs = station_dirs.setdefault(place_name, [""] + rng.sample(["东", "西", "南", "北"], k=4))
            if not dirs:  # five stations in one place are enough
                continue
            station = _station(rng, places[place_name], dirs.pop(0), line, km, codes)
            stations[station.name] = station
            line.stations.append(station.name)
            km += rng.randint(18, 65)
        line.length = stations[line.stations[-1]].km
        lines[line.name] = line
    return lines, stations


def _line(rng: random.Random, engineer: Person, a: str, b: str, taken: set[str]) -> Line:
    """The line from place base `a` to `b`, named by a character of each; opened in `engineer`'s working life."""
    name = next((x + y + "铁路" for x in a for y in b if x + y not in taken and x + y + "铁路" not in taken),
                a + b + "铁路")
    taken.add(name)
    lo = max(engineer.born + 30, 1905)
    year = rng.randint(lo, max(lo, min(engineer.died - 1, 2015)))
    engineer.lines.append(name)
    return Line(name, year, engineer.name)


def _station(rng: random.Random, place: Place, direction: str, line: Line, km: int, codes: set[str]) -> Station:
    """`place`'s station on `line` (its `direction` one, "" for the main one) at `km` along it."""
    st_name = place.base + direction + "站"
    en_dir = {"": "", "东": " East", "西": " West", "南": " South", "北": " North"}[direction]
    st_year = line.year if rng.random() < 0.7 else min(2020, line.year + rng.randint(1, 25))
    grade = ("一等站" if place.capital else rng.choice(["二等站", "三等站"]) if place.city
             else rng.choice(["三等站", "四等站"]))
    platforms = {"一等站": 5, "二等站": 3, "三等站": 2, "四等站": 1}[grade] + rng.randint(0, 2)
    initials = (PLACE_HEAD[place.base[0]][0] + PLACE_TAIL[place.base[1]][0]).upper()
    code = _unique(rng, lambda r: initials + r.choice("ABCDEFGHJKLMNPQRSTWXYZ"), codes)
    rebuilt = rng.randint(st_year + 10, 2020) if st_year < 2005 and rng.random() < 0.5 else None
    return Station(st_name, f"{place.en}{en_dir} Railway Station", place.name, line.name,
                   st_year, rng.randint(1, 12), grade, platforms,
                   platforms + rng.randint(1, 4), km, code, rebuilt,
                   platforms * rng.randint(3, 9), rng.randrange(400, 3000 * platforms, 50))


def _species(rng: random.Random, describers: dict[str, list[Person]], places: dict[str, Place],
             taken: set[str]) -> dict[str, Species]:
    """110 species named after their type locality, described in turn by the botanists or the zoologists."""
    species: dict[str, Species] = {}
    counters = {"plant": 0, "animal": 0}
    place_names = list(places)
    for _ in range(110):
        while True:
            place = places[rng.choice(place_names)]
            entry = rng.choice(SPECIES_BASES)
            name = place.base + entry[0]
            if name not in taken:
                taken.add(name)
                break
        realm = "plant" if entry[5] in PLANT_GROUPS else "animal"
        person = describers[realm][counters[realm] % len(describers[realm])]
        counters[realm] += 1
        species[name] = _a_species(rng, name, entry, realm, place, person, places)
    return species


def _a_species(rng: random.Random, name: str, entry: tuple, realm: str, place: Place, person: Person,
               places: dict[str, Place]) -> Species:
    """Species `name` of `SPECIES_BASES` `entry`, from `place`, described by `person` in their working life."""
    _, genus_zh, genus, family, neuter, group, form = entry
    lo = max(person.born + 25, 1885)
    year = rng.randint(lo, max(lo, min(person.died, 2015)))
    person.described.append(name)
    label, low, high, unit, decimals = SIZE[group]
    size = f"{rng.uniform(low, high):.{decimals}f}{unit}"
    neighbours = [p for p in places if places[p].province == place.province and p != place.name]
    alt_low = rng.randrange(200, 2400, 100)
    start = rng.randint(2, 7)
    looks = LOOKS["tree" if group == "tree" else "plant" if realm == "plant" else group]
    nick = NICKNAMES["plant" if group in ("shrub", "herb") else group]
    return Species(
        name, f"{genus} {place.en.lower()}{'ense' if neuter else 'ensis'}", genus_zh, family, group, form,
        place.name, [place.name] + rng.sample(neighbours, k=min(len(neighbours), rng.randint(0, 2))),
        person.name, year, size, label, (alt_low, alt_low + rng.randrange(400, 1600, 100)),
        rng.choice(HABITAT[group]), rng.choice(looks).format(c=rng.choice(COLORS)),
        (start, start + rng.randint(1, 3)), rng.choice(STATUS)[0],
        rng.choice(nick) if rng.random() < 0.6 else None)


def _compounds(rng: random.Random, chemists: list[Person], species: dict[str, Species], places: dict[str, Place],
               taken: set[str]) -> dict[str, Compound]:
    """70 compounds isolated from the species, each by the chemist with fewest so far who was working after
    the species was described."""
    compounds: dict[str, Compound] = {}
    species_names = list(species)
    english: set[str] = set()
    for _ in range(70):
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
    return compounds
