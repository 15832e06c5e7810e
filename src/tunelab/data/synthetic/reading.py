"""A templated extract-the-answer reading task in Chinese and English.

It stands in for SQuAD-style reading comprehension as the tiny base model's "original ability": every
answer is a span of the context, so extractive F1/EM apply unchanged. Records are
`{"id", "context", "question", "answer", "lang"}`; `formats.read_examples(..., "reading")` turns them into
instructions.
"""

from __future__ import annotations

import random

ZH = {
    "name": ["小明", "小红", "李华", "王芳", "张伟", "刘洋", "陈静", "赵磊", "孙丽", "周杰", "吴敏", "郑浩"],
    "city": ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津", "苏州"],
    "job": ["医生", "老师", "工程师", "厨师", "律师", "画家", "司机", "护士", "记者", "农民"],
    "pet": ["猫", "狗", "兔子", "鹦鹉", "金鱼", "乌龟", "仓鼠"],
    "hobby": ["游泳", "画画", "下棋", "唱歌", "跑步", "读书", "钓鱼", "跳舞", "爬山"],
    "color": ["红色", "蓝色", "绿色", "黄色", "白色", "黑色", "紫色"],
}
EN = {
    "name": ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Kate", "Leo"],
    "city": ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Boston", "Sydney", "Toronto", "Dublin",
             "Oslo", "Lisbon"],
    "job": ["doctor", "teacher", "engineer", "chef", "lawyer", "painter", "driver", "nurse", "writer", "farmer"],
    "pet": ["cat", "dog", "rabbit", "parrot", "goldfish", "turtle", "hamster"],
    "hobby": ["swimming", "painting", "chess", "singing", "running", "reading", "fishing", "dancing", "hiking"],
    "color": ["red", "blue", "green", "yellow", "white", "black", "purple"],
}

# fact -> (sentence, question); {n} is the person, {v} the value (the answer span).
ZH_FACTS = {
    "city": ("{n}住在{v}。", "{n}住在哪里？"),
    "age": ("{n}今年{v}岁。", "{n}今年多少岁？"),
    "job": ("{n}的职业是{v}。", "{n}的职业是什么？"),
    "pet": ("{n}养了一只{v}。", "{n}养了什么宠物？"),
    "hobby": ("{n}最喜欢{v}。", "{n}最喜欢做什么？"),
    "color": ("{n}最喜欢的颜色是{v}。", "{n}最喜欢什么颜色？"),
    "books": ("{n}有{v}本书。", "{n}有多少本书？"),
}
EN_FACTS = {
    "city": ("{n} lives in {v}.", "Where does {n} live?"),
    "age": ("{n} is {v} years old.", "How old is {n}?"),
    "job": ("{n} works as a {v}.", "What is {n}'s job?"),
    "pet": ("{n} has a pet {v}.", "What pet does {n} have?"),
    "hobby": ("{n}'s favourite hobby is {v}.", "What is {n}'s favourite hobby?"),
    "color": ("{n}'s favourite colour is {v}.", "What is {n}'s favourite colour?"),
    "books": ("{n} owns {v} books.", "How many books does {n} own?"),
}


def _value(fact: str, words: dict, rng: random.Random) -> str:
    if fact == "age":
        return str(rng.randint(5, 90))
    if fact == "books":
        return str(rng.randint(2, 999))
    return rng.choice(words[fact])


def _one(rng: random.Random, lang: str, n_facts: int) -> tuple[str, str, str]:
    words, facts = (ZH, ZH_FACTS) if lang == "zh" else (EN, EN_FACTS)
    people = rng.sample(words["name"], k=2)
    # Facts about two people, possibly of the same type, so the question's name must be read.
    pairs = rng.sample([(p, f) for p in people for f in facts], k=n_facts)
    sentences, qa = [], []
    for person, fact in pairs:
        value = _value(fact, words, rng)
        sentence, question = facts[fact]
        sentences.append(sentence.format(n=person, v=value))
        qa.append((question.format(n=person), value))
    sep = "" if lang == "zh" else " "
    question, answer = rng.choice(qa)
    return sep.join(sentences), question, answer


def generate(count: int, seed: int = 0, lang: str = "mix", min_facts: int = 2, max_facts: int = 4) -> list[dict]:
    """Generate `count` reading items; deterministic for a seed. lang is 'zh', 'en' or 'mix'."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        item_lang = rng.choice(["zh", "en"]) if lang == "mix" else lang
        context, question, answer = _one(rng, item_lang, rng.randint(min_facts, max_facts))
        out.append({"id": f"reading-{i:06d}", "context": context, "question": question, "answer": answer,
                    "lang": item_lang})
    return out
