"""A Hugging Face byte-level BPE tokenizer as the `tokenizer.ggml.*` metadata llama.cpp reads from a GGUF file.

llama.cpp does not run the tokenizer.json's pre-tokenizer: it keeps one hard-coded regex list per
`tokenizer.ggml.pre` name (`llama_vocab::impl::load` and `llm_tokenizer_bpe` in its src/llama-vocab.cpp), so the
export must name the list that splits text as the tokenizer does, or the same text becomes other ids. The
pre-tokenizers tunelab's tokenizers and the families it fine-tunes use, and their names there:

- `smollm`: `\\p{N}` (each digit alone), then GPT-2's regex — exactly `Digits(individual_digits=True)` followed by
  `ByteLevel(use_regex=True)`, `tunelab.model.tokenizer.train_bpe_tokenizer`'s (the tiny base). `smollm` rather
  than `starcoder` (the same regexes) because it also keeps spaces as decoded (`clean_spaces = false`), as
  tunelab's tokenizers do (`clean_up_tokenization_spaces=False`).
- the same `smollm` for `train_corpus_tokenizer` (MiniGPT's, `tunelab tokenizer train`), which isolates CJK
  punctuation and CJK runs before the digits: llama.cpp has no list with those two splits, so this is the
  closest one, not an exact one. GPT-2's regex glues a CJK run or CJK punctuation to the blank before it
  (" 中") and to letters (“中a”); a merge is learned only inside a piece, so no merge spans those seams and the
  ids agree, except after blanks that end in two or more spaces ("a  中"): tunelab's tokenizer keeps the run
  as one piece (a "  " token, once indented text taught it one), llama.cpp splits it " " + " 中". The test
  (tests/test_gguf_export.py) shows both: mixed Chinese/English text agrees, that case does not.
- `gpt-2`: GPT-2's regex alone (`ByteLevel(use_regex=True)`).
- `qwen2` and `llama-bpe`: a `Split` on Qwen2's or Llama-3's regex, then `ByteLevel(use_regex=False)`.

Anything else (SentencePiece / Unigram / WordPiece tokenizers, byte-fallback BPE, a normalizer, a pre-tokenizer
not listed) is refused with one line naming what it is: llama.cpp's own convert_hf_to_gguf.py handles those.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

_GPT2_REGEX_STEP = {"type": "ByteLevel", "use_regex": True, "add_prefix_space": False}
_DIGITS_STEP = {"type": "Digits", "individual_digits": True}
_NO_REGEX_STEP = {"type": "ByteLevel", "use_regex": False, "add_prefix_space": False}
# the Split patterns of the Hugging Face tokenizer.json files of Qwen2 and Llama-3 (llama.cpp keeps them as `qwen2`
# and `llama-bpe`, with (?i:...) spelt out case by case)
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                r"\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF token types (llama.cpp's llama_token_type; gguf.TokenType has the same numbers)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    """What `tokenizer.ggml.*` holds for one tokenizer."""
    pre: str                              # tokenizer.ggml.pre: which regex list llama.cpp splits text with
    exact: bool                           # whether that list splits exactly as the tokenizer does
    tokens: list[str]
    token_types: list[int]
    merges: list[str]                     # "left right", by rank
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, pad, sep, eot -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def _step_matches(step: dict, want: dict) -> bool:
    return all(step.get(k) == v for k, v in want.items())


def _split_regex(step: dict) -> str | None:
    if step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
        return (step.get("pattern") or {}).get("Regex")
    return None


def pre_tokenizer_name(pre: dict | None) -> tuple[str, bool]:
    """(`tokenizer.ggml.pre` name, exact?) for a tokenizer.json `pre_tokenizer`, or a TunelabError."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    if len(steps) == 1 and _step_matches(steps[0], _GPT2_REGEX_STEP):
        return "gpt-2", True
    if len(steps) == 2 and _step_matches(steps[0], _DIGITS_STEP) and _step_matches(steps[1], _GPT2_REGEX_STEP):
        return "smollm", True
    if len(steps) == 2 and _step_matches(steps[1], _NO_REGEX_STEP):
        regex = _split_regex(steps[0])
        if regex == _QWEN2_REGEX:
            return "qwen2", True
        if regex == _LLAMA3_REGEX:
            return "llama-bpe", True
    if (len(steps) == 4 and _split_regex(steps[0]) and _split_regex(steps[1])
            and _step_matches(steps[2], _DIGITS_STEP) and _step_matches(steps[3], _GPT2_REGEX_STEP)):
        from tunelab.data.corpus.encode import CJK_PUNCTUATION, CJK_RUN
        if (_split_regex(steps[0]), _split_regex(steps[1])) == (CJK_PUNCTUATION, CJK_RUN):
            return "smollm", False
    shown = ", ".join(str(s.get("type")) for s in steps) or "none"
    raise TunelabError(f"this tokenizer's pre-tokenizer ({shown}) matches none that llama.cpp knows by name "
                       "(GPT-2's regex with or without single digits, Qwen2's, Llama-3's, tunelab's CJK-aware "
                       "one); llama.cpp's convert_hf_to_gguf.py may know it", field="tokenizer")


def gguf_vocab(tokenizer, n_vocab: int) -> GGUFVocab:
    """The GGUF vocabulary of a byte-level BPE `PreTrainedTokenizerFast` for a model with `n_vocab` embedding
    rows (rows past the tokenizer's ids become unused `[PAD{id}]` tokens, as convert_hf_to_gguf.py names them)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunelabError("GGUF export needs a fast (tokenizer.json) tokenizer; this one is "
                           f"{type(tokenizer).__name__}", field="tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type", "?") + (" with byte fallback (SentencePiece-style)" if model.get("byte_fallback")
                                         else "")
        raise TunelabError(f"GGUF export writes byte-level BPE tokenizers; this one is {kind}: llama.cpp's "
                           "convert_hf_to_gguf.py converts it", field="tokenizer")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TunelabError("GGUF export writes byte-level BPE tokenizers; this one's decoder is "
                           f"{(spec.get('decoder') or {}).get('type')}", field="tokenizer")
    normalizer = spec.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":
        raise TunelabError(f"llama.cpp's BPE has no {normalizer.get('type')} normalizer, which this tokenizer "
                           "applies", field="tokenizer")
    pre, exact = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if not exact:
        log.debug("tokenizer.ggml.pre = %s is the closest llama.cpp pre-tokenizer, not an exact one", pre)

    ids = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for i, t in added.items():
        ids[t["content"]] = i
    size = max(n_vocab, max(ids.values()) + 1)
    tokens: list[str | None] = [None] * size
    for text, i in ids.items():
        tokens[i] = text
    types = [NORMAL] * size
    for i in range(size):
        if tokens[i] is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
        elif i in added:
            types[i] = CONTROL if added[i].get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special: dict[str, int] = {}
    for role in ("bos", "eos", "pad", "sep", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            special[role] = int(token_id)
    from tunelab.decoding.stops import end_of_turn_id
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        special["eot"] = eot
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = special.get("bos") is not None and len(full) > len(plain) and full[0] == special["bos"]
    add_eos = special.get("eos") is not None and len(full) > len(plain) and full[-1] == special["eos"]
    template = getattr(tokenizer, "chat_template", None)
    return GGUFVocab(pre, exact, tokens, types, merges, special, add_bos, add_eos,
                     template if isinstance(template, str) else None)


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """The vocabulary's keys, through gguf's GGUFWriter."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
              "sep": writer.add_sep_token_id, "unk": writer.add_unk_token_id, "eot": writer.add_eot_token_id}
    for role, token_id in vocab.special_ids.items():
        adders[role](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
