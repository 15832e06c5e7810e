"""Train byte-level BPE tokenizers for from-scratch models and save them as Hugging Face tokenizers.

Byte-level BPE covers any UTF-8 text (Chinese included) with no unknown tokens and decodes every token
sequence back to its exact bytes, which is what lets a prepared corpus prove no character was lost.
Digits are split one by one so numbers tokenise uniformly, which arithmetic needs.

`train_bpe_tokenizer` is the small one the tiny base model and the tests use. `train_corpus_tokenizer`
(`tunelab tokenizer train`) is for a pretraining corpus: CJK-aware pre-tokenisation (Chinese/Japanese/
Korean punctuation stands alone, a run of CJK characters is never merged with Latin letters or digits, so
merges learn Chinese words and English words separately) and a third special token, the answer separator
SEP reserved for supervised fine-tuning.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from tunelab.data.corpus.encode import CJK_PUNCTUATION, CJK_RUN
from tunelab.errors import TunelabError
from tunelab.recipe import MAX_VOCAB, MIN_VOCAB

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SEP = "<|sep|>"
HELD_OUT_CHARS = 2_000_000   # held-out text kept in memory to measure characters per token


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, chat_template: str | None = None):
    """Return a `PreTrainedTokenizerFast` trained on `texts` (EOS and PAD special tokens, digits split)."""
    from tokenizers import pre_tokenizers
    tok = _train([pre_tokenizers.Digits(individual_digits=True)], texts, vocab_size, [EOS, PAD])
    hf = _wrap(tok)
    if chat_template:
        hf.chat_template = chat_template
    return hf


def train_corpus_tokenizer(texts: Iterable[str], vocab_size: int):
    """Return a CJK-aware byte-level BPE `PreTrainedTokenizerFast` (eos EOT, pad PAD, sep SEP) trained on texts."""
    from tokenizers import Regex, pre_tokenizers
    steps = [pre_tokenizers.Split(Regex(CJK_PUNCTUATION), "isolated"),
             pre_tokenizers.Split(Regex(CJK_RUN), "isolated"),
             pre_tokenizers.Digits(individual_digits=True)]
    return _wrap(_train(steps, texts, vocab_size, [EOS, PAD, SEP]), sep_token=SEP)


def check_vocab_size(vocab_size: int) -> None:
    """A vocabulary size the BPE trainer can build (checked before any text is read)."""
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise TunelabError(f"vocab_size must be between {MIN_VOCAB} (256 bytes + special tokens) and "
                           f"{MAX_VOCAB:,}, got {vocab_size:,}")


def _train(steps: list, texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _wrap(tok, **special):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None,
                                   clean_up_tokenization_spaces=False, **special)


def is_mostly_cjk(text: str) -> bool:
    """True when CJK characters outnumber Latin letters (how held-out documents are split into zh and en)."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch >= "\U00020000")
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return cjk > latin


def chars_per_token(tokenizer, texts: list[str]) -> dict[str, dict[str, float]]:
    """Characters per token of `texts` (all, and zh/en separately when both occur): higher packs more text."""
    groups: dict[str, list[str]] = {"all": texts, "zh": [], "en": []}
    for t in texts:
        groups["zh" if is_mostly_cjk(t) else "en"].append(t)
    if not groups["zh"] or not groups["en"]:
        del groups["zh"], groups["en"]
    out = {}
    for name, group in groups.items():
        if not group:
            continue
        tokens = sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(group, add_special_tokens=False))
        chars = sum(len(t) for t in group)
        out[name] = {"documents": len(group), "chars": chars, "tokens": tokens,
                     "chars_per_token": round(chars / tokens, 3) if tokens else 0.0}
    return out


def train_tokenizer_dir(inputs: list, vocab_size: int, out: str | Path, settings=None, workers: int | None = None,
                        progress: bool = True) -> dict:
    """`tunelab tokenizer train`: stream the cleaned train documents of `inputs` into a CJK-aware BPE, measure
    characters per token on the val ones, and write the tokenizer directory `out` atomically (never over an
    existing one). Returns the report saved beside it as training.json."""
    from tqdm.auto import tqdm

    from tunelab.data.corpus.chunks import ReadSettings, iter_cleaned
    from tunelab.data.corpus.read import BadLines, input_bytes, list_inputs
    out = Path(out)
    if out.exists():
        raise TunelabError("output directory exists; choose a new one", file=out)
    check_vocab_size(vocab_size)
    settings = settings or ReadSettings()
    paths = list_inputs(inputs)
    bad = BadLines()
    counts: dict[str, int] = {}
    held_out: list[str] = []
    seen = {"train": 0, "val": 0}

    def train_texts():
        held_chars = 0
        with tqdm(total=sum(input_bytes(p) for p in paths), unit="B", unit_scale=True, desc="tokenizer",
                  file=sys.stderr, disable=not progress) as bar:
            for kept in iter_cleaned(paths, settings, workers=workers or os.cpu_count() or 1, bad=bad,
                                     counts=counts, progress=bar):
                seen[kept.split] += 1
                if kept.split == "train":
                    yield kept.doc.text
                elif held_chars < HELD_OUT_CHARS:
                    held_out.append(kept.doc.text)
                    held_chars += len(kept.doc.text)

    tokenizer = train_corpus_tokenizer(train_texts(), vocab_size)
    if not seen["train"]:
        raise TunelabError("no training document left after cleaning")
    report = {"vocab_size": len(tokenizer), "vocab_size_asked": vocab_size, "documents": seen, "bad_lines": bad.count,
              "duplicates_removed": counts.get("duplicates", 0), "held_out": chars_per_token(tokenizer, held_out),
              "special_tokens": {"eos": EOS, "pad": PAD, "sep": SEP}, "cleaning": settings.cleaning.as_meta(),
              "val_fraction": settings.val_fraction, "seed": settings.seed,
              "inputs": [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths]}
    from tunelab.records import building_dir
    with building_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def tokenizer_summary(report: dict) -> list[str]:
    seen = report["documents"]
    lines = [f"trained on {seen['train']} documents ({seen['val']} held out, {report['duplicates_removed']} "
             f"duplicates removed, {report['bad_lines']} bad lines); vocabulary {report['vocab_size']}"]
    asked = report.get("vocab_size_asked")
    if asked and report["vocab_size"] < asked:
        lines[0] += (f", fewer than the {asked} asked: every pre-token of the training text is already one token "
                     "(more text, or more varied text, gives more merges)")
    measured = report["held_out"]
    if measured:
        lines.append("characters per token on held-out documents: " + ", ".join(
            f"{name} {m['chars_per_token']} ({m['documents']} docs)" for name, m in measured.items()))
    else:
        lines.append("no held-out documents to measure characters per token on (raise --val-fraction)")
    return lines
