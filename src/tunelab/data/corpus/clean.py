"""Cleaning a raw document before it is tokenised: each rule documented, switchable and counted.

Rules run in this order (each one is a field of `CleaningConfig`; the count it adds is in brackets):

1. `nfkc` (off by default) [nfkc_changed: documents changed]
   Unicode NFKC: full-width letters, digits and ASCII punctuation become half-width, ligatures split,
   compatibility characters fold. Changes Chinese punctuation too (（ → (), so it is opt-in.
2. `markup` [markup: pieces removed or replaced]
   Remnants of HTML and wiki markup, exactly these:
   - `<ref …>…</ref>` and `<ref …/>` (footnotes, with their content) and `<!-- comments -->`;
   - `{{…}}` templates with their content, innermost first, so nested templates go too (up to
     `MAX_TEMPLATE_DEPTH` levels);
   - `[[File:…]]`, `[[Image:…]]`, `[[Category:…]]`, `[[文件:…]]`, `[[图像:…]]`, `[[分类:…]]` links, whole;
   - other wiki links keep their shown text: `[[target|text]]` → `text`, `[[target]]` → `target`;
   - `''italic''`, `'''bold'''`, `'''''both'''''` lose their quote runs when paired on one line (two levels
     deep: `'''bold ''italic'' bold'''`);
   - heading lines `== 标题 ==` (1–6 `=`, same number both sides) keep the heading text;
   - HTML tags of known names (`<br>`, `<div class="x">`, `</span>`, a stray `<ref>`, …; see `HTML_TAGS`)
     lose the tag and keep what is between; `a<b and c>d` is not a tag (attributes must look like name=value);
   - HTML entities (`&amp;`, `&nbsp;`, `&#26085;`, `&#x65E5;`) become their character.
   Not handled: wiki tables `{| … |}`, external links `[http://… text]`, templates with single braces
   inside; what they leave stays in the text.
3. `empty_brackets` [empty_brackets: pairs removed]
   An EMPTY pair only: （） () 《》 【】 [] 「」 『』 〈〉 〔〕 ［］ “” ‘’ with nothing but spaces inside, or
   "" '' with nothing at all inside (`"a" "b"` holds `" "`, which is not a pair). Repeated until none
   remain, so （（））goes; a pair with anything inside （北京） (1) 《红楼梦》 and a lone bracket stay.
   Code loses its empty pairs too (`f()` → `f`): switch the rule off for a corpus of source code.
   Runs after markup, which often leaves such pairs behind: "（英语：<ref>…</ref>）".
4. `whitespace` [whitespace_chars: characters removed; a tab or NBSP that becomes a space is not counted]
   \\r\\n, \\r, U+2028/U+2029/U+0085 → \\n; tabs and odd spaces (NBSP, U+3000 ideographic space, U+2000–U+200A,
   U+202F, U+205F, U+1680, \\v, \\f) → ' '; zero-width space U+200B, BOM U+FEFF and other control characters
   (C0 except \\n, DEL, C1) removed; runs of spaces → one space; spaces at both ends of a line removed
   (Chinese paragraph indents "　　" go); 3+ newlines → 2; the document stripped.
5. `split_title` [title_split: documents]
   "标题\\n\\n正文": a first line of at most `TITLE_MAX_CHARS` characters, not ending like a sentence (。！？!?；),
   followed by a blank line, becomes the title metadata and leaves the text. When the reader already
   found a title field, that title is kept and the header line is removed only if it is that title.
6. `min_chars` [too_short: documents dropped] — a document whose cleaned text (without a prepended
   title) is shorter than this is dropped.
7. `prepend_title` (off by default) — the title goes back in front as "标题\\n" (after all cleaning).
8. `dedup` [duplicates: documents dropped, counted by the caller] — an exact duplicate of an earlier
   cleaned text is dropped; `Deduplicator` does it in the main process, in input order.

`clean_document` is pure and deterministic, so it can run in worker processes; counts come back sparse
(a missing key is 0; `COUNT_KEYS` lists them all).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass

from tunelab.data.corpus.read import RawDoc

TITLE_MAX_CHARS = 100
MAX_TEMPLATE_DEPTH = 20
COUNT_KEYS = ("nfkc_changed", "markup", "empty_brackets", "whitespace_chars", "title_split", "too_short")


@dataclass
class CleaningConfig:
    """Which cleaning rules run (see the module docstring for exactly what each one does)."""
    split_title: bool = True
    prepend_title: bool = False
    empty_brackets: bool = True
    markup: bool = True
    whitespace: bool = True
    nfkc: bool = False
    min_chars: int = 10
    dedup: bool = True

    def as_meta(self) -> dict:
        """The settings, as recorded in a corpus's meta.json."""
        return dataclasses.asdict(self)


@dataclass
class CleanDoc:
    """A cleaned document; `raw_chars` is the length before cleaning (for the % of characters kept)."""
    text: str
    title: str | None
    id: str | None
    file: str
    line: int
    raw_chars: int


# --- markup -------------------------------------------------------------------------------------------
HTML_TAGS = ("a abbr b bdi big blockquote br caption center cite code dd del div dl dt em font gallery h1 h2 "
             "h3 h4 h5 h6 hr i img ins kbd li math nowiki ol p poem pre q rb references rp rt ruby s samp "
             "ref section small span strike strong sub sup table tbody td templatestyles th thead tr tt u ul "
             "var wbr").split()
# Every pattern is linear on any input: a body never reaches past the next opening of its own kind (an
# unclosed "<ref>" scans to the next "<ref", not to the end of the text, once per "<ref").
_REF = re.compile(r"<ref\b[^<>]*/>|<ref\b[^<>]*>(?:[^<]|<(?!/?ref\b))*</ref\s*>|<!--(?:(?!<!--|-->).)*-->",
                  re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|文件|檔案|图像|圖像|分类|分類)\s*:[^\[\]]*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)*([^\[\]|]*)\]\]")
_EMPHASIS = re.compile(r"('{2,5})(?!')((?:[^'\n]|'(?!'))+)\1(?!')")
_HEADING = re.compile(r"^(={1,6})[ \t]*([^=\n](?:[^\n]*?[^=\n])?)[ \t]*\1[ \t\r]*$", re.M)
_ATTR = r"""\s+[\w:-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>]+)"""
_TAG = re.compile(rf"</?(?:{'|'.join(HTML_TAGS)})(?:{_ATTR})*\s*/?>", re.I)
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")


def _strip_markup(text: str) -> tuple[str, int]:
    n = 0
    if "<" in text:
        text, k = _REF.subn("", text)
        n += k
    if "{{" in text:
        for _ in range(MAX_TEMPLATE_DEPTH):
            text, k = _TEMPLATE.subn("", text)
            if not k:
                break
            n += k
    if "[[" in text:
        text, k = _FILE_LINK.subn("", text)
        n += k
        text, k = _LINK.subn(r"\1", text)
        n += k
    for _ in range(2):
        if "''" not in text:
            break
        text, k = _EMPHASIS.subn(r"\2", text)
        n += k
    if "=" in text:
        text, k = _HEADING.subn(r"\2", text)
        n += k
    if "<" in text:
        text, k = _TAG.subn("", text)
        n += k
    if "&" in text:
        changed = 0

        def unescape(m: re.Match) -> str:
            nonlocal changed
            char = html.unescape(m.group())
            changed += char != m.group()  # "&bogus;" is no entity: left as it is, not counted
            return char
        text = _ENTITY.sub(unescape, text)
        n += changed
    return text, n


# --- empty brackets -----------------------------------------------------------------------------------
_PAIRS = ("（）", "()", "《》", "【】", "[]", "「」", "『』", "〈〉", "〔〕", "［］", "“”", "‘’")
_SPACE_CHARS = " \t\u00a0\u3000"  # what may sit inside a pair that is still empty
_EMPTY_PAIR = re.compile("|".join(f"{re.escape(p[0])}[{_SPACE_CHARS}]*{re.escape(p[1])}" for p in _PAIRS)
                         + "|\"\"|''")
_BRACKET_TOKEN = re.compile(f"[{re.escape(''.join(_PAIRS))}\"']|[{_SPACE_CHARS}]+"
                            f"|[^{re.escape(''.join(_PAIRS))}\"'{_SPACE_CHARS}]+")
_OPENER_OF = {p[1]: p[0] for p in _PAIRS} | {'"': '"', "'": "'"}


def _strip_empty_brackets(text: str) -> tuple[str, int]:
    text, n = _EMPTY_PAIR.subn("", text)
    if n and _EMPTY_PAIR.search(text):  # nested, like （（）） which leaves （）: finish in one linear pass
        text, k = _strip_nested_pairs(text)
        n += k
    return text, n


def _strip_nested_pairs(text: str) -> tuple[str, int]:
    """What repeating `_EMPTY_PAIR` until nothing matches gives, in one pass over bracket/space/other tokens.

    Repeating the regex costs a pass per nesting level: quadratic on （（（…））） thousands deep.
    """
    out: list[str] = []
    n = 0
    for token in _BRACKET_TOKEN.findall(text):
        opener = _OPENER_OF.get(token)
        if opener is not None and out:
            if out[-1] == opener:  # "（" "）" or '"' '"'
                out.pop()
                n += 1
                continue
            if opener not in "\"'" and len(out) > 1 and out[-2] == opener and out[-1][0] in _SPACE_CHARS:
                del out[-2:]  # "（" spaces "）"
                n += 1
                continue
        if out and token[0] in _SPACE_CHARS and out[-1][0] in _SPACE_CHARS:
            out[-1] += token  # spaces that meet after a removal are one run
        else:
            out.append(token)
    return "".join(out), n


# --- whitespace ---------------------------------------------------------------------------------------
_NEWLINE = re.compile("\r\n?|[\u2028\u2029\x85]")
_ODD_SPACE = re.compile("[\t\v\f\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\ufeff]")  # after _NEWLINE took \x85
_ANY_ODD = re.compile("[\r\u2028\u2029\t\v\f\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000\ufeff\x00-\x08"
                      "\x0e-\x1f\x7f-\x9f]")  # one scan decides whether the three rules above have work
_SPACE_RUN = re.compile(" {2,}")
_LINE_EDGE = re.compile(" ?\n ?")
_NEWLINE_RUN = re.compile("\n{3,}")


def _normalise_whitespace(text: str) -> tuple[str, int]:
    before = len(text)
    if _ANY_ODD.search(text):
        text = _NEWLINE.sub("\n", text)
        text = _ODD_SPACE.sub(" ", text)
        text = _INVISIBLE.sub("", text)
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _LINE_EDGE.sub("\n", text)
    if "\n\n\n" in text:
        text = _NEWLINE_RUN.sub("\n\n", text)
    text = text.strip()
    return text, before - len(text)


# --- title --------------------------------------------------------------------------------------------
_TITLE = re.compile(rf"[ \t]*([^\n]{{1,{TITLE_MAX_CHARS}}}?)[ \t\r]*\n(?:[ \t\r]*\n)+")
_SENTENCE_END = tuple("。！？!?；;")


def _split_title(text: str, known: str | None) -> tuple[str, str | None, bool]:
    m = _TITLE.match(text)
    if not m or not m.group(1).strip() or m.group(1).endswith(_SENTENCE_END):
        return text, known, False
    title = m.group(1).strip()
    if known is not None and title != known.strip():
        return text, known, False
    return text[m.end():], known if known is not None else title, True


def clean_document(doc: RawDoc, cfg: CleaningConfig) -> tuple[CleanDoc | None, dict[str, int]]:
    """Apply the rules of `cfg` to one document: (cleaned doc, or None if dropped; sparse counts)."""
    text, title = doc.text, doc.title
    counts: dict[str, int] = {}
    if cfg.nfkc and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
        counts["nfkc_changed"] = 1
    if cfg.markup:
        text, n = _strip_markup(text)
        if n:
            counts["markup"] = n
    if cfg.empty_brackets:
        text, n = _strip_empty_brackets(text)
        if n:
            counts["empty_brackets"] = n
    if cfg.whitespace:
        text, n = _normalise_whitespace(text)
        if n:
            counts["whitespace_chars"] = n
    if cfg.split_title:
        text, title, split = _split_title(text, title)
        if split:
            counts["title_split"] = 1
    if len(text) < cfg.min_chars:
        counts["too_short"] = 1
        return None, counts
    if cfg.prepend_title and title:
        text = f"{title}\n{text}"
    return CleanDoc(text, title, doc.id, doc.file, doc.line, len(doc.text)), counts


def text_digest(text: str) -> bytes:
    """The 16-byte blake2b digest `Deduplicator` compares (computed where the text is, a worker process)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Deduplicator:
    """Exact-duplicate detection over a whole run: one 16-byte blake2b digest per distinct text kept.

    Runs in the main process in input order, so "the first occurrence wins" is deterministic. Memory is
    about 100 bytes per distinct document (1 M documents ≈ 100 MB).
    """

    def __init__(self) -> None:
        self.digests: set[bytes] = set()

    def seen(self, digest: bytes) -> bool:
        """True if a text of this `text_digest` was seen before; otherwise remember it and return False."""
        if digest in self.digests:
            return True
        self.digests.add(digest)
        return False
