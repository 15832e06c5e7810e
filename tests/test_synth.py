"""`tunelab synth qa`: recorded replies through the validator, a scripted OpenAI-compatible fake server for
retries, timeouts, 429/5xx and resume (kill -9 of a real process included), and a real `tunelab serve` on a
loopback port for the protocol (key, unreachable endpoint, concurrency, accounting, a prompt too long)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.synth.articles import ArticleSource, ReadOptions, chunk_text
from tunelab.synth.validate import Rules, Validator, extract_json, needs_article

pytest.importorskip("openai")

ARTICLE = ("叶光（Ye Guang，1939年8月—2022年10月），平望省嘉坪县人，植物学家。1963年，叶光毕业于泰陵大学。"
           "叶光于2022年10月去世，享年83岁。他的研究集中在龙胆属植物。")


# --- recorded replies through the validator ----------------------------------------------------------------

def pairs_json(*pairs) -> str:
    return json.dumps([{"question": q, "answer": a} for q, a in pairs], ensure_ascii=False)


GOOD = [("叶光毕业于哪所大学？", "泰陵大学"), ("叶光是哪里人？", "平望省嘉坪县人"), ("叶光享年多少岁？", "83岁")]


@pytest.mark.parametrize("reply", [
    pairs_json(*GOOD),
    "好的，下面是问题和答案：\n```json\n" + pairs_json(*GOOD) + "\n```\n希望有帮助！",
    "```\n" + pairs_json(*GOOD) + "\n```",
    "Sure! Here they are: " + pairs_json(*GOOD) + " Let me know [if] you need more.",
    "<think>The article is about 叶光 [1939].</think>\n" + pairs_json(*GOOD),
    json.dumps({"qa_pairs": [{"question": q, "answer": a} for q, a in GOOD]}, ensure_ascii=False),
    json.dumps([{"问题": q, "答案": a} for q, a in GOOD], ensure_ascii=False),
    json.dumps([{"Question": q, "Answer": a} for q, a in GOOD], ensure_ascii=False),
])
def test_recorded_good_replies_give_their_pairs(reply):
    v = Validator(Rules())
    verdict = v.judge(reply, ARTICLE)
    assert verdict.reply_error is None and not verdict.dropped
    assert verdict.pairs == GOOD


@pytest.mark.parametrize("reply, reason", [
    ("", "no_json"),
    (None, "no_json"),
    ("我无法回答这个问题。", "no_json"),
    ('[{"question": "叶光毕业于哪所大学？", "answer": "泰陵', "no_json"),          # cut at max_tokens
    ("[" * 100_000, "no_json"),
    ("x" * 300_000, "reply_too_long"),
    ("[1, 2, 3]", "not_pairs"),
    ('{"answer": "none"}', "not_pairs"),
    ('"叶光"', "not_pairs"),
    (pairs_json(*GOOD[:2]), "too_few_pairs"),
    (pairs_json(*(GOOD * 3)), "too_many_pairs"),
    (pairs_json(("文中的植物学家是谁？", "叶光"), ("他毕业于哪所大学？", "泰陵大学"), ("叶光的妻子是谁？", "王芳")),
     "no_valid_pair"),
])
def test_recorded_bad_replies_are_rejected_by_reason(reply, reason):
    assert Validator(Rules()).judge(reply, ARTICLE).reply_error == reason


@pytest.mark.parametrize("pair, reason", [
    (("这篇文章讲了谁？", "叶光"), "needs_article"),
    (("本文的主人公是谁？", "叶光"), "needs_article"),
    (("根据上文，叶光哪年毕业？", "1963年"), "needs_article"),
    (("文章中提到的大学是哪所？", "泰陵大学"), "needs_article"),
    (("他哪一年去世？", "2022年10月"), "needs_article"),
    (("它的研究方向是什么？", "龙胆属植物"), "needs_article"),
    (("What does the passage say about Ye Guang?", "植物学家"), "needs_article"),
    (("According to the article, when did Ye Guang graduate?", "1963年"), "needs_article"),
    (("When did he graduate?", "1963年"), "needs_article"),
    (("What is his research field?", "龙胆属植物"), "needs_article"),
    (("叶光的妻子是谁？", "王芳"), "not_grounded"),
    (("叶光哪年出生？", "1951年"), "not_grounded"),
    (("叶光的研究集中在哪里？", "他研究的是中国南方的各种高山花卉和它们的生态"), "not_grounded"),
    (("叶光哪年毕业？", ""), "empty"),
    (("   ", "1963年"), "empty"),
    (("叶光" * 101 + "？", "1963年"), "question_too_long"),
    (("叶光做什么？", "植物学家" * 126), "answer_too_long"),
    (("叶光哪年毕业？", "\ud800"), "malformed"),
    (("叶光哪年毕业？", ["1963年"]), "malformed"),
    ((None, "1963年"), "malformed"),
])
def test_each_bad_pair_is_dropped_and_counted_by_reason(pair, reason):
    q, a = pair
    reply = json.dumps([{"question": q, "answer": a}] + [{"question": x, "answer": y} for x, y in GOOD])
    verdict = Validator(Rules()).judge(reply, ARTICLE)
    assert verdict.reply_error is None and verdict.pairs == GOOD
    assert verdict.dropped == Counter({reason: 1})


def test_grounded_answers_and_self_contained_questions_pass():
    v = Validator(Rules())
    fine = [("叶光的研究集中在什么植物？", "他的研究集中在龙胆属植物"),   # copied with a pronoun: it is the article's text
            ("What is Ye Guang's English name?", "Ye Guang"), ("叶光哪年毕业于泰陵大学？", "1963"),
            ("Who founded the city of Rome?", "叶光"), ("那么叶光享年多少？", "83岁")]
    verdict = v.judge(pairs_json(*fine), ARTICLE)
    assert verdict.pairs == fine and not verdict.dropped
    assert not needs_article("How many people live there?") and needs_article("What was it used for?")
    assert not needs_article("Who is the author of Hamlet?") and needs_article("What does the author argue?")
    assert not needs_article("那不勒斯位于哪个国家？") and needs_article("那座桥有多长？")
    assert not needs_article("其他行星有卫星吗？") and needs_article("这是谁的作品？") and needs_article("该公司成立于哪年？")


def test_duplicates_within_a_reply_and_across_the_corpus_are_normalised():
    v = Validator(Rules())
    reply = pairs_json(*GOOD, ("叶光 毕业于 哪所大学?", "泰陵大学"))      # same question: spaces, ASCII "?"
    verdict = v.judge(reply, ARTICLE)
    assert verdict.pairs == GOOD and verdict.dropped == Counter({"duplicate_in_article": 1})
    assert v.judge(reply, ARTICLE).pairs == GOOD          # judging alone remembers nothing
    v.accept(verdict.pairs)
    again = v.judge(pairs_json(*GOOD, ("叶光哪年毕业？", "1963年")), ARTICLE)
    assert again.pairs == [("叶光哪年毕业？", "1963年")] and again.dropped == Counter({"duplicate_in_corpus": 3})
    nothing_new = v.judge(pairs_json(("叶光毕业于哪所大学？", "泰陵大学"), ("叶光是哪里人?", "平望省嘉坪县人"),
                                     ("叶光享年多少岁 ？", "83岁")), ARTICLE)     # valid, but all asked before
    assert nothing_new.reply_error is None and nothing_new.nothing_new and nothing_new.pairs == []


def test_json_extraction_prefers_pairs_over_other_brackets():
    assert extract_json('See [1] and {"x": 2}. ' + pairs_json(*GOOD)) == json.loads(pairs_json(*GOOD))
    assert extract_json("no json") is None


# --- articles and chunks -----------------------------------------------------------------------------------

def test_chunks_are_whole_sentences_of_similar_length():
    text = "".join(f"第{i}句话说的是一件事情，内容比较长一些。" for i in range(200))
    chunks = chunk_text(text, 500)
    assert "".join(chunks) == text
    assert all(len(c) <= 500 and c.endswith("。") for c in chunks)
    assert min(map(len, chunks)) >= 0.8 * max(map(len, chunks))     # no 500 + 20 split
    assert chunk_text("short。", 500) == ["short。"] and chunk_text("  \n ", 500) == []
    parts = chunk_text("x" * 5000, 1500)                      # no sentence end at all: cut evenly
    assert [len(p) for p in parts] == [1250] * 4
    words = chunk_text("word " * 1000, 1500)
    assert all(not p.endswith("wor") and len(p) <= 1500 for p in words) and " ".join(words).split() == ["word"] * 1000


def write_articles(path: Path, n: int, start: int = 0) -> list[dict]:
    rows = [{"id": f"city-{i}", "title": f"城市{i}",
             "text": f"城市{i}\n\n城市{i}位于平望省，建于{1800 + i}年。城市{i}的人口为{1000 * i + 7}人。"
                     f"城市{i}有{i % 5 + 2}座桥，最长的一座叫长虹桥。城市{i}以出产丝绸和茶叶闻名，每年春天都有花会。"}
            for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_a_prepared_corpus_gives_the_same_articles_as_its_raw_file(tmp_path):
    from tunelab.data.corpus.chunks import ReadSettings
    from tunelab.data.corpus.prepare import prepare_corpus
    from tunelab.data.synthetic.encyclopedia import generate_articles
    from tunelab.model.tokenizer import train_corpus_tokenizer
    articles, _ = generate_articles(30, seed=3, noise=False)
    raw = tmp_path / "articles.jsonl"
    raw.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles), encoding="utf-8")
    train_corpus_tokenizer([a["text"] for a in articles], 400).save_pretrained(tmp_path / "tok")
    prepare_corpus([raw], str(tmp_path / "tok"), 64, tmp_path / "corpus", ReadSettings(val_fraction=0.3),
                   workers=1, progress=False)
    options = ReadOptions(chunk_chars=100_000, min_chars=1)
    from_raw = {a.key: a for a in ArticleSource([str(raw)], options)}
    from_corpus = {a.key: a for a in ArticleSource([str(tmp_path / "corpus")], options)}
    assert from_raw == from_corpus and len(from_raw) == 30
    val = [a.key for a in ArticleSource([str(tmp_path / "corpus")], ReadOptions(split="val", min_chars=1))]
    docs = [json.loads(x) for x in (tmp_path / "corpus" / "docs.jsonl").read_text().splitlines()]
    assert val == [d["id"] for d in docs if d["split"] == "val"] and 0 < len(val) < 30
    chunked = list(ArticleSource([str(raw)], ReadOptions(chunk_chars=100, min_chars=1)))
    long_one = [a for a in chunked if a.chunk == 1][0]
    title = next(a["title"] for a in articles if a["id"] == long_one.source_id)
    assert long_one.key == f"{long_one.source_id}#1" and long_one.text.startswith(title + "\n\n")


# --- a scripted OpenAI-compatible server -------------------------------------------------------------------

def completion(text: str, finish: str = "stop") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}


class FakeServer:
    """ThreadingHTTPServer speaking enough of the OpenAI API: GET /v1/models and POST /v1/chat/completions,
    answered by `reply(body, n) -> (status, headers, payload, delay)`; every request logged with its time."""

    def __init__(self, reply):
        self.reply = reply
        self.log: list[tuple[float, dict, str | None]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self.send(200, {}, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                                    "owned_by": "test"}]})
                else:
                    self.send(404, {}, {"error": {"message": "no such path", "type": "x", "param": None,
                                                  "code": None}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(outer.log)
                    outer.log.append((time.monotonic(), body, self.headers.get("Authorization")))
                status, headers, payload, delay = outer.reply(body, n)
                time.sleep(delay)
                self.send(status, headers, payload)

            def send(self, status, headers, payload):
                data = (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass        # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def city_of(body: dict) -> int:
    return int(re.search(r"城市(\d+)", body["messages"][-1]["content"]).group(1))


def good_pairs(i: int) -> list[tuple[str, str]]:
    return [(f"城市{i}位于哪个省？", "平望省"), (f"城市{i}建于哪一年？", f"{1800 + i}年"),
            (f"城市{i}的人口是多少？", f"{1000 * i + 7}人")]


def good_reply(body: dict, n: int):
    return 200, {}, completion("```json\n" + pairs_json(*good_pairs(city_of(body))) + "\n```"), 0.0


def synth(tmp_path: Path, url: str, *extra: str, corpus: Path | None = None) -> int:
    return main(["synth", "qa", "--corpus", str(corpus or tmp_path / "articles.jsonl"), "--endpoint", url,
                 "--model", "fake", "--out", str(tmp_path / "qa.jsonl"), "--no-progress", "--backoff", "0.01",
                 *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_validated_pairs_rejections_by_reason_and_the_request_shape(tmp_path, capsys):
    write_articles(tmp_path / "articles.jsonl", 6)
    (tmp_path / "sys.txt").write_text("你是一个出题助手。", encoding="utf-8")
    seen: Counter = Counter()

    def reply(body, n):
        i = city_of(body)
        seen[i] += 1
        if i == 1:      # prose around it, one question leaning on the article, one invented answer
            return 200, {}, completion("以下是结果：" + pairs_json(*good_pairs(1), ("文中的城市建于哪年？", "1801年"),
                                                               ("城市1的市长是谁？", "李明")) + "。"), 0.0
        if i == 2 and seen[i] == 1:
            return 200, {}, completion("抱歉，我需要更多信息。"), 0.0
        if i == 3:
            return 200, {}, completion(pairs_json(*(good_pairs(3) * 3)), finish="length"), 0.0
        if i == 4:      # only repeats city 0's questions (answered from its own article): done, nothing new
            same = [(q, a) for (q, _), (_, a) in zip(good_pairs(0), good_pairs(4))]
            return 200, {}, completion(pairs_json(*same)), 0.5
        return good_reply(body, n)

    with FakeServer(reply) as srv:
        rc = synth(tmp_path, srv.url, "--system", "@" + str(tmp_path / "sys.txt"), "--retries", "2",
                   "--temperature", "0.3", "--max-tokens", "300", "--api-key", "secret")
    assert rc == 0
    body = srv.log[0][1]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == "你是一个出题助手。" and "城市" in body["messages"][1]["content"]
    assert "3到6个关键问题" in body["messages"][1]["content"]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 300 and body["model"] == "fake"
    assert srv.log[0][2] == "Bearer secret"
    pairs = read_jsonl(tmp_path / "qa.jsonl")
    expected = [p for i in (0, 1, 2, 5) for p in good_pairs(i)]
    assert sorted((p["question"], p["answer"]) for p in pairs) == sorted(expected)
    assert all(set(p) == {"question", "answer", "source_id"} for p in pairs)
    assert {p["source_id"] for p in pairs} == {"city-0", "city-1", "city-2", "city-5"}
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    assert report["articles"] == {"total": 6, "done": 5, "failed": 1, "already_finished": 0, "too_short_skipped": 0,
                                  "failed_by_reason": {"too_many_pairs": 1}}
    assert report["pairs"]["accepted"] == 12
    assert report["pairs"]["rejected_by_reason"] == {"duplicate_in_corpus": 3, "needs_article": 1, "not_grounded": 1}
    assert report["replies_rejected_by_reason"] == {"too_many_pairs": 3, "no_json": 1}
    assert report["requests"] == {"sent": 9, "retries": 3, "failed_by_reason": {}}
    assert report["tokens"] == {"prompt": 900, "completion": 180, "total": 1080}
    status = [r for r in read_jsonl(tmp_path / "qa.status.jsonl") if "key" in r]
    failed = [r for r in status if r["status"] == "failed"]
    assert len(status) == 6 and [r["key"] for r in failed] == ["city-3"]
    assert failed[0]["attempts"] == 3 and "too_many_pairs" in failed[0]["reason"]
    assert "max_tokens" in failed[0]["reason"]
    out = capsys.readouterr().out
    assert "pairs accepted 12" in out and "failed articles: too_many_pairs 1" in out


def test_429_retry_after_5xx_and_timeouts_are_retried_then_recorded(tmp_path):
    write_articles(tmp_path / "articles.jsonl", 3)
    calls: Counter = Counter()

    def reply(body, n):
        i = city_of(body)
        calls[i] += 1
        if i == 0 and calls[i] == 1:
            return 429, {"Retry-After": "1"}, {"error": {"message": "slow down", "type": "rate", "param": None,
                                                         "code": None}}, 0.0
        if i == 0 and calls[i] == 2:
            return 503, {}, {"error": {"message": "overloaded", "type": "x", "param": None, "code": None}}, 0.0
        if i == 1:
            return 200, {}, completion("[]"), 3.0           # slower than --timeout, every time
        if i == 2:
            return 400, {}, {"error": {"message": "context too long", "type": "invalid_request_error",
                                       "param": "messages", "code": "context_length_exceeded"}}, 0.0
        return good_reply(body, n)

    with FakeServer(reply) as srv:
        assert synth(tmp_path, srv.url, "--timeout", "0.5", "--retries", "2", "--concurrency", "3") == 0
    times = [t for t, body, _ in srv.log if city_of(body) == 0]
    assert len(times) == 3 and times[1] - times[0] >= 0.95      # Retry-After: 1 (the backoff alone is 0.01 s)
    slow = [t for t, body, _ in srv.log if city_of(body) == 1]  # the reply takes 3 s: asked again before it came
    assert len(slow) == 3 and all(b - a < 3.0 for a, b in zip(slow, slow[1:]))
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    assert report["articles"]["failed_by_reason"] == {"timeout": 1, "bad_request": 1}
    assert report["requests"]["failed_by_reason"] == {"timeout": 3, "rate_limited": 1, "server_error": 1,
                                                      "bad_request": 1}
    assert report["requests"]["sent"] == 3 + 3 + 1            # city 2's 400 is not asked again
    status = {r["key"]: r for r in read_jsonl(tmp_path / "qa.status.jsonl") if "key" in r}
    assert status["city-0"]["status"] == "done" and status["city-0"]["attempts"] == 3
    assert status["city-1"]["reason"].startswith("timeout") and status["city-1"]["attempts"] == 3
    assert "context too long" in status["city-2"]["reason"]
    # a rerun skips all three; --retry-failed asks the failed two again
    with FakeServer(good_reply) as srv:
        assert synth(tmp_path, srv.url) == 0
        assert srv.log == []
        assert synth(tmp_path, srv.url, "--retry-failed") == 0
        assert sorted(city_of(b) for _, b, _ in srv.log) == [1, 2]
    pairs = read_jsonl(tmp_path / "qa.jsonl")
    assert len(pairs) == 9 and len({p["question"] for p in pairs}) == 9
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    assert report["output"] == {"pairs": 9, "articles_done": 3, "articles_failed": 0}


def test_concurrency_limit_is_kept(tmp_path):
    write_articles(tmp_path / "articles.jsonl", 12)
    active, peak, lock = [0], [0], threading.Lock()

    def reply(body, n):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.15)
        with lock:
            active[0] -= 1
        return good_reply(body, n)

    with FakeServer(reply) as srv:
        assert synth(tmp_path, srv.url, "--concurrency", "4") == 0
    assert peak[0] == 4           # 4 at a time, never more
    assert len(read_jsonl(tmp_path / "qa.jsonl")) == 36


def test_resume_repairs_a_partial_line_and_an_uncommitted_article(tmp_path, capsys):
    write_articles(tmp_path / "articles.jsonl", 5)
    with FakeServer(good_reply) as srv:
        assert synth(tmp_path, srv.url, "--limit", "2") == 0
    qa, journal = tmp_path / "qa.jsonl", tmp_path / "qa.status.jsonl"
    committed = qa.read_bytes()
    with qa.open("ab") as f:        # city-2's pairs written, its status line cut by the kill
        f.write("".join(json.dumps({"question": q, "answer": a, "source_id": "city-2"}, ensure_ascii=False) + "\n"
                        for q, a in good_pairs(2)).encode() + b'{"question": "\xe5\x9f')
    with journal.open("ab") as f:
        f.write(b'{"key": "city-2", "status": "do')
    with FakeServer(good_reply) as srv:
        assert synth(tmp_path, srv.url) == 0
        assert sorted(city_of(b) for _, b, _ in srv.log) == [2, 3, 4]
    pairs = read_jsonl(qa)
    assert qa.read_bytes().startswith(committed)
    assert Counter(p["source_id"] for p in pairs) == {f"city-{i}": 3 for i in range(5)}
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    assert report["repaired"] == {"partial_journal_line": True, "uncommitted_lines_removed": 4,
                                  "uncommitted_bytes_removed": report["repaired"]["uncommitted_bytes_removed"]}
    assert report["articles"]["already_finished"] == 2
    assert "repaired an interrupted run: 4 uncommitted output line(s) removed" in capsys.readouterr().out
    statuses = [r["key"] for r in read_jsonl(journal) if "key" in r]
    assert sorted(statuses) == [f"city-{i}" for i in range(5)]


def test_kill_9_mid_run_then_rerun_finishes_without_duplicates(tmp_path):
    n = 60
    write_articles(tmp_path / "articles.jsonl", n)

    def slow(body, k):
        time.sleep(0.1)
        return good_reply(body, k)

    qa, journal = tmp_path / "qa.jsonl", tmp_path / "qa.status.jsonl"
    with FakeServer(slow) as srv:
        cmd = [sys.executable, "-m", "tunelab.cli", "synth", "qa", "--corpus", str(tmp_path / "articles.jsonl"),
               "--endpoint", srv.url, "--model", "fake", "--out", str(qa), "--no-progress", "--concurrency", "4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_bytes().count(b'"status"') >= 8:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
        finished_before = len({r["key"] for r in _complete_lines(journal) if "key" in r})
        assert 8 <= finished_before < n
        # the killed run's last requests may still be in the server's accept queue, logged when a handler reads
        # them (CI under load counted one as asked again): wait until the log stops growing
        before, quiet_since = len(srv.log), time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            time.sleep(0.05)
            if len(srv.log) != before:
                before, quiet_since = len(srv.log), time.monotonic()
        assert synth(tmp_path, srv.url) == 0
        asked_again = [city_of(b) for _, b, _ in srv.log[before:]]
    assert len(asked_again) == n - finished_before
    pairs = read_jsonl(qa)
    assert Counter(p["source_id"] for p in pairs) == {f"city-{i}": 3 for i in range(n)}
    assert len({(p["source_id"], p["question"]) for p in pairs}) == 3 * n
    keys = [r["key"] for r in read_jsonl(journal) if "key" in r]
    assert sorted(keys) == sorted(f"city-{i}" for i in range(n))


def _complete_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines()]


def test_hostile_articles_and_replies_are_counted_not_crashes(tmp_path):
    rows = [{"id": "bad\ud800id", "title": "t\udc00", "text": "城市0位于平望省。" * 10},
            {"id": "huge", "text": "城市1" + "长" * 2_000_000}]          # one 2 MB line without a sentence end
    (tmp_path / "articles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    replies = ["x" * 5_000_000,                                            # a 5 MB reply
               '[{"question": "城市0在哪？", "answer": "\\ud800"}, {"question": 1e999, "answer": NaN}, '
               '{"question": "城市0位于哪个省？", "answer": "平望省"}]',
               '[{"question": "城市1是什么？", "answer": ' + "9" * 5000 + '}, {"question": "城市1有什么？", '
               '"answer": "长长长"}, {"question": "城市1的特点？", "answer": "长长"}]',   # an int over 4300 digits
               json.dumps([{"question": "城市1是什么？", "answer": "长" * 501}, {"question": "城市1有什么？",
                           "answer": "长长长"}, {"question": "城市1的特点？", "answer": "长长"}], ensure_ascii=False)]

    def reply(body, n):
        return 200, {}, completion(replies[n]), 0.0

    with FakeServer(reply) as srv:
        assert synth(tmp_path, srv.url, "--limit", "2", "--concurrency", "1", "--retries", "1") == 0
    pairs = read_jsonl(tmp_path / "qa.jsonl")
    assert [(p["source_id"], p.get("chunk")) for p in pairs] == [("bad\\ud800id", None), ("huge", 0), ("huge", 0)]
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    assert report["replies_rejected_by_reason"] == {"reply_too_long": 1, "no_json": 1}
    assert report["pairs"]["rejected_by_reason"] == {"malformed": 2, "answer_too_long": 1}
    assert report["articles"]["total"] == 2


def test_input_and_flag_mistakes_are_one_line_errors(tmp_path, capsys):
    write_articles(tmp_path / "articles.jsonl", 3)
    (tmp_path / "bad.txt").write_text("no placeholder", encoding="utf-8")

    def err(*args, corpus=None) -> str:
        capsys.readouterr()
        assert synth(tmp_path, "http://127.0.0.1:9/v1", *args, corpus=corpus) == 2
        e = capsys.readouterr().err
        assert e.count("\n") == 1 and "Traceback" not in e
        return e

    assert "--template" in err("--template", str(tmp_path / "bad.txt")) and "{article}" in err(
        "--template", str(tmp_path / "bad.txt"))
    assert "SYNTH_NO_SUCH_VAR is not set" in err("--api-key", "env:SYNTH_NO_SUCH_VAR")
    assert "--max-pairs" in err("--min-pairs", "4", "--max-pairs", "3")
    assert "--timeout" in err("--timeout", "nan")
    assert "--split" in err("--split", "val")
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a", "source_id": "x"}\n', encoding="utf-8")
    assert "both an input and an output" in err(corpus=tmp_path / "qa.jsonl")
    assert "without its journal" in err()               # an existing file that synth did not write
    with FakeServer(good_reply) as srv:
        (tmp_path / "qa.jsonl").unlink()
        assert synth(tmp_path, srv.url, "--limit", "1") == 0
        capsys.readouterr()
        assert synth(tmp_path, srv.url, "--chunk-chars", "900") == 2
        assert "chunk_chars 1500 then, 900 now" in capsys.readouterr().err


# --- a real `tunelab serve` --------------------------------------------------------------------------------

KEY = "synth-key"


@pytest.fixture(scope="module")
def served_url(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import torch

    from test_serve_api import build_tiny_run
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.models import ServedModel
    torch.set_num_threads(1)
    served = ServedModel.load(build_tiny_run(tmp_path_factory.mktemp("synth")), name="tiny", max_batch=16)
    srv = BackgroundServer(create_app(served, api_key=KEY)).start()
    yield srv.url
    srv.stop()
    served.close()


def test_real_server_concurrent_requests_are_counted_and_a_too_long_prompt_fails(tmp_path, served_url):
    import httpx
    rows = [{"id": f"a{i}", "text": f"The river {i} runs past the old mill {i + 3} km north of the town."}
            for i in range(6)]
    rows.append({"id": "long", "text": "The quick brown fox jumps over the lazy dog. " * 120})
    (tmp_path / "articles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "t.txt").write_text("Questions as JSON about: {article}", encoding="utf-8")
    before = httpx.get(served_url + "/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    rc = main(["synth", "qa", "--corpus", str(tmp_path / "articles.jsonl"), "--endpoint", served_url + "/v1",
               "--model", "tiny", "--api-key", KEY, "--out", str(tmp_path / "qa.jsonl"), "--no-progress",
               "--template", str(tmp_path / "t.txt"), "--max-tokens", "16", "--temperature", "0",
               "--retries", "1", "--concurrency", "6", "--chunk-chars", "10000", "--backoff", "0.01",
               "--min-chars", "20"])
    assert rc == 0
    after = httpx.get(served_url + "/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    report = json.loads((tmp_path / "qa.report.json").read_text(encoding="utf-8"))
    a = report["articles"]
    assert a["total"] == 7 and a["done"] == 0 and a["failed"] == 7       # a random model writes no JSON
    assert a["failed_by_reason"]["bad_request"] == 1                      # the long one: context exceeded, not retried
    assert report["requests"]["sent"] == 6 * 2 + 1 and report["requests"]["retries"] == 6
    assert sum(report["replies_rejected_by_reason"].values()) == 12
    assert report["tokens"]["prompt"] > 12 * 10 and 12 <= report["tokens"]["completion"] <= 12 * 16
    assert after["max_batch"] > 1 and after["requests"] - before["requests"] >= 12
    status = {r["key"]: r for r in read_jsonl(tmp_path / "qa.status.jsonl") if "key" in r}
    assert "context" in status["long"]["reason"] and status["long"]["attempts"] == 1
    assert (tmp_path / "qa.jsonl").read_bytes() == b""


def test_real_server_wrong_key_unreachable_and_unknown_model_stop_at_once(tmp_path, served_url, capsys):
    write_articles(tmp_path / "articles.jsonl", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = [(served_url + "/v1", "wrong", "tiny", "refused the API key (401"),
             (f"http://127.0.0.1:{closed}/v1", KEY, "tiny", "cannot reach"),
             (served_url + "/v1", KEY, "no-such-model", "serves no model 'no-such-model' (it lists: tiny)")]
    for url, key, model, message in cases:
        capsys.readouterr()
        rc = main(["synth", "qa", "--corpus", str(tmp_path / "articles.jsonl"), "--endpoint", url, "--model", model,
                   "--api-key", key, "--out", str(tmp_path / "qa.jsonl"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "qa.jsonl").exists() and not (tmp_path / "qa.status.jsonl").exists()
