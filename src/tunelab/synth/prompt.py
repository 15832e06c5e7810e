"""The request for one article: a template with the article in the **user** message, an optional system message.

A template is plain text (a UTF-8 file) holding `{article}`, and optionally `{min_pairs}` / `{max_pairs}`;
only these three are replaced, so JSON examples with braces need no escaping. The default is Chinese and
asks for what the validator checks: 3–6 key questions answerable from the text, each understandable without
it, answers taken from the article, one JSON array as output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

DEFAULT_TEMPLATE = """请仔细阅读下面的文章，提出{min_pairs}到{max_pairs}个关键问题，并根据文章内容给出答案。

要求：
1. 每个问题的答案都必须能在文章中找到。
2. 每个问题都要能独立理解：不看文章也知道问的是什么。写出具体的人名、地名或事物名称，不要用“这篇文章”“文中”“本文”“上文”或“他”“她”“它”这样的指代。
3. 答案直接取自文章原文，简洁准确。
4. 只输出一个 JSON 数组，不要输出其他内容，格式如下：
[{"question": "问题", "answer": "答案"}, {"question": "问题", "answer": "答案"}]

文章：
{article}"""


@dataclass(frozen=True)
class Prompt:
    template: str = DEFAULT_TEMPLATE
    system: str | None = None
    min_pairs: int = 3
    max_pairs: int = 6

    def messages(self, article: str) -> list[dict[str, str]]:
        user = (self.template.replace("{min_pairs}", str(self.min_pairs))
                .replace("{max_pairs}", str(self.max_pairs)).replace("{article}", article))
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": user}]

    def fingerprint(self) -> str:
        """Short hash of template and system message, recorded in the journal with every run."""
        text = self.template + "\x00" + (self.system or "")
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def read_text_arg(value: str, field: str) -> str:
    """A setting's text: as given, or the content of FILE for `@FILE` (`field`, the setting, goes into errors)."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise TunelabError("file not found", file=path, field=field) from err
    except (UnicodeDecodeError, OSError) as e:
        raise TunelabError(f"cannot read as UTF-8 text: {e}", file=path, field=field) from e


def load_template(path: str | None) -> str:
    """The template file's text (the default when `path` is None); it must hold `{article}`."""
    if path is None:
        return DEFAULT_TEMPLATE
    text = read_text_arg("@" + path, "template")
    if "{article}" not in text:
        raise TunelabError("a template must contain {article} (where the article goes)", file=path,
                           field="template")
    return text
