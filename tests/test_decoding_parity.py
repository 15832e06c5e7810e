"""Train/eval/serve parity on real architectures: the same greedy tokens out of `tunelab eval`'s engine,
`model.generate` one prompt at a time, `tunelab serve` at temperature 0 (engine and HTTP) and the exported
merged model loaded with plain transformers — including stopping at an end-of-turn token that is not EOS —
and log-likelihoods equal to a plain forward pass.

Tiny Llama-3-style, Qwen2, Gemma-2 and GPT-2 models are built from their config classes (`tiny_archs`), one
per module run; each ends some answers with its end-of-turn token and lets others run to the token limit.
"""

from __future__ import annotations

import concurrent.futures
import queue

import pytest

from tiny_archs import BUILDERS, GEMMA2_SLIDING_WINDOW, MESSAGES, greedy_reference

MAX_NEW = 20


class Loaded:
    """A built tiny architecture loaded back from its directory, with `model.generate`'s answers."""

    def __init__(self, arch, model, tokenizer):
        self.arch, self.model, self.tokenizer = arch, model, tokenizer
        self.prompts = arch.prompts
        # (b): model.generate one prompt at a time, told the stop ids; `reference` without the stop token
        self.generated = [greedy_reference(model, tokenizer, p, arch.stop_ids, MAX_NEW) for p in self.prompts]
        self.reference = [strip_stop(ids, arch.stop_ids) for ids in self.generated]
        self.texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in self.reference]
        self.stopped = [len(ids) < MAX_NEW for ids in self.reference]


def strip_stop(ids: list[int], stop_ids) -> list[int]:
    return ids[:-1] if ids and ids[-1] in stop_ids else ids


def load(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module", params=list(BUILDERS))
def arch(request, tmp_path_factory) -> Loaded:
    import torch
    torch.set_num_threads(1)
    built = BUILDERS[request.param](tmp_path_factory.mktemp(request.param), MAX_NEW)
    return Loaded(built, *load(built.path))


def assert_same(got: list, want: list, what: str, prompts: list[str]) -> None:
    """Equal lists, else a message naming each prompt that differs and both outputs."""
    bad = [f"  prompt {i} ({prompts[i][-40:]!r}):\n    want {w!r}\n    got  {g!r}"
           for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert len(got) == len(want) and not bad, f"{what}: {len(bad)} of {len(want)} prompts differ\n" + "\n".join(bad)


def serve_engine(model, tokenizer, prompts: list[str], max_batch: int):
    """All prompts submitted to the serve engine at once at temperature 0; the finished Sequences in order."""
    from tunelab.serve.engine import Engine, SamplingParams, Sequence
    engine = Engine(model, tokenizer, max_batch=max_batch).start()
    try:
        done: queue.Queue = queue.Queue()
        params = SamplingParams(max_tokens=MAX_NEW, temperature=0)
        seqs = [Sequence(tokenizer(p, add_special_tokens=False)["input_ids"], params,
                         lambda out: out.finish_reason and done.put(out.seq), index=i)
                for i, p in enumerate(prompts)]
        engine.submit(seqs)
        for _ in seqs:
            done.get(timeout=120)
    finally:
        engine.close()
    return seqs


def eval_engine(model, tokenizer, prompts: list[str], batch_size: int) -> list[str]:
    from tunelab.decoding.embedded import generate_batched
    return generate_batched(model, tokenizer, prompts, max_new_tokens=MAX_NEW, batch_size=batch_size,
                            progress=False)


# --- the models are what they claim to be -------------------------------------------------------------

def test_tiny_models_have_their_architecture_and_stop_at_end_of_turn(arch):
    """The setup the parity tests rely on: the architecture's features, an end-of-turn token that is not EOS
    (GPT-2: EOS ends the turn), tunelab's stop set, and answers that end at end-of-turn before the limit
    while others run to it."""
    from tunelab.decoding.stops import end_of_turn_id, stop_token_ids
    a, cfg = arch.arch, arch.model.config
    eos_in_gen = arch.model.generation_config.eos_token_id
    eos_in_gen = {eos_in_gen} if isinstance(eos_in_gen, int) else set(eos_in_gen)
    assert (a.end_of_turn_id in eos_in_gen) == a.in_generation_config
    if a.name == "gpt2":
        assert a.end_of_turn_id == a.eos_id and cfg.model_type == "gpt2"
    else:
        assert a.end_of_turn_id != a.eos_id
        assert cfg.num_key_value_heads < cfg.num_attention_heads           # GQA
    if a.name == "gemma2":
        assert cfg.attn_logit_softcapping and cfg.final_logit_softcapping
        assert cfg.sliding_window == GEMMA2_SLIDING_WINDOW and "sliding_attention" in cfg.layer_types
        lengths = [len(arch.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in arch.prompts]
        assert sum(n > 2 * GEMMA2_SLIDING_WINDOW for n in lengths) >= 4
    assert len(arch.prompts) == len(MESSAGES) == 12
    assert end_of_turn_id(arch.tokenizer) == a.end_of_turn_id
    assert stop_token_ids(arch.model, arch.tokenizer) == a.stop_ids
    ended = [ids for ids in arch.generated if ids[-1] == a.end_of_turn_id]
    assert any(1 < len(ids) < MAX_NEW for ids in ended)    # some answer ends at end-of-turn, after a token or more
    assert not all(arch.stopped)                           # and some run to the token limit


@pytest.mark.patched
def test_prefill_of_a_padded_batch_equals_each_prompt_alone(arch):
    """The decoding core's prefill (left padding, or the prompts' shared prefixes run once as a trie) gives
    each row the last-position logits of a plain forward pass over that prompt alone."""
    import torch

    from tunelab.decoding.batch import DecodeBatch
    from tunelab.decoding.stops import pad_token_id
    from tunelab.decoding.batch import tree_prefill_ok
    # the trie prefill (`tree_prefill.py`) runs every architecture here whose cache keeps all positions; the
    # sliding window of Gemma-2 keeps the padded prefill
    assert tree_prefill_ok(arch.model) or arch.arch.name == "gemma2"
    rows = [arch.tokenizer(p, add_special_tokens=False)["input_ids"] for p in arch.prompts]
    with torch.inference_mode():
        alone = torch.stack([arch.model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
        for share_prefix in (False, True):
            _, logits = DecodeBatch.prefill(arch.model, rows, pad_token_id(arch.tokenizer, arch.arch.stop_ids),
                                            MAX_NEW, share_prefix=share_prefix)
            worst = (logits - alone).abs().amax(-1)
            bad = worst.gt(1e-4).nonzero().flatten().tolist()
            assert not bad, f"share_prefix={share_prefix}: rows {bad} of lengths {[len(r) for r in rows]} " \
                f"differ by up to {worst.max():.3g}"


# --- (a) the eval engine ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_eval_engine_equals_generate(arch, batch_size):
    texts = eval_engine(arch.model, arch.tokenizer, arch.prompts, batch_size)
    assert_same(texts, arch.texts, f"eval engine (batch {batch_size}) vs model.generate", arch.prompts)
    for text, stopped in zip(texts, arch.stopped):   # an answer that ended at end-of-turn is shorter
        if stopped:
            assert len(arch.tokenizer(text, add_special_tokens=False)["input_ids"]) < MAX_NEW


def sampled_reference(model, prompt_ids: list[int], stops, params, seed: int) -> list[int]:
    """A seeded sampled completion the slow way: the whole sequence through the model at every step (no cache,
    no padding, no batch), each token drawn by `sample_next` from a generator seeded as the row's."""
    import torch

    from tunelab.decoding.sampling import sample_next
    generator = torch.Generator().manual_seed(seed)
    ids, out = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            tok = int(sample_next(model(input_ids=torch.tensor([ids])).logits[:, -1], [params], [generator])[0])
            if tok in stops:
                break
            out.append(tok)
            ids.append(tok)
    return out


@pytest.mark.parametrize("batch_size", [1, 7])
def test_sampled_rows_equal_a_seeded_draw_without_the_cache(arch, batch_size):
    """The batched decoder drawing tokens (GRPO's rollouts: each prompt several times, each row its own seeded
    generator) gives each row the completion a one-row, cache-free loop draws with the same seed, whatever else
    shares its batch; temperature 0 rows in the same batch stay greedy."""
    import torch

    from tunelab.decoding.embedded import decode_rows
    from tunelab.decoding.sampling import SamplingParams
    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    stops = stop_token_ids(arch.model, arch.tokenizer)
    encoded = arch.tokenizer(arch.prompts[:3], add_special_tokens=False)["input_ids"]
    rows = [ids for ids in encoded for _ in range(3)]  # each prompt three times, as a group of generations
    params = [SamplingParams(temperature=t, top_p=p, top_k=k) for t, p, k in
              [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 20), (0.0, 1.0, 0), (1.0, 0.95, 0), (0.5, 1.0, 0),
               (1.0, 1.0, 0), (2.0, 1.0, 0), (1.0, 0.5, 5)]]
    seeds = [1000 + i for i in range(len(rows))]
    with torch.inference_mode():
        got, _ = decode_rows(arch.model, rows, MAX_NEW, stops, pad_token_id(arch.tokenizer, stops), batch_size,
                             sampling=params, generators=[torch.Generator().manual_seed(s) for s in seeds])
    want = [sampled_reference(arch.model, r, stops, p, s) for r, p, s in zip(rows, params, seeds)]
    assert got == want
    assert got[3] == arch.reference[1]  # the temperature-0 row is the greedy answer
    assert len({tuple(g) for g in got[:3]}) > 1  # a group's samples differ


# --- (c) the serve engine and the HTTP server ---------------------------------------------------------

@pytest.mark.parametrize("max_batch", [5, 12])
def test_serve_engine_at_temperature_0_equals_generate(arch, max_batch):
    seqs = serve_engine(arch.model, arch.tokenizer, arch.prompts, max_batch)
    assert_same([s.output_ids for s in seqs], arch.reference,
                f"serve engine (max_batch {max_batch}) vs model.generate", arch.prompts)
    assert_same([s.text for s in seqs], arch.texts, "serve engine text vs model.generate", arch.prompts)
    assert [s.finish_reason for s in seqs] == ["stop" if s else "length" for s in arch.stopped]


def test_http_chat_completions_at_temperature_0_equal_generate(arch):
    """`tunelab serve` for real: uvicorn on a loopback port, concurrent /v1/chat/completions requests."""
    httpx = pytest.importorskip("httpx")
    from tunelab.serve.api import BackgroundServer, create_app
    from tunelab.serve.models import ServedModel
    served = ServedModel(arch.model, arch.tokenizer, arch.arch.name, max_batch=8)
    srv = BackgroundServer(create_app(served)).start()

    def ask(message: str) -> dict:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120, json={
            "model": served.name, "messages": [{"role": "user", "content": message}],
            "temperature": 0, "max_tokens": MAX_NEW})
        r.raise_for_status()
        return r.json()["choices"][0]

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            choices = list(pool.map(ask, MESSAGES))
    finally:
        srv.stop()
        served.close()
    assert_same([c["message"]["content"] for c in choices], arch.texts, "HTTP chat completions vs model.generate",
                arch.prompts)
    assert [c["finish_reason"] for c in choices] == ["stop" if s else "length" for s in arch.stopped]


# --- (d) the exported merged model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(arch, tmp_path_factory):
    """A LoRA adapter with non-zero B on the tiny model, saved with the tokenizer and exported merged with
    `tunelab.convert.export.export` (float32); returns (merged model, tokenizer, peft model, export dir)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.convert.export import export
    root = tmp_path_factory.mktemp(f"{arch.arch.name}-export")
    base, tokenizer = load(arch.arch.path)
    torch.manual_seed(4)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=list(arch.arch.lora_targets),
                                                 fan_in_fan_out=arch.arch.name == "gpt2"))  # GPT-2's Conv1D
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    peft_model.eval()
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    out = export(root / "adapter", root / "merged", dtype="float32")
    merged, merged_tok = load(out)
    return merged, merged_tok, peft_model, out


def test_export_merges_the_adapter(arch, exported):
    import torch
    merged, tokenizer, peft_model, _ = exported
    ids = torch.tensor([tokenizer(arch.prompts[-1], add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        want = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base = arch.model(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-3                     # the adapter changes the model
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # and the export carries it


def test_exported_model_engines_equal_generate(arch, exported):
    """(a) and (c) on the exported model equal its `model.generate` given the stop ids, and it still ends some
    answers at end-of-turn."""
    merged, tokenizer, _, _ = exported
    reference = [strip_stop(greedy_reference(merged, tokenizer, p, arch.arch.stop_ids, MAX_NEW),
                            arch.arch.stop_ids) for p in arch.prompts]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in reference]
    assert any(len(ids) < MAX_NEW for ids in reference)
    assert_same(eval_engine(merged, tokenizer, arch.prompts, 5), texts,
                "eval engine vs model.generate on the export", arch.prompts)
    seqs = serve_engine(merged, tokenizer, arch.prompts, 5)
    assert_same([s.output_ids for s in seqs], reference, "serve engine vs model.generate on the export",
                arch.prompts)


def test_exported_model_stops_at_end_of_turn_with_plain_transformers(arch, exported):
    """Loaded with plain transformers and generating without being told any stop id, the export stops
    where tunelab does: its generation_config.json lists EOS and the end-of-turn token, even when the
    checkpoint's own generation_config did not (Qwen2 here: only the chat template says `<|im_end|>`)."""
    import json

    import torch
    merged, tokenizer, _, out = exported
    listed = json.loads((out / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    listed = {listed} if isinstance(listed, int) else set(listed or ())
    assert arch.arch.stop_ids <= listed, f"exported generation_config.json eos_token_id = {sorted(listed)}, " \
        f"lacks {sorted(arch.arch.stop_ids - listed)} (stop ids {sorted(arch.arch.stop_ids)})"
    plain = []
    for p in arch.prompts:
        ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            new = merged.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=MAX_NEW)[0, ids.shape[1]:].tolist()
        plain.append(strip_stop(new, arch.arch.stop_ids))
    seqs = serve_engine(merged, tokenizer, arch.prompts, 12)
    assert_same(plain, [s.output_ids for s in seqs], "plain transformers generate on the export (vs serve)",
                arch.prompts)
    assert_same([tokenizer.decode(ids, skip_special_tokens=True) for ids in plain],
                eval_engine(merged, tokenizer, arch.prompts, 12), "plain generate vs eval engine", arch.prompts)


# --- log-likelihoods ----------------------------------------------------------------------------------

def plain_loglik(model, tokenizer, context: str, continuation: str) -> tuple[float, bool, int]:
    """Sum of the continuation's log-probabilities from one forward pass over context + continuation
    (tokenised separately without special tokens, then concatenated)."""
    import torch
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ctx + cont])).logits[0, len(ctx) - 1: -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(cont)
    lp = logprobs.gather(-1, target[:, None]).squeeze(-1).double().sum()
    return float(lp), bool((logprobs.argmax(-1) == target).all()), len(cont)


def greedy_text(tokenizer, ids: list[int]) -> str:
    """The longest start of a greedy answer whose text tokenises back to the same ids (a byte-level answer
    can end inside a character); " ok" if not even its first token does."""
    for k in range(len(ids), 0, -1):
        text = tokenizer.decode(ids[:k])
        if tokenizer(text, add_special_tokens=False)["input_ids"] == ids[:k]:
            return text
    return " ok"


@pytest.mark.parametrize("share_context", [True, False])
def test_loglikelihood_equals_a_plain_forward_pass(arch, share_context):
    from tunelab.metrics.loglik import loglikelihood
    pairs = []
    for prompt, ids in zip(arch.prompts, arch.reference):  # the model's own answer (greedy) and two others
        pairs += [(prompt, greedy_text(arch.tokenizer, ids)), (prompt, " Sure, here it is."), (prompt, "好的，我明白了。")]
    pairs += [("The quick brown fox", " jumps over the lazy dog."), ("计算 12.5 + 7.25 =", " 19.75"),
              ("The quick brown fox", " sleeps.")]
    results = loglikelihood(arch.model, arch.tokenizer, pairs, batch_size=7, share_context=share_context)
    for (context, continuation), got in zip(pairs, results):
        lp, greedy, n = plain_loglik(arch.model, arch.tokenizer, context, continuation)
        assert got.tokens == n
        assert got.logprob == pytest.approx(lp, abs=1e-5), (context[-40:], continuation)
        assert got.is_greedy == greedy, (context[-40:], continuation)
    assert any(r.is_greedy for r in results)     # the greedy answers are recognised as such
