"""A model as the judge, through any OpenAI-compatible chat endpoint (a local `tunelab serve`, vLLM, LM Studio,
a hosted API): shown a question and two answers (and the reference answer, when the data has one), it names the
better one. The prompts are FastChat's MT-bench pairwise judge prompts (`pair-v2`, `pair-v2-with-ref`), whose
verdict format is "[[A]]", "[[B]]" or "[[C]]" (a tie); the last such mark in the reply is the verdict.

A reply without a mark, or a request that fails for that prompt alone (too long, a bad parameter, a server error
or rate limit that outlasted the retries), is no verdict: the pair counts as a tie and as unjudged
(`verdicts.Tally`). An endpoint that cannot be reached or refuses the key or the model stops the judging with one
error: every prompt would fail the same way. Retries and errors are the shared client's
(`tunelab.decoding.openai_client`).
"""

from __future__ import annotations

import re

from tunelab.decoding.openai_client import Endpoint, EndpointError

SYSTEM = ("Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
          "to the user question displayed below. You should choose the assistant that follows the user's "
          "instructions and answers the user's question better. Your evaluation should consider factors such as "
          "the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. Begin "
          "your evaluation by comparing the two responses and provide a short explanation. Avoid any position "
          "biases and ensure that the order in which the responses were presented does not influence your "
          "decision. Do not allow the length of the responses to influence your evaluation. Do not favor certain "
          "names of the assistants. Be as objective as possible. After providing your explanation, output your "
          "final verdict by strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if "
          "assistant B is better, and \"[[C]]\" for a tie.")
SYSTEM_WITH_REFERENCE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be "
    "given a reference answer, assistant A's answer, and assistant B's answer. Your job is to evaluate which "
    "assistant's answer is better. Begin your evaluation by comparing both assistants' answers with the reference "
    "answer. Identify and correct any mistakes. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses to "
    "influence your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After "
    "providing your explanation, output your final verdict by strictly following this format: \"[[A]]\" if "
    "assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")
THIS_PROMPT_ALONE = ("bad_request", "server_error", "rate_limited", "bad_response")   # the judging goes on
_MARK = re.compile(r"\[\[([ABC])\]\]")


def judge_prompt(question: str, first: str, second: str, reference: str | None = None) -> list[dict[str, str]]:
    """The chat messages asking which of `first` (shown as A) and `second` (shown as B) is better."""
    if reference is None:
        user = (f"[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{first}\n"
                f"[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{second}\n"
                "[The End of Assistant B's Answer]")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    user = (f"[User Question]\n{question}\n\n[The Start of Reference Answer]\n{reference}\n"
            f"[The End of Reference Answer]\n\n[The Start of Assistant A's Answer]\n{first}\n"
            f"[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{second}\n"
            "[The End of Assistant B's Answer]")
    return [{"role": "system", "content": SYSTEM_WITH_REFERENCE}, {"role": "user", "content": user}]


def read_verdict(reply: str | None) -> str | None:
    """"first", "second", "tie", or None when the reply names no verdict (the last mark counts)."""
    marks = _MARK.findall(reply or "")
    return {"A": "first", "B": "second", "C": "tie"}[marks[-1]] if marks else None


class EndpointJudge:
    """One judge model behind an OpenAI-compatible URL; `ask` returns the verdict of one order."""

    def __init__(self, base_url: str, model: str, api_key: str = "none", timeout: float = 120.0,
                 max_tokens: int = 1024):
        self.endpoint = Endpoint(base_url, api_key, timeout=timeout)
        self.model, self.max_tokens, self.base_url = model, max_tokens, base_url

    def ask(self, question: str, first: str, second: str, reference: str | None = None) -> str | None:
        try:
            reply = self.endpoint.chat(judge_prompt(question, first, second, reference), model=self.model,
                                       temperature=0, max_tokens=self.max_tokens)
        except EndpointError as e:
            if e.reason in THIS_PROMPT_ALONE:
                return None
            raise
        return read_verdict(reply.text)
