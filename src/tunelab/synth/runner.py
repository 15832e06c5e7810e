"""Articles to validated QA pairs, `concurrency` requests at a time (asyncio), so a local server batches them.

Each worker takes the next unfinished article, asks, judges the reply, and commits the article (done or
failed) to the journal. An invalid reply and a failed request share one retry budget per article
(`retries` beyond the first attempt); failed requests wait before the next try (exponential backoff with
jitter, or the server's Retry-After: the policy of `tunelab.decoding.openai_client`, which sorts the failures
into retried ones, ones that fail this article alone, and a refused key or unknown model, which stops the run).
Judging and committing run with no await between, so two articles finishing together can neither both accept
the same question nor interleave their lines.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator

from tunelab.decoding.openai_client import Endpoint, EndpointError, RetryPolicy
from tunelab.synth.articles import Article, ArticleSource
from tunelab.synth.journal import Journal
from tunelab.synth.prompt import Prompt
from tunelab.synth.validate import Rules, Validator, normalise_question

STOPS_THE_RUN = ("refused_key", "not_found")   # every article would fail the same way


@dataclass
class Settings:
    endpoint: str
    model: str
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 1024
    concurrency: int = 8
    retries: int = 3
    timeout: float = 300.0
    backoff: float = 1.0        # seconds before the first retry of a failed request (doubling)
    retry_failed: bool = False  # ask again about articles an earlier run recorded as failed
    limit: int | None = None    # only the first N articles (finished ones included)
    progress: bool = True


@dataclass
class Stats:
    """What this run did (the journal holds what every run did)."""
    total: int = 0
    already: int = 0
    done: int = 0
    failed: int = 0
    failed_by_reason: Counter = field(default_factory=Counter)
    accepted: int = 0
    pairs_rejected: Counter = field(default_factory=Counter)
    replies_rejected: Counter = field(default_factory=Counter)
    requests: int = 0
    request_errors: Counter = field(default_factory=Counter)
    retries: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def add_usage(self, prompt: int | None, completion: int | None) -> None:
        if isinstance(prompt, int):
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt
        if isinstance(completion, int):
            self.completion_tokens = (self.completion_tokens or 0) + completion


class Runner:
    def __init__(self, source: ArticleSource, prompt: Prompt, rules: Rules, journal: Journal, settings: Settings):
        self.source, self.prompt, self.rules, self.journal, self.settings = source, prompt, rules, journal, settings
        self.stats = Stats()
        self.validator = Validator(rules)
        self.client: Endpoint | None = None
        self.bar = None
        self.status: dict[str, str] = {}      # every finished article's status, earlier runs' and this one's
        self.report: dict | None = None
        self.t0 = time.monotonic()

    async def run(self) -> dict:
        """Check the endpoint, resume the journal, synthesise every unfinished article; returns the report."""
        s = self.settings
        self.client = Endpoint(s.endpoint, s.api_key, timeout=s.timeout,
                               policy=RetryPolicy(retries=s.retries, backoff=s.backoff))
        try:
            await self.client.acheck(s.model)
            return await self._run()
        finally:
            await self.client.aclose()

    async def _run(self) -> dict:
        s, st = self.settings, self.stats
        run_info = {"endpoint": s.endpoint, "model": s.model, "prompt": self.prompt.fingerprint(),
                    "temperature": s.temperature, "max_tokens": s.max_tokens, "rules": vars(self.rules)}
        resumed = self.journal.open(run_info, self.source.options.identity())
        self.validator.seen.update(normalise_question(q) for q in resumed.questions)
        self.status = {k: rec["status"] for k, rec in resumed.finished.items()}
        skip = {k for k, rec in resumed.finished.items() if rec["status"] == "done" or not s.retry_failed}
        interrupted, too_short, workers = True, 0, []
        try:
            for a in self._articles():                 # a first pass for the bar's total: reading is cheap
                st.total += 1
                st.already += a.key in skip
            too_short = self.source.too_short
            todo = (a for a in self._articles() if a.key not in skip)
            from tqdm.auto import tqdm
            self.bar = tqdm(total=st.total, initial=st.already, unit="article", desc="synth qa", file=sys.stderr,
                            disable=not s.progress, dynamic_ncols=True)
            self.t0 = time.monotonic()
            workers = [asyncio.ensure_future(self._worker(todo)) for _ in range(max(1, s.concurrency))]
            finished, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for w in finished:
                w.result()          # re-raise a worker's error (a refused key mid-run, a bad input line)
            interrupted = False
        finally:
            for w in workers:       # stopped before the journal closes: a commit never follows close()
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if self.bar is not None:
                self.bar.close()
            self.journal.close()
            self.report = self._report(resumed, too_short, time.monotonic() - self.t0, interrupted)
        return self.report

    def _articles(self) -> Iterator[Article]:
        it = iter(self.source)
        return islice(it, self.settings.limit) if self.settings.limit is not None else it

    async def _worker(self, todo: Iterator[Article]) -> None:
        for article in todo:        # one generator shared by the workers: each takes the next article
            await self._one(article)

    async def _one(self, article: Article) -> None:
        s, st = self.settings, self.stats
        messages = self.prompt.messages(article.text)
        attempts = 0

        def retried(error: EndpointError, wait: float) -> None:
            st.request_errors[error.reason] += 1
            st.retries += 1

        while True:
            try:                # the retries left of the article's budget, shared with invalid replies
                reply = await self.client.achat(messages, model=s.model, temperature=s.temperature,
                                                max_tokens=s.max_tokens, retries=s.retries - attempts,
                                                on_retry=retried)
            except EndpointError as e:
                if e.reason in STOPS_THE_RUN:
                    raise
                attempts += e.attempts
                st.requests += e.attempts
                st.request_errors[e.reason] += 1
                return self._fail(article, attempts, e.reason, f"{e.reason}: {e.message}")
            attempts += reply.attempts
            st.requests += reply.attempts
            st.add_usage(reply.prompt_tokens, reply.completion_tokens)
            verdict = self.validator.judge(reply.text, article.text)
            st.pairs_rejected.update(verdict.dropped)
            if verdict.reply_error is None:         # from here to the commit: no await (see the docstring)
                self.validator.accept(verdict.pairs)
                self.journal.commit(article, verdict.pairs, "done", attempts)
                self.status[article.key] = "done"
                st.done += 1
                st.accepted += len(verdict.pairs)
                return self._advance()
            st.replies_rejected[verdict.reply_error] += 1
            if attempts > s.retries:
                cut = " (the reply was cut at max_tokens)" if reply.finish_reason == "length" else ""
                dropped = ", ".join(f"{k} {n}" for k, n in verdict.dropped.most_common())
                detail = f"{verdict.reply_error}{cut}" + (f"; pairs dropped: {dropped}" if dropped else "")
                return self._fail(article, attempts, verdict.reply_error, detail)
            st.retries += 1

    def _fail(self, article: Article, attempts: int, reason: str, detail: str) -> None:
        self.journal.commit(article, [], "failed", attempts, detail)
        self.status[article.key] = "failed"
        self.stats.failed += 1
        self.stats.failed_by_reason[reason] += 1
        self._advance()

    def _advance(self) -> None:
        st = self.stats
        elapsed = max(1e-6, time.monotonic() - self.t0)
        self.bar.set_postfix(pairs=st.accepted, pairs_per_s=f"{st.accepted / elapsed:.2f}", failed=st.failed,
                             refresh=False)
        self.bar.update(1)

    def _report(self, resumed, too_short: int, seconds: float, interrupted: bool) -> dict:
        st = self.stats
        tokens = None
        if st.prompt_tokens is not None or st.completion_tokens is not None:
            tokens = {"prompt": st.prompt_tokens, "completion": st.completion_tokens,
                      "total": (st.prompt_tokens or 0) + (st.completion_tokens or 0)}
        status = Counter(self.status.values())
        return {
            "endpoint": self.settings.endpoint, "model": self.settings.model, "out": str(self.journal.out),
            "interrupted": interrupted,
            "articles": {"total": st.total, "done": st.done, "failed": st.failed, "already_finished": st.already,
                         "too_short_skipped": too_short,
                         "failed_by_reason": dict(st.failed_by_reason.most_common())},
            "pairs": {"accepted": st.accepted, "rejected_by_reason": dict(st.pairs_rejected.most_common())},
            "replies_rejected_by_reason": dict(st.replies_rejected.most_common()),
            "requests": {"sent": st.requests, "retries": st.retries,
                         "failed_by_reason": dict(st.request_errors.most_common())},
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "articles_per_second": round((st.done + st.failed) / seconds, 4) if seconds > 0 else None,
            "repaired": {"partial_journal_line": resumed.partial_journal_line,
                         "uncommitted_lines_removed": resumed.dropped_lines,
                         "uncommitted_bytes_removed": resumed.dropped_bytes},
            "output": {"pairs": resumed.pairs + st.accepted, "articles_done": status["done"],
                       "articles_failed": status["failed"]},
        }
