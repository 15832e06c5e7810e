"""`tunelab judge`: the programmatic judge on known answers, and a model judge through a real OpenAI-compatible
HTTP endpoint that a test scripts — fair, position-biased, mute, refusing one prompt, refusing the key — so that
order swapping, ties, unjudged prompts and errors are checked through the official client, not a mock of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.judge import judge_answers, read_answers, read_references
from tunelab.judge.endpoint import EndpointJudge, read_verdict
from tunelab.judge.programmatic import judge_by_reference
from tunelab.judge.verdicts import Tally


class ScriptedJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: a judge whose behaviour is `server.mode`; every request is recorded."""

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        user = body["messages"][-1]["content"]
        first = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
        mode = self.server.mode
        if mode == "bad key":
            return self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
        if "too long" in user:
            return self._send(400, {"error": {"message": "context length exceeded", "type": "invalid_request"}})
        if mode == "fair":  # the answer that says "right" is better, wherever it is shown
            second = re.search(r"Assistant B's Answer\]\n(.*?)\n\[The End", user, re.S).group(1)
            mark = "[[A]]" if "right" in first and "right" not in second else \
                "[[B]]" if "right" in second and "right" not in first else "[[C]]"
            text = f"Comparing both... [[C]] was my first thought. Final verdict: {mark}"
        elif mode == "first":  # always prefers what it reads first
            text = "Assistant A is better. [[A]]"
        else:  # mute: no verdict mark at all
            text = "Both answers have merits."
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    server.mode, server.requests = "fair", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


A_ANSWERS = {"q1": "right answer", "q2": "right too", "q3": "wrong", "q4": "right", "q5 too long": "right"}
B_ANSWERS = {"q1": "wrong answer", "q2": "right as well", "q3": "right", "q4": "nope", "q5 too long": "wrong"}


def test_a_fair_judge_is_asked_both_orders_and_decides(endpoint):
    tally, judged, unmatched = judge_answers(A_ANSWERS, B_ANSWERS, endpoint=EndpointJudge(url(endpoint), "judge"))
    verdicts = {j.prompt: j.verdict for j in judged}
    assert verdicts == {"q1": "A", "q2": "tie", "q3": "B", "q4": "A", "q5 too long": "tie"}
    assert (tally.wins, tally.ties, tally.losses, tally.unjudged, tally.inconsistent) == (2, 2, 1, 1, 0)
    assert len(endpoint.requests) == 10 and unmatched == 0
    shown_first = [re.search(r"A's Answer\]\n(.*?)\n", r["messages"][-1]["content"]).group(1)
                   for r in endpoint.requests if "q1" in r["messages"][-1]["content"]]
    assert sorted(shown_first) == ["right answer", "wrong answer"]  # each answer was shown first once
    assert all(r["temperature"] == 0 for r in endpoint.requests)


def test_a_position_biased_judge_cancels_out_as_ties(endpoint):
    endpoint.mode = "first"
    tally, _, _ = judge_answers(A_ANSWERS, B_ANSWERS, endpoint=EndpointJudge(url(endpoint), "judge"))
    assert (tally.wins, tally.losses, tally.ties) == (0, 0, 5)
    assert tally.inconsistent == 4 and tally.unjudged == 1 and tally.win_rate == 0.5


def test_a_mute_judge_is_counted_unjudged_not_hidden(endpoint):
    endpoint.mode = "mute"
    tally, _, _ = judge_answers(A_ANSWERS, B_ANSWERS, endpoint=EndpointJudge(url(endpoint), "judge"))
    assert tally.ties == tally.unjudged == 5


def test_a_refused_key_or_a_dead_endpoint_is_one_error(endpoint):
    endpoint.mode = "bad key"
    with pytest.raises(TunelabError, match=r"refused the API key \(401: invalid api key\)"):
        judge_answers(A_ANSWERS, B_ANSWERS, endpoint=EndpointJudge(url(endpoint), "judge"))
    with pytest.raises(TunelabError, match="cannot reach http://127.0.0.1:9/v1"):
        judge_answers(A_ANSWERS, B_ANSWERS, endpoint=EndpointJudge("http://127.0.0.1:9/v1", "judge", timeout=2))


def test_the_reference_goes_into_the_judge_prompt(endpoint):
    judge_answers({"2+2=?": "right 4"}, {"2+2=?": "5"}, {"2+2=?": "4"}, endpoint=EndpointJudge(url(endpoint), "j"))
    assert all("[The Start of Reference Answer]\n4\n" in r["messages"][-1]["content"] for r in endpoint.requests)


def test_verdict_marks():
    assert read_verdict("thinking [[A]] ... final: [[B]]") == "second"
    assert read_verdict("[[C]]") == "tie" and read_verdict("no mark") is None and read_verdict(None) is None


def test_the_programmatic_judge_on_known_answers():
    assert judge_by_reference("1 + 2 = 3", "1 + 2 = 4", "3") == "A"
    assert judge_by_reference("答案是 4", "it is 3.0", "3") == "B"
    assert judge_by_reference("3", "3", "3") == "tie" and judge_by_reference("7", "8", "3") == "tie"
    assert judge_by_reference("  Paris ", "paris.", "PARIS", match="exact") == "A"
    refs = {"1+1=?": "2", "2+2=?": "4", "3+3=?": "6"}
    tally, _, _ = judge_answers({"1+1=?": "2", "2+2=?": "5", "3+3=?": "6"}, {"1+1=?": "3", "2+2=?": "4",
                                                                            "3+3=?": "6"}, refs)
    assert (tally.wins, tally.ties, tally.losses) == (1, 1, 1) and (tally.right_a, tally.right_b) == (2, 2)
    with pytest.raises(TunelabError, match="needs each prompt's reference"):
        judge_answers({"x": "1"}, {"x": "2"}, {})


def test_the_interval_is_a_bootstrap_of_the_win_rate():
    tally = Tally()
    for verdict in ["A"] * 60 + ["B"] * 30 + ["tie"] * 10:
        tally.add(verdict)
    lo, hi = tally.interval()
    assert tally.win_rate == pytest.approx(0.65) and lo < 0.65 < hi and 0.05 < hi - lo < 0.25
    assert tally.interval() == (lo, hi)  # a fixed seed: the same judgments, the same interval


def test_cli_judges_generate_outputs(tmp_path):
    """Answer files as `tunelab generate --json` writes them (a failed sample is no answer), references from the
    prompts file, the summary printed and each judgment written."""
    def write(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    a = write(tmp_path / "a.jsonl", [
        {"prompt_index": 1, "sample": 1, "prompt": "1+1=?", "text": "1+1=2", "error": None},
        {"prompt_index": 2, "sample": 1, "prompt": "3×4=?", "text": "3×4=12", "error": None},
        {"prompt_index": 3, "sample": 1, "prompt": "only in a", "text": "x", "error": None}])
    b = write(tmp_path / "b.jsonl", [
        {"prompt_index": 1, "sample": 1, "prompt": "1+1=?", "text": "1+1=3", "error": None},
        {"prompt_index": 2, "sample": 1, "prompt": "3×4=?", "text": None, "error": "timeout"},
        {"prompt_index": 2, "sample": 2, "prompt": "3×4=?", "text": "3×4=12", "error": None},
        {"prompt_index": 3, "sample": 1, "prompt": "2×5=?", "text": "2×5=10", "error": None}])
    refs = write(tmp_path / "q.jsonl", [{"prompt": "1+1=?", "answer": "2"}, {"prompt": "3×4=?", "answer": "12"},
                                        {"prompt": "only in a", "answer": "x"}, {"prompt": "2×5=?", "answer": "10"}])
    assert read_answers(b) == {"1+1=?": "1+1=3", "2×5=?": "2×5=10"}  # sample 1 of 3×4 failed: no answer
    assert read_answers(b, sample=2) == {"3×4=?": "3×4=12"} and read_references(refs)["3×4=?"] == "12"
    r = subprocess.run([sys.executable, "-m", "tunelab.cli", "judge", str(a), str(b), "--references", str(refs),
                        "--out", str(tmp_path / "verdicts.jsonl")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 wins, 0 ties, 0 losses" in r.stdout and "3 prompts only one file answers" in r.stdout
    assert "right answers: A 1 (100.0 %), B 0 (0.0 %)" in r.stdout
    assert [json.loads(x)["verdict"] for x in (tmp_path / "verdicts.jsonl").open()] == ["A"]
    r = subprocess.run([sys.executable, "-m", "tunelab.cli", "judge", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("tunelab: error: --references: the programmatic judge needs")


def test_judged_battles_go_into_the_arena_apart_from_people(tmp_path):
    from tunelab.data.preferences import arena_pairs
    from tunelab.judge import write_to_arena
    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ratings import leaderboard
    db = tmp_path / "votes.db"
    people = ArenaStore(db)
    people.record("sft", "dpo", "right", "hi?", "hello", "hi there", battle="human-1")
    people.close()
    refs = {"1+1=?": "2", "2+2=?": "4", "3+3=?": "6"}
    _, judged, _ = judge_answers({"1+1=?": "3", "2+2=?": "4", "3+3=?": "6"},
                                 {"1+1=?": "2", "2+2=?": "5", "3+3=?": "6"}, refs)
    assert write_to_arena(db, judged, "programmatic", "dpo", "sft") == 3
    assert write_to_arena(db, judged, "programmatic", "dpo", "sft") == 0  # the same judgments: not twice
    store = ArenaStore(db)
    assert [v["vote"] for v in store.votes(judge="programmatic")] == ["right", "left", "tie"]
    assert [v["battle"] for v in store.votes()] == ["human-1"] and store.count() == 1  # people's votes alone
    lb = leaderboard(store.votes(), min_votes=1, rounds=20)
    assert {r["model"]: r["votes"] for r in lb.rows} == {"sft": 1, "dpo": 1}
    store.close()
    pairs, skipped = arena_pairs(db)  # a judge's verdicts are not people's preferences
    assert len(pairs) == 1 and skipped == {"judge": 3}


def test_two_samples_of_one_model_judged_against_each_other(tmp_path):
    """`tunelab generate -n 2 --json` output as both sides, sample 1 against sample 2: on-policy pairs."""
    rows = [{"prompt_index": i, "sample": s, "prompt": f"{i}+{i}=?", "text": str(2 * i + (s == 2 and i % 2)),
             "error": None} for i in range(1, 5) for s in (1, 2)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    first, second = read_answers(path), read_answers(path, sample=2)
    assert first["1+1=?"] == "2" and second["1+1=?"] == "3"
    tally, _, _ = judge_answers(first, second, {f"{i}+{i}=?": str(2 * i) for i in range(1, 5)})
    assert (tally.wins, tally.ties, tally.losses) == (2, 2, 0)
