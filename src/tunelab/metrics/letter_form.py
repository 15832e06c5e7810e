"""The parts of a letter, note or email in an answer, English or Chinese: what "write a thank-you note" / "写一封感谢信"
is checked by (`tunelab.metrics.form_checks`), since a tuned chat model can lose the form and loop on one sentence
where its base wrote a letter.

A letter has, on lines of their own:

* a greeting among its first three non-empty lines (a title or a "Subject:" line may come first): "Dear Anna,",
  "Hi team!", "Hello", "To whom it may concern", or "亲爱的…", "尊敬的…", "敬爱的…", "致…", "…您好！", or a short
  Chinese salutation line ending in a colon ("王老师：");
* a body after the greeting of at least `BODY_WORDS` words (a Han character is a word);
* a sign-off after the body: the first short line opened by a closing phrase ("Best,", "Sincerely", "Thanks
  again!", "Regards", "Yours…", "Love,", "Your niece", "此致", "敬礼！", "祝好", "祝你…", "谢谢", "你的朋友…"), else a
  name line ending the letter ("Anna", "- Sam", "[Your Name]", "小明", "学生 李华", "小明敬上"), a date after it allowed,
  that no earlier line starts with (a line cut off in a loop is no name).

What follows the sign-off (a P.S., or the letter's last line said over and over) is not this check's concern: the
forms task's repetition check judges loops. Markdown (`**`, `#`) is ignored. A letter run onto one line has no lines
to find these on and is not a letter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunelab.metrics.instruction_checks import HAN, count_words

BODY_WORDS = 10  # a sentence or two: "I just wanted to say thank you for the lovely scarf."
_GREETING_LINES = 3
_SIGN_OFF_WORDS = 8  # "Thank you again for everything, Anna" is still a closing line; a paragraph is not
_SIGN_OFF_HAN = 15

_MARKDOWN = re.compile(r"\*\*|__|^#{1,6}\s*")
_GREETING = re.compile(
    r"^(?:(?:dear|dearest|hi|hello|hey|greetings|good (?:morning|afternoon|evening)|to whom)\b|to\s+\S.*[,:]$|"
    rf"亲爱的|尊敬的|敬爱的|致[{HAN}]|.*(?:您好|你好|大家好)[！!，,。.]?$|(?=.*[{HAN}])[^\s，。！？,.!?：:]{{1,15}}[：:]$)",
    re.IGNORECASE)
_SIGN_OFF = re.compile(
    r"^(?:(?:best|all the best|warm(?:est)?|kind(?:est)?|regards|sincerely|yours|thanks|thank you|many thanks|cheers|"
    r"love|with love|lots of love|take care|warmly|gratefully|with gratitude|respectfully|see you|hugs|"
    r"your\s+(?:\w+\s+)?(?:friend|niece|nephew|student|son|daughter|grand\w+|roommate|colleague|neighbou?r|pen ?pal)|"
    r"talk soon|until|wishing you)\b|此致|敬礼|祝|谢谢|感谢|多谢|你的|您的|爱你的|想你的|学生|此致敬礼|顺颂|盼|期待)",
    re.IGNORECASE)
_NAME = re.compile(rf"^(?:[\[【（(<].{{1,20}}[\]】）)>]|[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*){{0,2}}|"
                   rf"[{HAN}]{{2,4}}|.{{1,12}}敬上|(?:学生|儿子|女儿|朋友|同事)\s*[{HAN}]{{1,4}})[,，.。!！]?$")
_DATE = re.compile(r"^(?:\d{4}\s*年\s*)?\d{1,2}\s*月\s*\d{1,2}\s*日$|^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$|"
                   r"^[A-Z][a-z]+ \d{1,2}(?:st|nd|rd|th)?,? \d{4}$")


@dataclass(frozen=True)
class LetterParts:
    """Where the parts were found (line indexes among the non-empty lines; None: not found) and the body's words."""

    greeting: int | None
    sign_off: int | None
    body_words: int

    @property
    def is_letter(self) -> bool:
        return self.greeting is not None and self.sign_off is not None and self.body_words >= BODY_WORDS


def _is_sign_off(line: str) -> bool:
    han = len(re.findall(f"[{HAN}]", line))
    short = han <= _SIGN_OFF_HAN if han else count_words(line) <= _SIGN_OFF_WORDS
    return short and bool(_SIGN_OFF.match(line))


def _sign_off_line(lines: list[str], greeting: int) -> int | None:
    """The index of the sign-off: the first closing line once the body has `BODY_WORDS` words, else a name line
    ending the letter (a date after it allowed)."""
    body = 0
    for i in range(greeting + 1, len(lines)):
        if body >= BODY_WORDS and _is_sign_off(lines[i]):
            return i
        body += count_words(lines[i])
    last = len(lines) - 1
    if last > greeting + 1 and _DATE.match(lines[last]):
        last -= 1
    if last <= greeting + 1 or not _NAME.match(name := lines[last].lstrip("-–— ")):
        return None
    # a line cut off mid-loop ("Shelter" of "Shelter from the sun,") is no name
    return None if any(line.startswith(name) for line in lines[greeting:last]) else last


def letter_parts(answer: str) -> LetterParts:
    """The greeting, sign-off and body of `answer` (see the module docstring)."""
    lines = [_MARKDOWN.sub("", line).strip() for line in answer.split("\n")]
    lines = [line for line in lines if line]
    greeting = next((i for i, line in enumerate(lines[:_GREETING_LINES]) if _GREETING.match(line)), None)
    if greeting is None:
        return LetterParts(None, None, 0)
    sign_off = _sign_off_line(lines, greeting)
    end = sign_off if sign_off is not None else len(lines)
    body = count_words("\n".join(lines[greeting + 1:end]))
    return LetterParts(greeting, sign_off, body)
