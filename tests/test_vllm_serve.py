"""`tunelab serve RUN --engine vllm`: a run's base and every checkpoint as models of one server, vLLM decoding behind
tunelab's own router, driven by the official `openai` client.

One vLLM server serves the module (from `.venv-vllm` or `TUNELAB_VLLM_PYTHON`; without one these tests skip and
say why), on the shipped tiny base in fp32, with a run-like directory whose two checkpoints hold random LoRA
adapters (and a third whose adapter vLLM cannot serve). What is compared is what a client reads: each name's greedy
chat answers against the embedded engine's for the same checkpoint; and the server's manners hold whichever engine
answers: size limits, bad parameters refused without touching a concurrent request, the key, and a clear 400 for
what vLLM is not asked (prompt log-probabilities with LoRA on).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_vllm_engine import TINY_BASE, VLLM_PYTHON, _random_adapter, needs_vllm

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "vllm-test-key"
LIMIT = 20_000        # --max-request-bytes
PROMPTS = ["What is 12 + 7?", "Name a colour.", "计算 3 * 4", "Say hello.", "What is 100 - 58?", "Count to three."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run as training leaves one: checkpoints/step-N/adapter (+ state.json), two LoRA adapters of the tiny base
    (different, random) and an earlier one whose rank is above what the server takes."""
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    for step, scale in ((10, 3.0), (20, 5.0)):
        ckpt = run / "checkpoints" / f"step-{step:06d}"
        _random_adapter(ckpt / "adapter", scale=scale, seed=step)
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
    big = run / "checkpoints" / "step-000005"
    shutil.copytree(run / "checkpoints" / "step-000010", big)
    config = json.loads((big / "adapter" / "adapter_config.json").read_text())
    (big / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    return run


@pytest.fixture(scope="module")
def server(run_dir):
    import logging

    from tunelab.recipe.engine import EngineConfig
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.protocol import Limits
    from tunelab.serve.vllm_serving import serve_through_vllm
    said: list[str] = []     # the log lines of tunelab.serve while the server starts
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("tunelab.serve")
    logger.addHandler(handler)
    try:
        models = serve_through_vllm(run_dir, EngineConfig(kind="vllm", python=VLLM_PYTHON, gpu_memory_utilization=0.1,
                                                          startup_timeout=300),
                                    precision="fp32", max_batch=8)
    finally:
        logger.removeHandler(handler)
    srv = BackgroundServer(create_app(models, api_key=KEY, limits=Limits(max_request_bytes=LIMIT))).start()
    vllm_url = models.default.engine.shared.url
    yield {"url": srv.url, "models": models, "said": said, "vllm": vllm_url}
    srv.stop()
    models.close()
    with pytest.raises((urllib.error.URLError, OSError)):     # the vLLM server is gone with the models
        urllib.request.urlopen(vllm_url + "/health", timeout=5)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def embedded_answers(run_dir):
    """Each checkpoint's and the base's greedy answers to PROMPTS on the embedded engine, as `tunelab serve CKPT`
    (without --engine) gives them: the same rendering and tokenising, tunelab's own decoding."""
    from tunelab.serve.engine import SamplingParams
    from tunelab.serve.models import ServedModel
    answers = {}
    for name, path in (("tiny-run/base", TINY_BASE), ("tiny-run/step-000010", run_dir / "checkpoints" / "step-000010"),
                       ("tiny-run/step-000020", run_dir / "checkpoints" / "step-000020")):
        with ServedModel.load(path, max_batch=8, precision="fp32", device="cpu") as served:
            texts = []
            for prompt in PROMPTS:
                ids = served.encode(served.render_chat([{"role": "user", "content": prompt}]))
                outs = list(served.engine.stream(ids, SamplingParams(max_tokens=16, temperature=0.0)))
                texts.append("".join(o.text for o in outs))
            answers[name] = texts
    return answers


def _chat(client, model, prompt, **kw):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=16, temperature=0, **kw)
    return r.choices[0].message.content


@needs_vllm
def test_the_base_and_every_servable_checkpoint_are_models(server, client, run_dir):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-run/step-000020", "tiny-run/base", "tiny-run/step-000010"]   # the default (last) first
    assert client.models.retrieve("tiny-run/step-000010").id == "tiny-run/step-000010"
    said = [m for m in server["said"] if "step-000005" in m]
    assert len(said) == 1 and "not served" in said[0] and "rank 64" in said[0], server["said"]
    assert (run_dir / "vllm.log").is_file()                                      # the run keeps vLLM's log
    with pytest.raises(openai.NotFoundError, match="tiny-run/base"):
        _chat(client, "tiny-run/step-000005", "hi")


@needs_vllm
def test_each_name_answers_as_the_embedded_engine_does_for_that_checkpoint(server, client, embedded_answers):
    """Every name, every prompt at once (the requests share vLLM's batches): greedy texts equal the embedded
    engine's for the same checkpoint; the adapters change the base's answers."""
    from concurrent.futures import ThreadPoolExecutor
    jobs = [(name, i) for name in embedded_answers for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda job: _chat(client, job[0], PROMPTS[job[1]]), jobs))
    theirs = {}
    for (name, i), text in zip(jobs, got):
        theirs.setdefault(name, []).append(text)
    same = sum(a == b for name in embedded_answers for a, b in zip(embedded_answers[name], theirs[name]))
    assert same >= 0.99 * len(jobs), {n: list(zip(embedded_answers[n], theirs[n])) for n in theirs}
    base = theirs["tiny-run/base"]
    for step in ("tiny-run/step-000010", "tiny-run/step-000020"):
        assert sum(a != b for a, b in zip(base, theirs[step])) >= len(PROMPTS) // 2
    r = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   json={"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 16, "temperature": 0})
    assert r.json()["model"] == "tiny-run/step-000020"          # no model named: the default
    assert r.json()["choices"][0]["message"]["content"] == theirs["tiny-run/step-000020"][0]


@needs_vllm
def test_streaming_gives_the_whole_answers_text(client):
    whole = _chat(client, "tiny-run/step-000010", PROMPTS[4])
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="tiny-run/step-000010", stream=True, max_tokens=16,
                                                temperature=0, messages=[{"role": "user", "content": PROMPTS[4]}]):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole and finish in ("stop", "length")
    r = client.completions.create(model="tiny-run/base", prompt="1 + 1 =", max_tokens=8, temperature=0, stop=["\n"],
                                  n=2, seed=2 ** 63 - 1)         # seed + 1 passes int64: wrapped for vLLM
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text and "\n" not in r.choices[0].text


@needs_vllm
def test_hostile_requests_fail_alone(server, client):
    """A body over the limit (413) and bad parameters (400) while a streaming answer runs: it finishes whole."""
    done = {}

    def good():
        done["text"] = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny-run/step-000020", stream=True, max_tokens=48, temperature=0,
            messages=[{"role": "user", "content": PROMPTS[1]}]) if c.choices)
    t = threading.Thread(target=good)
    t.start()
    headers = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(server["url"] + "/v1/chat/completions", headers=headers, timeout=60,
                     json={"model": "tiny-run/base", "messages": [{"role": "user", "content": "x" * (2 * LIMIT)}]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    for bad in ({"temperature": 5}, {"n": 100}, {"seed": 2 ** 64}, {"stop": ["s"] * 40}):
        r = httpx.post(server["url"] + "/v1/chat/completions", headers=headers, timeout=60,
                       json={"model": "tiny-run/step-000010", "messages": [{"role": "user", "content": "hi"}], **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), (bad, r.text)
    t.join(120)
    assert done.get("text")
    assert _chat(client, "tiny-run/step-000020", PROMPTS[1], max_completion_tokens=48) == done["text"]


@needs_vllm
def test_the_key_holds(server):
    url = server["url"]
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(url + "/v1/completions", json={"model": "tiny-run/base", "prompt": "hi"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


@needs_vllm
def test_prompt_logprobs_are_a_clear_400_and_output_logprobs_are_served(client):
    with pytest.raises(openai.BadRequestError, match="16668") as e:
        client.completions.create(model="tiny-run/step-000010", prompt="1 + 1 =", max_tokens=4, echo=True,
                                  logprobs=2)
    assert e.value.body["param"] == "echo"
    r = client.completions.create(model="tiny-run/step-000010", prompt="1 + 1 =", max_tokens=4, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) >= 3 and value == pytest.approx(max(top.values()), abs=1e-4)   # greedy: the likeliest
    assert _chat(client, "tiny-run/step-000010", PROMPTS[0])    # the server serves on


def test_sigterm_ends_a_serve_through_its_cleanup():
    """`tunelab serve` turns SIGTERM into SystemExit while it runs, so its `finally` stops a vLLM server it
    started (which runs in a session of its own); the handler before is back afterwards."""
    from tunelab.cli.serve import _StopOnTerm
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as e:
        with _StopOnTerm():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                cleaned.append(True)
    assert e.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_serve_verbs_take_the_engine_flags():
    from tunelab.cli import build_parser
    from tunelab.cli.arguments import engine_from_flags
    a = build_parser().parse_args(["serve", "runs/x", "--engine", "vllm", "--engine-python", "/opt/v/bin/python"])
    assert (engine_from_flags(a).kind, engine_from_flags(a).python) == ("vllm", "/opt/v/bin/python")
    g = build_parser().parse_args(["generate", "runs/x", "hi", "--engine-url", "http://127.0.0.1:8001"])
    assert (engine_from_flags(g).kind, engine_from_flags(g).url) == ("vllm", "http://127.0.0.1:8001")
    assert engine_from_flags(build_parser().parse_args(["serve", "runs/x"])) is None
    u = build_parser().parse_args(["ui", "--model", "a=runs/x", "--engine", "vllm"])
    assert engine_from_flags(u).kind == "vllm"
    r = build_parser().parse_args(["serve", "runs/x", "--engine-max-lora-rank", "64",
                                   "--engine-gpu-memory-utilization", "0.5"])
    assert (engine_from_flags(r).kind, engine_from_flags(r).max_lora_rank,
            engine_from_flags(r).gpu_memory_utilization) == ("vllm", 64, 0.5)
    from tunelab.errors import TunelabError
    both = build_parser().parse_args(["serve", "runs/x", "--engine-url", "http://h:1",
                                      "--engine-gpu-memory-utilization", "0.5"])
    with pytest.raises(TunelabError, match="engine") as e:
        engine_from_flags(both)
    assert "gpu_memory_utilization" in str(e.value)


@needs_vllm
def test_the_ui_arena_gets_every_checkpoint_of_a_run_from_one_vllm_server(server, run_dir, embedded_answers,
                                                                          tmp_path):
    """`tunelab ui --model arena=RUN --engine vllm`: the run's base and checkpoints are the UI's models, each
    answering as the embedded engine does for that checkpoint; closing the UI unloads its adapters (the server at
    engine.url serves on). A run of its own, its checkpoints named apart from the module's (vLLM names adapters)."""
    from tunelab.decoding.vllm_engine import VLLMEngine
    from tunelab.recipe.engine import EngineConfig
    from tunelab.serve.backends import GenerationSettings, build_backends, close_backends
    ui_run = tmp_path / "ui-run"
    for ours, theirs in (("step-000030", "step-000010"), ("step-000040", "step-000020")):
        shutil.copytree(run_dir / "checkpoints" / theirs, ui_run / "checkpoints" / ours)
    backends = build_backends([f"arena={ui_run}"], precision="fp32",
                              engine=EngineConfig(kind="vllm", url=server["vllm"]))
    try:
        assert sorted(backends) == ["arena/base", "arena/step-000030", "arena/step-000040"]
        greedy = GenerationSettings(temperature=0.0, max_tokens=16)
        for name, same_as in (("arena/base", "tiny-run/base"), ("arena/step-000030", "tiny-run/step-000010"),
                              ("arena/step-000040", "tiny-run/step-000020")):
            texts = ["".join(backends[name].chat_stream([{"role": "user", "content": p}], greedy))
                     for p in PROMPTS]
            assert texts == embedded_answers[same_as], name
    finally:
        close_backends(backends)
    assert sorted(VLLMEngine(server["vllm"], "").served_models()) == ["base", "step-000010", "step-000020"]
