"""IFEval's checks, transcribed step for step for the tests to compare `tunelab.metrics.instruction_checks` with.

Source read: github google-research/google-research, `instruction_following_eval/instructions.py` @ 3f357bd
(each class's `build_description` arguments and `check_following`) and `evaluation_lib.py` @ 4c42994
(`test_instruction_following_loose`'s variants). Only the checks that need neither NLTK's punkt model nor
langdetect are here; `count_words` is NLTK's `RegexpTokenizer(r"\\w+")`, which is `re.findall(r"\\w+")`.
Each function is named after its IFEval class and keeps its steps, so a reader can hold the two side by side.
"""

from __future__ import annotations

import collections
import json
import re


def loose_variants(response):
    r = response.split("\n")
    response_remove_first = "\n".join(r[1:]).strip()
    response_remove_last = "\n".join(r[:-1]).strip()
    response_remove_both = "\n".join(r[1:-1]).strip()
    revised_response = response.replace("*", "")
    revised_response_remove_first = response_remove_first.replace("*", "")
    revised_response_remove_last = response_remove_last.replace("*", "")
    revised_response_remove_both = response_remove_both.replace("*", "")
    return [response, revised_response, response_remove_first, response_remove_last, response_remove_both,
            revised_response_remove_first, revised_response_remove_last, revised_response_remove_both]


def PlaceholderChecker(value, num_placeholders):
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def BulletListChecker(value, num_bullets):
    bullet_lists = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    bullet_lists_2 = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(bullet_lists) + len(bullet_lists_2) == num_bullets


def ConstrainedResponseChecker(value):
    value = value.strip()
    for constrained_response in ("My answer is yes.", "My answer is no.", "My answer is maybe."):
        if constrained_response in value:
            return True
    return False


def HighlightSectionChecker(value, num_highlights):
    num = 0
    for highlight in re.findall(r"\*[^\n\*]*\*", value):
        if highlight.strip("*").strip():
            num += 1
    for highlight in re.findall(r"\*\*[^\n\*]*\*\*", value):
        if highlight.removeprefix("**").removesuffix("**").strip():
            num += 1
    return num >= num_highlights


def SectionChecker(value, section_spliter, num_sections):
    sections = re.split(r"\s?" + section_spliter + r"\s?\d+\s?", value)
    return len(sections) - 1 >= num_sections


def ParagraphChecker(value, num_paragraphs):
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    num = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index == 0 or index == len(paragraphs) - 1:
                num -= 1
            else:
                return False
    return num == num_paragraphs


def PostscriptChecker(value, postscript_marker):
    value = value.lower()
    if postscript_marker == "P.P.S":
        postscript_pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        postscript_pattern = r"\s*p\.\s?s\..*$"
    else:
        postscript_pattern = r"\s*" + postscript_marker.lower() + r".*$"
    return bool(re.findall(postscript_pattern, value, flags=re.MULTILINE))


def KeywordChecker(value, keywords):
    for keyword in sorted(keywords):
        if not re.search(keyword, value, flags=re.IGNORECASE):
            return False
    return True


def KeywordFrequencyChecker(value, keyword, frequency, relation):
    actual = len(re.findall(keyword.strip(), value, flags=re.IGNORECASE))
    return actual < frequency if relation == "less than" else actual >= frequency


def NumberOfWords(value, num_words, relation):
    n = len(re.findall(r"\w+", value))
    return n < num_words if relation == "less than" else n >= num_words


def JsonFormat(value):
    value = (value.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
             .removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def ParagraphFirstWordCheck(value, num_paragraphs, nth_paragraph, first_word):
    first_word_wanted = first_word.lower()
    paragraphs = re.split(r"\n\n", value)
    num = len(paragraphs)
    for paragraph in paragraphs:
        if not paragraph.strip():
            num -= 1
    if nth_paragraph <= num:
        paragraph = paragraphs[nth_paragraph - 1].strip()
        if not paragraph:
            return False
    else:
        return False
    found = ""
    punctuation = {".", ",", "?", "!", "'", '"'}
    word = paragraph.split()[0].strip()
    word = word.lstrip("'")
    word = word.lstrip('"')
    for letter in word:
        if letter in punctuation:
            break
        found += letter.lower()
    return num == num_paragraphs and found == first_word_wanted


def ForbiddenWords(value, forbidden_words):
    for word in sorted(set(forbidden_words)):
        if re.search(r"\b" + word + r"\b", value, flags=re.IGNORECASE):
            return False
    return True


def TwoResponsesChecker(value):
    valid_responses = []
    responses = value.split("******")
    for index, response in enumerate(responses):
        if not response.strip():
            if index != 0 and index != len(responses) - 1:
                return False
        else:
            valid_responses.append(response)
    return len(valid_responses) == 2 and valid_responses[0].strip() != valid_responses[1].strip()


def RepeatPromptThenAnswer(value, prompt_to_repeat):
    return value.strip().lower().startswith(prompt_to_repeat.strip().lower())


def EndChecker(value, end_phrase):
    value = value.strip().strip("\"").lower()
    return value.endswith(end_phrase.strip().lower())


def TitleChecker(value):
    for title in re.findall(re.compile(r"<<[^\n]+>>"), value):
        if title.lstrip("<").rstrip(">").strip():
            return True
    return False


def LetterFrequencyChecker(value, letter, let_frequency, let_relation):
    letters = collections.Counter(value.lower())
    if let_relation == "less than":
        return letters[letter.lower()] < let_frequency
    return letters[letter.lower()] >= let_frequency


def CommaChecker(value):
    return not re.search(r"\,", value)


def QuotationChecker(value):
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


# kind id: (reference check, argument sets in the shape tunelab takes them)
REFERENCE = {
    "detectable_content:number_placeholders": (PlaceholderChecker, [{"num_placeholders": 2}]),
    "detectable_format:number_bullet_lists": (BulletListChecker, [{"num_bullets": 2}, {"num_bullets": 1}]),
    "detectable_format:constrained_response": (ConstrainedResponseChecker, [{}]),
    "detectable_format:number_highlighted_sections": (HighlightSectionChecker, [{"num_highlights": 2}]),
    "detectable_format:multiple_sections": (SectionChecker, [{"section_spliter": "Section", "num_sections": 2}]),
    "length_constraints:number_paragraphs": (ParagraphChecker, [{"num_paragraphs": 2}, {"num_paragraphs": 1}]),
    "detectable_content:postscript": (PostscriptChecker, [{"postscript_marker": "P.S."},
                                                          {"postscript_marker": "P.P.S"}]),
    "keywords:existence": (KeywordChecker, [{"keywords": ["tea", "Park"]}]),
    "keywords:frequency": (KeywordFrequencyChecker, [{"keyword": "the", "frequency": 2, "relation": "at least"},
                                                     {"keyword": "a", "frequency": 4, "relation": "less than"}]),
    "length_constraints:number_words": (NumberOfWords, [{"num_words": 12, "relation": "less than"},
                                                        {"num_words": 6, "relation": "at least"}]),
    "detectable_format:json_format": (JsonFormat, [{}]),
    "length_constraints:nth_paragraph_first_word": (
        ParagraphFirstWordCheck, [{"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
                                  {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "sure"}]),
    "keywords:forbidden_words": (ForbiddenWords, [{"forbidden_words": ["tea", "sun"]}]),
    "combination:two_responses": (TwoResponsesChecker, [{}]),
    "combination:repeat_prompt": (RepeatPromptThenAnswer, [{"prompt_to_repeat": "Why is the sky blue?"}]),
    "startend:end_checker": (EndChecker, [{"end_phrase": "Any other questions?"}]),
    "detectable_format:title": (TitleChecker, [{}]),
    "keywords:letter_frequency": (LetterFrequencyChecker, [{"letter": "e", "let_frequency": 6,
                                                            "let_relation": "less than"}]),
    "punctuation:no_comma": (CommaChecker, [{}]),
    "startend:quotation": (QuotationChecker, [{}]),
}
