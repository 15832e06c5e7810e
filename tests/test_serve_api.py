"""`tunelab serve` for real: uvicorn on a loopback port in a thread, a random-init micro Llama saved as a run
directory, driven by the official `openai` client (and httpx for raw requests)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
TEXTS = ([f"{a} + {b} = {a + b}" for a in range(0, 60, 3) for b in range(0, 40, 7)]
         + ["The quick brown fox jumps over the lazy dog.", "Write one sentence about autumn.",
            "计算 12.5 + 7.25 = ?", "用一句话介绍你自己。", "### Instruction:\nAdd the numbers.\n\n### Response:\n"] * 5)


def build_tiny_run(root: Path, name: str = "tiny-run", seed: int = 0) -> Path:
    """A random-init micro Llama (hidden 64, 2 layers) + byte-level BPE tokenizer with the alpaca chat template,
    saved as a tunelab run directory with one checkpoint. Builds in about a second."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.data.templates import PromptTemplate, save_template
    from tunelab.model.presets import preset_config
    from tunelab.model.tokenizer import train_bpe_tokenizer

    template = PromptTemplate("alpaca")
    tok = train_bpe_tokenizer(TEXTS, vocab_size=320, chat_template=template.chat_template())
    config = preset_config("micro", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    run = root / name
    ckpt = run / "checkpoints" / "step-000010"
    model.save_pretrained(ckpt / "model")
    tok.save_pretrained(ckpt / "model")
    save_template(template, ckpt / "model")
    (ckpt / "state.json").write_text(json.dumps({"step": 10}), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.models import ServedModel
    torch.set_num_threads(1)
    run = build_tiny_run(tmp_path_factory.mktemp("serve"))
    served = ServedModel.load(run, max_batch=16)
    srv = BackgroundServer(create_app(served, api_key=KEY)).start()
    yield {"url": srv.url, "served": served}
    srv.stop()
    served.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def stats(server) -> dict:
    return httpx.get(server["url"] + "/stats", headers={"Authorization": f"Bearer {KEY}"}).json()


def test_cli_verbs_parse():
    from tunelab.cli import build_parser
    a = build_parser().parse_args(["serve", "runs/x", "--port", "9000", "--api-key", "k", "--max-batch", "4"])
    assert (a.model, a.port, a.api_key, a.max_batch, a.host) == ("runs/x", 9000, "k", 4, "127.0.0.1")
    u = build_parser().parse_args(["ui", "--model", "a=runs/a", "--model", "b=http://h:8000/v1", "--db", "v.sqlite"])
    assert u.model == ["a=runs/a", "b=http://h:8000/v1"] and u.db == "v.sqlite" and u.port == 7860


@pytest.mark.parametrize("argv, flag", [
    (["serve", "runs/x", "--port", "70000"], "--port"),     # reached the socket: OverflowError traceback
    (["serve", "runs/x", "--port", "-1"], "--port"),
    (["ui", "--port", "65536"], "--port"),
    (["serve", "runs/x", "--max-batch", "0"], "--max-batch"),
    (["ui", "--max-batch", "-2"], "--max-batch"),
    (["ui", "--min-votes", "-1"], "--min-votes"),
    (["data", "corpus", "--show", "c", "--limit", "-5"], "--limit"),  # printed nothing, exit 0
    (["data", "check", "r.yaml", "--samples", "-1"], "--samples"),
    (["data", "glue", "--task", "CoLA", "--data-dir", "d", "--limit", "0"], "--limit"),
])
def test_out_of_range_numbers_on_the_command_line_are_refused(argv, flag, capsys):
    from tunelab.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err


def test_rows_joining_mid_flight_decode_as_if_alone(server):
    """Continuous batching: sequences merged into a running batch (left-padded KV cache rows) produce the same
    greedy tokens as each one served alone."""
    import queue

    from tunelab.serve.engine import SamplingParams, Sequence
    served = server["served"]
    engine = served.engine
    prompts = [served.encode(t) for t in ["hello there", "1 + 2 = 3 and then some more words", "x", "计算 12.5 + 7.25"]]
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    alone = [list(engine.stream(ids, params))[-1].seq.output_ids for ids in prompts]
    before = dict(engine.stats)
    q: queue.Queue = queue.Queue()
    seqs = [Sequence(ids, params, q.put, index=k) for k, ids in enumerate(prompts)]
    for s in seqs:                  # each arrives once the earlier ones have decoded a couple of steps:
        steps = engine.stats["steps"]  # mid-flight, however fast or slow this machine decodes
        engine.submit([s])
        deadline = time.time() + 30
        while engine.stats["steps"] < steps + 2 and time.time() < deadline:
            time.sleep(0.001)
    finished = 0
    while finished < len(seqs):
        finished += q.get(timeout=60).finish_reason is not None
    assert [s.output_ids for s in seqs] == alone
    steps = engine.stats["steps"] - before["steps"]
    rows = engine.stats["batch_rows_sum"] - before["batch_rows_sum"]
    assert rows / steps > 1.5                       # they did share decode steps
    assert engine.stats["prefills"] - before["prefills"] >= 2   # and joined at different times


def test_resolves_run_dir_health_models(server, client):
    assert server["served"].name == "tiny-run/step-000010"
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"   # no key needed
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-run/step-000010"]


def test_chat_completion_uses_chat_template_and_counts_usage(server, client):
    served = server["served"]
    r = client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "What is 2 + 3?"}],
                                       max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    prompt = served.render_chat([{"role": "user", "content": "What is 2 + 3?"}])
    assert prompt.endswith("### Response:\n") and "### Instruction:\nWhat is 2 + 3?" in prompt
    assert r.usage.prompt_tokens == len(served.encode(prompt))
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(server, client):
    kw = dict(model=server["served"].name, messages=[{"role": "user", "content": "Hello"}], max_tokens=20,
              temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0].message.content
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == full and finish == "length"
    assert usage.completion_tokens == 20
    assert sum(1 for p in pieces if p) > 3     # streamed in several chunks, not one


def test_raw_sse_format(server):
    body = {"model": server["served"].name, "prompt": "1 + 1 =", "max_tokens": 4, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", server["url"] + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_n_choices_and_seed_reproducibility(server, client):
    kw = dict(model=server["served"].name, messages=[{"role": "user", "content": "Tell me a story"}],
              max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(n=3, seed=123, **kw)
    b = client.chat.completions.create(n=3, seed=123, **kw)
    c = client.chat.completions.create(n=3, seed=456, **kw)
    ta = [ch.message.content for ch in sorted(a.choices, key=lambda ch: ch.index)]
    tb = [ch.message.content for ch in sorted(b.choices, key=lambda ch: ch.index)]
    tc = [ch.message.content for ch in sorted(c.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in sorted(a.choices, key=lambda ch: ch.index)] == [0, 1, 2]
    assert ta == tb                          # same seed, same answers
    assert ta != tc                          # another seed, other answers
    assert len(set(ta)) > 1                  # the n choices differ from each other
    assert a.usage.completion_tokens == 48


def test_top_k_1_and_top_p_small_are_greedy(server, client):
    kw = dict(model=server["served"].name, prompt="The quick", max_tokens=10, extra_body={"ignore_eos": True})
    greedy = client.completions.create(temperature=0, **kw).choices[0].text
    assert client.completions.create(temperature=1.5, extra_body={"ignore_eos": True, "top_k": 1},
                                     model=kw["model"], prompt="The quick", max_tokens=10).choices[0].text == greedy
    assert client.completions.create(temperature=1.0, top_p=1e-6, **kw).choices[0].text == greedy


def test_a_model_without_generation_config_keeps_openai_defaults(server, client):
    """build_tiny_run's model has only the config transformers derives from config.json: it states no decoding,
    so a request that leaves sampling out gets OpenAI's defaults (temperature 1, 16 completion tokens)."""
    from tunelab.decoding.generation_config import SamplingDefaults
    assert server["served"].defaults == SamplingDefaults()
    kw = dict(model=server["served"].name, prompt="1 + 2 =", extra_body={"ignore_eos": True})
    assert client.completions.create(**kw).usage.completion_tokens == 16
    assert len({client.completions.create(seed=s, **kw).choices[0].text for s in range(3)}) > 1   # sampled


def test_stop_strings(server, client):
    kw = dict(model=server["served"].name, prompt="12 + 7 =", max_tokens=30, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    assert len(full) >= 6
    stop = full[3:5]
    assert stop and stop not in full[:3]
    r = client.completions.create(stop=[stop, "@@never@@"], **kw)
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw)
                       if c.choices)
    assert streamed == full[:full.index(stop)]


def test_completion_prompt_forms(server, client):
    served = server["served"]
    ids = served.encode("1 + 2 =")
    kw = dict(model=served.name, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    by_text = client.completions.create(prompt="1 + 2 =", **kw).choices[0].text
    assert client.completions.create(prompt=ids, **kw).choices[0].text == by_text
    many = client.completions.create(prompt=["1 + 2 =", "3 + 4 ="], **kw)
    assert [c.index for c in many.choices] == [0, 1] and many.choices[0].text == by_text
    two_ids = client.completions.create(prompt=[ids, served.encode("3 + 4 =")], **kw)
    assert [c.text for c in two_ids.choices] == [c.text for c in many.choices]
    assert many.usage.prompt_tokens == len(ids) + len(served.encode("3 + 4 ="))


def test_echo_logprobs_for_loglikelihood(server, client):
    """What lm-evaluation-harness local-completions sends for log-likelihood: token ids, echo, max_tokens 1."""
    import torch
    served = server["served"]
    ctx, cont = served.encode("12 + 7 ="), served.encode(" 19")
    r = client.completions.create(model=served.name, prompt=[ctx + cont], max_tokens=1, temperature=0,
                                  logprobs=1, echo=True, seed=1234)
    lp = r.choices[0].logprobs
    n = len(ctx) + len(cont) + 1
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs[1:])          # top-1 plus the actual token
    # the same numbers as a plain forward pass
    with torch.no_grad():
        logits = served.model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
    want = [float(logits[i - 1, t]) for i, t in enumerate(ctx + cont) if i > 0]
    assert lp.token_logprobs[1:len(ctx) + len(cont)] == pytest.approx(want, abs=1e-4)
    # the harness's greedy check: the chosen token's logprob equals the top-1's when it is the argmax
    for i, tok in enumerate(ctx + cont):
        if i > 0 and int(logits[i - 1].argmax()) == tok:
            assert lp.token_logprobs[i] == max(lp.top_logprobs[i].values())
    echo0 = client.completions.create(model=served.name, prompt="12 + 7 = 19", max_tokens=0, echo=True,
                                      logprobs=3)
    c = echo0.choices[0]
    assert c.text == "12 + 7 = 19" and len(c.logprobs.tokens) == len(served.encode("12 + 7 = 19"))
    # top 3 plus the actual token (fewer when two token ids decode to the same string, e.g. partial UTF-8)
    assert all(1 <= len(t) <= 4 for t in c.logprobs.top_logprobs[1:])
    assert all(max(t.values()) >= x for t, x in zip(c.logprobs.top_logprobs[1:], c.logprobs.token_logprobs[1:]))
    assert echo0.usage.completion_tokens == 0


def test_generated_logprobs_chat_and_completions(server, client):
    served = server["served"]
    r = client.completions.create(model=served.name, prompt="hello", max_tokens=5, logprobs=2, temperature=0,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and "".join(lp.tokens) == r.choices[0].text
    c = client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, logprobs=True, top_logprobs=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    content = c.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)   # greedy = top-1


def test_tokenize_detokenize_tokenizer_info(server):
    served, h = server["served"], {"Authorization": f"Bearer {KEY}"}
    t = httpx.post(server["url"] + "/tokenize", json={"prompt": "1 + 2 = 3", "add_special_tokens": False},
                   headers=h).json()
    assert t["tokens"] == served.encode("1 + 2 = 3") and t["count"] == len(t["tokens"])
    assert httpx.post(server["url"] + "/detokenize", json={"tokens": t["tokens"]}, headers=h).json()["prompt"] == \
        "1 + 2 = 3"
    info = httpx.get(server["url"] + "/tokenizer_info", headers=h).json()
    assert info["eos_token"] == "<|endoftext|>" and "### Response" in info["chat_template"]
    assert info["model_max_length"] == served.context_len
    m = httpx.post(server["url"] + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]},
                   headers=h).json()
    assert m["tokens"] == served.encode(served.render_chat([{"role": "user", "content": "hi"}]))


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_bad_requests_get_openai_error_bodies(server, client):
    url, h = server["url"], {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    name = server["served"].name
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": name, "messages": [], "max_tokens": 3}, headers=h)
    assert r.status_code == 400 and error_of(r)["param"] == "messages"
    r = httpx.post(url + "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "x"}],
                                                       "temperature": "hot"}, headers=h)
    assert r.status_code == 400 and error_of(r)["param"] == "temperature"
    r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "x", "n": 0}, headers=h)
    assert r.status_code == 400 and error_of(r)["param"] == "n"
    r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": [[1, 2], [10 ** 9]]}, headers=h)
    assert r.status_code == 400 and "out of range" in error_of(r)["message"]
    r = httpx.post(url + "/v1/completions", json={"model": "no-such-model", "prompt": "x"}, headers=h)
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:      # context too long
        client.completions.create(model=name, prompt="7 " * 600, max_tokens=5)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):           # prompt fits, prompt + max_tokens does not
        client.completions.create(model=name, prompt=[1] * 500, max_tokens=100)
    assert httpx.get(url + "/health").status_code == 200   # and the server is still up


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(server["url"] + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"


def test_concurrent_clients_are_batched(server, client):
    name = server["served"].name
    before = stats(server)
    n_clients = 8
    barrier = threading.Barrier(n_clients)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait()
            if i % 2:
                text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=24,
                    temperature=0.8, seed=i, stream=True, extra_body={"ignore_eos": True}) if c.choices)
            else:
                text = client.completions.create(model=name, prompt=f"{i} + {i} =", max_tokens=24, seed=i,
                                                 extra_body={"ignore_eos": True}).choices[0].text
            results[i] = text
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == n_clients and all(results.values())
    after = stats(server)
    assert after["max_batch"] > 1
    steps = after["steps"] - before["steps"]
    assert steps < n_clients * 23      # one-at-a-time would need 8 × 23 decode steps
    assert after["active"] == 0


def test_disconnecting_stream_frees_its_slot(server, client):
    name = server["served"].name
    before = stats(server)
    body = {"model": name, "prompt": "a long story:", "max_tokens": 480, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server["url"] + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                got += 1
            if got >= 3:
                break          # leave mid-stream: closing the response closes the connection
    deadline = time.time() + 20
    while time.time() < deadline:
        s = stats(server)
        if s["aborted"] > before["aborted"] and s["active"] == 0:
            break
        time.sleep(0.1)
    s = stats(server)
    assert s["aborted"] > before["aborted"] and s["active"] == 0
    assert s["generated_tokens"] - before["generated_tokens"] < 480
    r = client.completions.create(model=name, prompt="after", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")   # peft calling a deprecated transformers API
def test_serves_an_adapter_dir_merged_onto_its_base(tmp_path):
    """A LoRA adapter directory (adapter_config.json names its base) is loaded onto the base and merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.serve.engine import SamplingParams
    from tunelab.serve.models import ServedModel
    base_dir = build_tiny_run(tmp_path) / "checkpoints" / "step-000010" / "model"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)      # a non-zero adapter, so merging changes the outputs
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    served = ServedModel.load(adapter_dir, name="with-adapter")
    plain = ServedModel.load(base_dir, name="base")
    try:
        assert not any("lora" in n for n, _ in served.model.named_parameters())      # merged
        ids = served.encode(served.render_chat([{"role": "user", "content": "hi"}]))
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        with torch.no_grad():
            want = peft_model.merge_and_unload()(torch.tensor([ids])).logits[0, -1].argmax().item()
        out = list(served.engine.stream(ids, params))[-1].seq.output_ids
        assert out[0] == want and len(out) == 12
        assert out != list(plain.engine.stream(ids, params))[-1].seq.output_ids
    finally:
        served.close()
        plain.close()
