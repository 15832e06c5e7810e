"""`tunelab ui` for real: the Gradio app with two local tiny models, driven in Debian's headless Chromium with
Playwright (chat with a streamed answer, one arena battle, a vote, the leaderboard changing); plus the pieces
behind it without a browser (streaming handler, remote backends, ratings)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

import pytest

from tunelab.errors import TunelabError
from tunelab.serve.ratings import leaderboard

# gradio's queue trips pandas 3 deprecation warnings of its own
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def browser_missing() -> str | None:
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists(CHROMIUM)):
        return "Debian's chromium is not installed (apt-get install -y --no-install-recommends chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed (pip install -e .[serve])"
    return None


# ratings: no browser ------------------------------------------------------------------------------------------
def votes(pairs: list[tuple[str, str, str]]) -> list[dict]:
    return [{"model_a": a, "model_b": b, "vote": v} for a, b, v in pairs]


def test_ratings_rank_a_clear_winner_and_refuse_noise():
    few = leaderboard(votes([("x", "y", "left")] * 3), min_votes=10, rounds=50)
    assert all(not r["enough_votes"] and r["rank"] is None for r in few.rows)
    assert "not enough votes" in few.message
    assert few.table()[0][2] == "not enough votes"

    many = votes([("x", "y", "left")] * 20 + [("y", "x", "right")] * 10 + [("x", "y", "tie")] * 5
                 + [("y", "z", "left")] * 18 + [("y", "z", "both_bad")] * 4 + [("x", "z", "left")] * 15)
    lb = leaderboard(many, min_votes=10, rounds=100)
    order = [r["model"] for r in lb.rows]
    assert order == ["x", "y", "z"] and [r["rank"] for r in lb.rows] == [1, 2, 3]
    x = lb.rows[0]
    assert x["bt_low"] < x["bt"] < x["bt_high"] and x["votes"] == 50 and x["ties"] == 5
    assert lb.winrate["x"]["y"] == (pytest.approx(32.5 / 35), 35)
    assert lb.winrate["y"]["x"][0] == pytest.approx(2.5 / 35)
    # regularised: two models that only ever drew with each other stay level and share a rank
    level = leaderboard(votes([("p", "q", "tie")] * 12), min_votes=10, rounds=50)
    assert [r["rank"] for r in level.rows] == [1, 1] and abs(level.rows[0]["bt"] - 1000) < 1e-6
    # a perfect record over few votes is finite (the prior), and the interval is wide
    sweep = leaderboard(votes([("a", "b", "left")] * 10), min_votes=10, rounds=50)
    assert sweep.rows[0]["bt"] < 1400 and sweep.rows[0]["bt_high"] - sweep.rows[0]["bt_low"] > 50
    assert "rank" in lb.to_csv().splitlines()[0] and '"leaderboard"' in lb.to_json()


# the UI's pieces without a browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """alpha: a checkpoint scored greedily with 20-token answers (its generation_config.json says so);
    beta: a model whose config states no decoding."""
    pytest.importorskip("fastapi")
    import torch

    from test_serve_api import build_tiny_run

    from tunelab.decoding.generation_config import write_generation_config
    from tunelab.model.loading import load_for_inference
    from tunelab.serve.backends import LocalBackend
    from tunelab.serve.models import ServedModel
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui")
    alpha = build_tiny_run(root, "alpha", seed=1)
    alpha_dir = alpha / "checkpoints" / "step-000010" / "model"
    write_generation_config(alpha_dir, *load_for_inference(str(alpha_dir)), max_new_tokens=20)
    a = ServedModel.load(alpha, name="alpha")
    b = ServedModel.load(build_tiny_run(root, "beta", seed=2), name="beta")
    yield {"alpha": LocalBackend("alpha", a), "beta": LocalBackend("beta", b)}
    a.close()
    b.close()


def test_stream_answers_streams_two_models_at_once(two_models):
    from tunelab.serve.backends import GenerationSettings
    from tunelab.serve.ui.answers import stream_answers
    msgs = [{"role": "user", "content": "hello"}]
    settings = GenerationSettings(temperature=0.0, max_tokens=24)
    updates = list(stream_answers([(two_models["alpha"], msgs, settings), (two_models["beta"], msgs, settings)]))
    final_a, final_b = updates[-1]
    assert final_a.done and final_b.done and final_a.text and final_b.text and final_a.text != final_b.text
    assert len(updates) > 2                  # several partial updates: streamed, not one final answer
    assert final_a.seconds is not None and final_a.first_token <= final_a.seconds


def test_settings_start_from_the_models_generation_config(two_models):
    """A local model's defaults are its generation config's where it states one, the UI's elsewhere; a remote
    server's model keeps the UI's."""
    from tunelab.serve.backends import GenerationSettings, RemoteBackend
    ui = GenerationSettings(max_tokens=64)
    assert two_models["alpha"].defaults(ui) == GenerationSettings(temperature=0.0, top_p=1.0, top_k=0, max_tokens=20)
    assert two_models["beta"].defaults(ui) == ui
    assert RemoteBackend("mate", "http://127.0.0.1:9/v1").defaults(ui) == ui
    # alpha at its defaults answers as at temperature 0; an explicit temperature still samples
    msgs = [{"role": "user", "content": "hello"}]
    alpha = two_models["alpha"]
    greedy = "".join(alpha.chat_stream(msgs, GenerationSettings(temperature=0.0, max_tokens=20)))
    assert "".join(alpha.chat_stream(msgs, alpha.defaults(ui))) == greedy
    hot = GenerationSettings(temperature=1.5, max_tokens=20)
    assert any("".join(alpha.chat_stream(msgs, hot)) != greedy for _ in range(3))


def test_model_specs(monkeypatch):
    from tunelab.serve.backends import parse_model_spec
    monkeypatch.setenv("MATE_KEY", "s3cret")
    s = parse_model_spec("mate=http://10.0.0.7:8000/v1#qwen-7b@env:MATE_KEY")
    assert (s.name, s.target, s.model_id, s.key, s.remote) == ("mate", "http://10.0.0.7:8000/v1", "qwen-7b",
                                                               "s3cret", True)
    s = parse_model_spec("http://user:pw@host:1234/v1")
    assert (s.name, s.target, s.key) == ("host:1234", "http://user:pw@host:1234/v1", None)
    assert parse_model_spec("lm=http://localhost:1234/v1@sk-abc").key == "sk-abc"


def test_example_prompts_come_from_the_shared_reader(tmp_path):
    from tunelab.serve.ui.context import DEFAULT_EXAMPLES, load_examples
    assert load_examples(None) == DEFAULT_EXAMPLES
    (tmp_path / "p.txt").write_bytes(b"\xff")
    with pytest.raises(TunelabError, match="p.txt:1: not UTF-8"):
        load_examples(str(tmp_path / "p.txt"))


def test_remote_backend_talks_to_tunelab_serve_and_reports_unreachable(two_models):
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.backends import BackendError, GenerationSettings, RemoteBackend, parse_model_spec
    srv = BackgroundServer(create_app(two_models["alpha"].served, api_key="k")).start()
    try:
        spec = parse_model_spec(f"mate={srv.url}/v1@k")
        assert (spec.name, spec.target, spec.key) == ("mate", f"{srv.url}/v1", "k")
        remote = RemoteBackend(spec.name, spec.target, spec.key)
        assert remote.check()[0]
        settings = GenerationSettings(temperature=0.0, max_tokens=12)
        msgs = [{"role": "user", "content": "hi"}]
        pieces = list(remote.chat_stream(msgs, settings))
        local = "".join(two_models["alpha"].chat_stream(msgs, settings))
        assert len(pieces) > 1 and "".join(pieces) == local
        with pytest.raises(BackendError, match="API key"):
            list(RemoteBackend("bad", f"{srv.url}/v1", "wrong").chat_stream(msgs, settings))
    finally:
        srv.stop()
    t = time.perf_counter()
    dead = RemoteBackend("ghost", "http://127.0.0.1:9/v1")
    ok, msg = dead.check()
    assert not ok and "cannot reach http://127.0.0.1:9/v1" in msg
    with pytest.raises(BackendError, match="cannot reach http://127.0.0.1:9/v1"):
        list(dead.chat_stream([{"role": "user", "content": "hi"}], GenerationSettings()))
    assert time.perf_counter() - t < 15


# votes counted once -------------------------------------------------------------------------------------------
def battle(id_: str = "b1") -> dict:
    return {"id": id_, "a": "alpha", "b": "beta", "prompt": "问题 question", "answer_a": "甲", "answer_b": "乙",
            "complete": True, "voted": False, "seconds_a": 0.5, "seconds_b": 0.7}


def test_thirty_concurrent_votes_for_one_battle_count_once(tmp_path):
    """30 vote events for one battle at once, through two connections to the file (as two processes would
    have): exactly one is stored and reported as counted; the others are told it was already counted."""
    import threading

    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.arena import cast_vote
    db = tmp_path / "arena.sqlite"
    stores = [ArenaStore(db), ArenaStore(db)]
    barrier = threading.Barrier(30)
    results: list[tuple] = []
    kinds = ["left", "right", "tie", "both_bad"]

    def vote(i: int) -> None:
        barrier.wait()
        results.append(cast_vote(stores[i % 2], battle(), kinds[i % 4]))
    threads = [threading.Thread(target=vote, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 30 and sum(counted for _, _, counted in results) == 1
    assert all("already counted" in shown for _, shown, counted in results if not counted)
    assert all(state["voted"] for state, _, _ in results)
    rows = sqlite3.connect(db).execute("SELECT battle, model_a, prompt FROM votes").fetchall()
    assert rows == [("b1", "alpha", "问题 question")]
    assert [s.count() for s in stores] == [1, 1]
    assert cast_vote(stores[0], battle("b2"), "tie")[2]                   # another battle counts
    state, shown, counted = cast_vote(stores[0], {**battle("b3"), "complete": False}, "left")
    assert not counted and "Nothing to vote on" in shown and stores[0].count() == 2   # a void battle never does
    for s in stores:
        s.close()


def test_a_store_from_before_battle_ids_keeps_its_votes(tmp_path):
    from tunelab.serve.arena import _SCHEMA, ArenaStore
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute(_SCHEMA)
    con.executemany("INSERT INTO votes (ts, model_a, model_b, vote, prompt, answer_a, answer_b) VALUES "
                    "(0, 'a', 'b', ?, 'p', 'x', 'y')", [("left",), ("tie",)])
    con.commit()
    con.close()
    store = ArenaStore(db)
    assert store.count() == 2
    assert store.record("a", "b", "right", "p", "x", "y", battle="n1") is not None
    assert store.record("a", "b", "right", "p", "x", "y", battle="n1") is None
    assert [v["vote"] for v in store.votes()] == ["left", "tie", "right"]
    store.close()


def test_stop_strings_are_literal_with_four_escapes():
    from tunelab.serve.ui.context import parse_stops
    assert parse_stops("停\\n|###") == ("停\n", "###")
    assert parse_stops("end\\") == ("end\\",)                 # a trailing backslash is a backslash
    assert parse_stops("a\\|b|c\\\\|\\t") == ("a|b", "c\\", "\t")
    assert parse_stops("\\u4e2d|\\x41|\\q") == ("\\u4e2d", "\\x41", "\\q")   # no other escapes: kept as typed
    assert parse_stops("") == () and parse_stops(None) == () and parse_stops("||") == ()


# remote backends under deadlines --------------------------------------------------------------------------------
CHUNK = ('data: {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": '
         '[{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}\n\n').encode()


@pytest.fixture(scope="module")
def fake_remote():
    """A local HTTP server that misbehaves as told by the path: /silent/v1 never answers, /trickle/v1 sends one
    piece of text and then a comment every 0.2 s forever, /garbage/v1 answers plain text, /badjson/v1 an SSE
    event that is not JSON."""
    import re
    import socketserver
    import threading

    stop = threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                got = sock.recv(65536)
                if not got:
                    return
                data += got
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            while m and len(body) < int(m.group(1)):
                body += sock.recv(65536)
            mode = head.split(b" ")[1].split(b"/")[1].decode()
            sse = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            try:
                if mode == "silent":
                    stop.wait(60)
                elif mode == "garbage":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n"
                                 b"Connection: close\r\n\r\nhello, this is not an API!")
                elif mode == "badjson":
                    sock.sendall(sse + b"data: {not json\n\n")
                elif mode == "trickle":
                    sock.sendall(sse + CHUNK)
                    while not stop.wait(0.2):
                        sock.sendall(b": still here\n\n")
            except OSError:
                pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("mode, deadlines, match, within", [
    ("silent", (1.0, 1.0, 5.0), "first-token deadline|did not answer in time", 3.0),
    ("trickle", (1.0, 1.0, 2.0), "did not finish within 2 s", 4.0),
    ("garbage", (1.0, 1.0, 5.0), "OpenAI streaming format", 3.0),
    ("badjson", (1.0, 1.0, 5.0), "badjson", 3.0),
])
def test_a_misbehaving_remote_fails_within_its_deadlines(fake_remote, mode, deadlines, match, within):
    from tunelab.serve.backends import BackendError, Deadlines, GenerationSettings, RemoteBackend
    remote = RemoteBackend(mode, f"{fake_remote}/{mode}/v1", model_id="m", deadlines=Deadlines(*deadlines))
    pieces = []
    t = time.perf_counter()
    with pytest.raises(BackendError, match=match):
        for p in remote.chat_stream([{"role": "user", "content": "hi"}], GenerationSettings()):
            pieces.append(p)
    assert time.perf_counter() - t < within
    assert pieces == (["hi"] if mode == "trickle" else [])
    assert remote.last_error and mode in remote.last_error


def test_a_silent_remote_voids_an_arena_answer_and_shows_in_its_status(fake_remote, two_models):
    from tunelab.serve.backends import Deadlines, GenerationSettings, RemoteBackend
    from tunelab.serve.ui.answers import ERROR_MARK, stream_answers
    remote = RemoteBackend("mute", f"{fake_remote}/silent/v1", model_id="m", deadlines=Deadlines(1.0, 1.0, 5.0))
    settings = GenerationSettings(temperature=0.0, max_tokens=8)
    msgs = [{"role": "user", "content": "hi"}]
    t = time.perf_counter()
    a, b = list(stream_answers([(remote, msgs, settings), (two_models["alpha"], msgs, settings)]))[-1]
    assert time.perf_counter() - t < 5
    assert a.done and a.error and a.shown().startswith(ERROR_MARK) and a.timing() == "failed 失败"
    assert b.done and not b.error and b.text                # the other model answered regardless
    ok, status = remote.check()                             # the status check cannot reach it either
    assert not ok and "in time" in status


def test_ui_auth_guards_every_route_exports_included(two_models, tmp_path, capsys):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import httpx

    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.app import build_app, launch, parse_auth
    assert parse_auth("teacher:s3cret:x") == ("teacher", "s3cret:x")
    for bad in ("teacher", "teacher:", ":pw"):
        with pytest.raises(TunelabError):
            parse_auth(bad)
    store = ArenaStore(tmp_path / "a.sqlite")
    demo = build_app(two_models, store, ["hi"], min_votes=1)
    _, url, _ = launch(demo, port=None, prevent_thread_lock=True, quiet=True, auth=("teacher", "s3cret"))
    try:
        export = tmp_path / "votes.jsonl"
        export.write_text("{}\n", encoding="utf-8")
        for path in ("config", f"gradio_api/file={export}", "gradio_api/info"):
            assert httpx.get(url + path).status_code == 401, path
        with httpx.Client() as c:
            assert c.post(url + "login", data={"username": "teacher", "password": "wrong"}).status_code >= 400
            assert c.post(url + "login", data={"username": "teacher", "password": "s3cret"}).status_code == 200
            assert c.get(url + "config").status_code == 200
    finally:
        demo.close()
        store.close()


# the browser test ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_url(two_models, tmp_path_factory):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from tunelab.serve.arena import ArenaStore
    from tunelab.serve.ui.app import build_app, launch
    db = tmp_path_factory.mktemp("arena") / "arena.sqlite"
    store = ArenaStore(db)
    demo = build_app(two_models, store, ["What is 2 + 3?"], min_votes=1, max_new_tokens=32)
    _, url, _ = launch(demo, port=None, prevent_thread_lock=True, quiet=True)
    yield {"url": url, "db": db}
    demo.close()
    store.close()


def test_browser_chat_arena_vote_leaderboard(app_url, two_models, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(app_url["url"])

            # the chat's sliders start from the first model's generation config (alpha: greedy, 20 tokens) and
            # follow the model picked; beta states none: the UI's temperature 0.7 and the app's 32 tokens
            page.locator("button", has_text="Settings 参数").first.click()    # the chat tab's, folded
            temperature = page.locator("#chat-temperature input[type=number]")
            max_tokens = page.locator("#chat-max-tokens input[type=number]")
            expect(temperature).to_have_value("0")
            expect(max_tokens).to_have_value("20")
            page.locator("#chat-model input").click()
            page.get_by_role("option", name="beta").click()
            expect(temperature).to_have_value("0.7")
            expect(max_tokens).to_have_value("32")
            page.locator("#chat-model input").click()
            page.get_by_role("option", name="alpha").click()
            expect(temperature).to_have_value("0")

            # chat: a message in, a streamed answer out, with its time
            page.locator("#chat-input textarea").fill("What is 2 + 3?")
            page.locator("#chat-send").click()
            expect(page.locator("#chat-timing")).to_contain_text("⏱")
            bot = page.locator("#chat-bot")
            expect(bot).to_contain_text("What is 2 + 3?")
            assert len(bot.inner_text().strip()) > len("What is 2 + 3?") + 1    # the answer is there too
            expect(page.locator("#chat-input textarea")).to_have_value("")

            # leaderboard before any vote
            page.get_by_role("tab", name="Leaderboard 排行榜").click()
            table = page.locator("#leaderboard-table")
            expect(table).to_contain_text("not enough votes")
            expect(page.locator("#leaderboard-message")).to_contain_text("No votes yet")

            # one arena battle, a vote, names revealed
            page.get_by_role("tab", name="Arena 竞技场").click()
            expect(page.locator("#vote-left")).to_be_disabled()
            page.locator("#arena-input textarea").fill("Write one sentence about autumn.")
            page.locator("#arena-send").click()
            expect(page.locator("#vote-left")).to_be_enabled()
            expect(page.locator("#arena-bot-a")).to_contain_text("autumn")
            page.locator("#vote-left").click()
            reveal = page.locator("#arena-reveal")
            expect(reveal).to_contain_text("Model A = ")
            text = reveal.inner_text()
            assert ("alpha" in text) and ("beta" in text)
            expect(page.locator("#vote-left")).to_be_disabled()
            # the battle ran each model at its own defaults; moving a slider applies the sliders to both
            page.locator("button:visible", has_text="Settings 参数").first.click()
            own = page.locator("#arena-own-defaults input")
            expect(own).to_be_checked()
            page.locator("#arena-temperature input[type=number]").fill("1.2")
            page.locator("#arena-temperature input[type=number]").press("Enter")
            expect(own).not_to_be_checked()

            # the leaderboard changed: both models now have a vote and a rating
            page.get_by_role("tab", name="Leaderboard 排行榜").click()
            expect(page.locator("#leaderboard-message")).to_contain_text("1 anonymous votes")
            expect(table).not_to_contain_text("not enough votes")
            expect(page.locator("#leaderboard-matrix")).to_contain_text("n=1")
            page.locator("#leaderboard-export").click()
            files = page.locator("#leaderboard-files")
            expect(files).to_contain_text(".csv")
            expect(files).to_contain_text(".json")
        except Exception:
            page.screenshot(path=str(app_url["db"].parent / "failure.png"), full_page=True)
            print("screenshot:", app_url["db"].parent / "failure.png")
            raise
        finally:
            browser.close()

    rows = sqlite3.connect(app_url["db"]).execute(
        "SELECT model_a, model_b, vote, prompt, answer_a, answer_b FROM votes").fetchall()
    assert len(rows) == 1
    a, b, vote, prompt, answer_a, answer_b = rows[0]
    assert {a, b} == {"alpha", "beta"} and vote == "left" and prompt == "Write one sentence about autumn."
    assert answer_a and answer_b
    # the vote cast in the browser is a preference pair (`tunelab data prefs`): the left answer chosen
    from tunelab.data.preferences import arena_pairs
    pairs, skipped = arena_pairs(app_url["db"])
    assert not skipped and [(p.prompt, p.chosen, p.rejected, p.meta["chosen_model"]) for p in pairs] == [
        (prompt, answer_a, answer_b, a)]
    dpo_on_the_vote(app_url["db"], two_models[a].served.model_dir, tmp_path)


def dpo_on_the_vote(db, model_dir, tmp_path):
    """The loop's other half: the browser's vote, made pairs by `tunelab data prefs`, trains a DPO run on the model
    that answered (LoRA, its reference the model with the adapter off), whose checkpoint plain peft loads."""
    import json

    import torch
    import yaml
    from conftest import recipe_dict
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.cli import main
    from tunelab.runs import list_checkpoints
    assert main(["data", "prefs", "--arena", str(db), "--out", str(tmp_path / "prefs"), "--val-fraction", "0"]) == 0
    raw = recipe_dict(tmp_path / "runs", "dpo", model={"preset": None, "from_scratch": None,
                                                         "tokenizer_vocab_size": None, "path": str(model_dir)},
                      data={"train": [{"path": str(tmp_path / "prefs" / "train.jsonl")}], "packing": False},
                      lora={"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.0},
                      train={"method": "dpo", "preference": {"beta": 0.5}, "lr": 1e-2, "max_steps": 6,
                             "batch_size": 1, "log_every": 1, "num_checkpoints": 1},
                      report_to=[])
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert main(["train", str(recipe)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["rewards/margins"] > lines[0]["rewards/margins"]  # it learned the voter's preference
    adapter = list_checkpoints(tmp_path / "runs" / "dpo")[-1] / "adapter"
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    assert any(torch.count_nonzero(p) for n, p in tuned.named_parameters() if "lora_B" in n)


def test_chromium_is_where_the_test_expects_it():
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed")
    assert os.path.exists(CHROMIUM)
