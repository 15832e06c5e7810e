"""Every reply judged before a pair is kept, each rejection counted by reason.

A reply is rejected as a whole (and asked again) when:
  reply_too_long   over MAX_REPLY_CHARS (not parsed at all)
  no_json          no JSON value found: not the whole reply, not in a ``` fence, not inside prose
  not_pairs        JSON, but not a list of objects (nor an object holding one)
  too_few_pairs / too_many_pairs   the list's length outside [min_pairs, max_pairs]
  no_valid_pair    every pair rejected (unless all only repeat questions asked of other articles: then the
                   article is done with nothing new)
A pair is dropped when:
  malformed        not an object with string question and answer, or text that is not valid Unicode
  empty            question or answer blank
  question_too_long / answer_too_long
  not_grounded     the answer's overlap with the article is below `min_grounding` (below)
  needs_article    the question only makes sense with the article in hand (这篇文章, 文中, 上文, "the passage",
                   a bare pronoun as its subject: 他…？ / "When did he …?")
  duplicate_in_article / duplicate_in_corpus   the same question (normalised: NFKC, case, no punctuation
                   or space) earlier in this reply or accepted for another article

Grounding is character-level: the text is segmented as Rouge-L's `char` segmentation does (every CJK
character a token, other letters/digits as words), and the score is the share of the answer's token bigrams
that occur in the article (its unigrams for a one-token answer). An extractive answer scores 1; a
paraphrase keeps the bigrams it copies; an invented name or number scores low.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from tunelab.metrics.rouge import tokenize
from tunelab.records import lone_surrogate

MAX_REPLY_CHARS = 200_000
MAX_JSON_STARTS = 100      # brackets in prose tried as the start of the JSON value
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)        # reasoning models' preamble (closed or cut)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)
_KEYS = {"question": ("question", "问题", "q"), "answer": ("answer", "答案", "a")}

# Questions that lean on the article: the words that point at it, or a pronoun standing for its subject.
_NEEDS_ARTICLE_ZH = re.compile(r"这篇|本文|文中|上文|下文|原文|该文|全文|文章中|文章里|文段|短文|材料中|根据文章|根据材料"
                               r"|文章(?:提到|介绍|讲|说|描述|指出|所述)")
_PRONOUN_ZH = re.compile(r"^\s*(?:请问)?(?:他们|她们|它们|他|她|它|其(?![他实中])|该|此"   # 这/那 only as demonstratives:
                         r"|[这那](?=[个些座位条种次件篇部本家所项一段里是样名首幅场年时]))")     # 那不勒斯 is a city
_NEEDS_ARTICLE_EN = re.compile(r"\b(?:the|this|that|above|given)\s+(?:passage|article|text|paragraph|excerpt|"
                               r"document|story|author(?!\s+of\b)|reading)\b"
                               r"|\bmentioned above\b|\babove[- ]mentioned\b",
                               re.I)
_PRONOUN_EN = re.compile(
    r"^\s*(?:(?:what|when|where|why|how|who|whom|whose|which)(?:\s+(?:many|much|long|old|year|kind|type))?\s+)?"
    r"(?:(?:is|are|was|were|does|did|do|has|have|had|can|could|will|would|should)\s+)?"
    r"(?:he|she|it|they|him|her|them|his|its|their|this|these|those)\b", re.I)


@dataclass
class Verdict:
    """One reply judged: the pairs kept, the pairs dropped by reason, and the reply's own rejection if any."""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    reply_error: str | None = None

    @property
    def nothing_new(self) -> bool:
        """Every pair was valid but asked already for another article: done, with no new pair."""
        return not self.pairs and bool(self.dropped) and set(self.dropped) == {"duplicate_in_corpus"}


def extract_json(reply: str):
    """The JSON value a reply holds, or None: the whole reply, else the first fenced block that parses,
    else the first `[` or `{` in the prose from which a list of pairs (or an object holding one) decodes,
    else the first JSON value found there."""
    text = _THINK.sub("", reply).strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    for m in _FENCE.finditer(text):
        try:
            return json.loads(m.group(1))
        except (ValueError, RecursionError):
            continue
    decoder = json.JSONDecoder()
    found = None
    for n, m in enumerate(re.finditer(r"[\[{]", text)):
        if n == MAX_JSON_STARTS:                  # "[[[[…" would cost a failed decode at every bracket
            break
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict) and _get(value, "question") is not None:
            continue            # a lone pair object in prose is most likely one item of a list that broke
        if _pair_list(value) is not None:
            return value
        found = value if found is None else found
    return found


def _pair_list(value) -> list | None:
    """The list of candidate pairs in a decoded value: a list of objects, an object holding one (e.g.
    {"qa_pairs": [...]}), or a single pair object; None when the value holds none."""
    if isinstance(value, dict):
        if _get(value, "question") is not None:
            return [value]
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        return lists[0] if len(lists) == 1 else None
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return value
    return None


def _get(item: dict, what: str):
    lowered = {k.lower() if isinstance(k, str) else k: v for k, v in item.items()}
    for key in _KEYS[what]:
        if key in lowered:
            return lowered[key]
    return None


def normalise_question(q: str) -> str:
    """The form duplicates are compared in: NFKC, case-folded, letters and digits only."""
    return "".join(c for c in unicodedata.normalize("NFKC", q).casefold() if c.isalnum())


def needs_article(question: str) -> bool:
    return bool(_NEEDS_ARTICLE_ZH.search(question) or _PRONOUN_ZH.search(question)
                or _NEEDS_ARTICLE_EN.search(question) or _PRONOUN_EN.search(question))


class ArticleGrams:
    """An article's token unigrams and bigrams (char segmentation), built once per article."""

    def __init__(self, article: str):
        tokens = tokenize(unicodedata.normalize("NFKC", article), "char")
        self.unigrams = set(tokens)
        self.bigrams = set(zip(tokens, tokens[1:]))

    def grounding(self, answer: str) -> float:
        tokens = tokenize(unicodedata.normalize("NFKC", answer), "char")
        if not tokens:
            return 0.0
        if len(tokens) == 1:
            return float(tokens[0] in self.unigrams)
        pairs = list(zip(tokens, tokens[1:]))
        return sum(p in self.bigrams for p in pairs) / len(pairs)


@dataclass
class Rules:
    min_pairs: int = 3
    max_pairs: int = 6
    max_question_chars: int = 200
    max_answer_chars: int = 500
    min_grounding: float = 0.5


class Validator:
    """Judges replies against the rules and the questions accepted so far across the corpus.

    `judge` does not remember anything; `accept` records an accepted reply's questions, so the questions of
    a rejected attempt never block a later one.
    """

    def __init__(self, rules: Rules, seen: set[str] | None = None):
        self.rules = rules
        self.seen: set[str] = set(seen or ())

    def judge(self, reply: str | None, article: str) -> Verdict:
        v = Verdict()
        r = self.rules
        if reply is None or not reply.strip():
            v.reply_error = "no_json"
            return v
        if len(reply) > MAX_REPLY_CHARS:
            v.reply_error = "reply_too_long"
            return v
        value = extract_json(reply)
        if value is None:
            v.reply_error = "no_json"
            return v
        items = _pair_list(value)
        if items is None:
            v.reply_error = "not_pairs"
            return v
        if len(items) < r.min_pairs:
            v.reply_error = "too_few_pairs"
            return v
        if len(items) > r.max_pairs:
            v.reply_error = "too_many_pairs"
            return v
        grams = ArticleGrams(article)
        here: set[str] = set()
        for item in items:
            reason = self._pair_reason(item, grams, here)
            if reason:
                v.dropped[reason] += 1
            else:
                v.pairs.append((_get(item, "question").strip(), _get(item, "answer").strip()))
        if not v.pairs and not v.nothing_new:
            v.reply_error = "no_valid_pair"
        return v

    def _pair_reason(self, item: dict, grams: ArticleGrams, here: set[str]) -> str | None:
        r = self.rules
        q, a = _get(item, "question"), _get(item, "answer")
        if isinstance(a, (int, float)) and not isinstance(a, bool):   # "answer": 1987
            a = json.dumps(a)
        if not isinstance(q, str) or not isinstance(a, str) or lone_surrogate(q + a) is not None:
            return "malformed"
        q, a = q.strip(), a.strip()
        if not q or not a:
            return "empty"
        if len(q) > r.max_question_chars:
            return "question_too_long"
        if len(a) > r.max_answer_chars:
            return "answer_too_long"
        if needs_article(q):
            return "needs_article"
        if grams.grounding(a) < r.min_grounding:
            return "not_grounded"
        key = normalise_question(q)
        if key in here:
            return "duplicate_in_article"
        if key in self.seen:
            return "duplicate_in_corpus"
        here.add(key)
        return None

    def accept(self, pairs: list[tuple[str, str]]) -> None:
        self.seen.update(normalise_question(q) for q, _ in pairs)
