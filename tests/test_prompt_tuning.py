"""Prompt tuning (issue 55's last adapter kind): peft's PROMPT_TUNING, run by tunelab's own paths. Its virtual tokens
go before every input inside `PeftModel.forward`; tunelab's loss, decoding core and metrics do not use that forward,
so each is checked here against it: the training loss against peft's loss, greedy decoding (batched, left-padded,
a shared prefix) against peft's `generate`, log-likelihoods against peft's logits. The run trains, saves, loads
back through plain peft, and is counted as peft counts it; export refuses it by name (nothing to merge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import lora_sections, write_recipe
from tunelab.errors import TunelabError
from tunelab.model.lora import AdapterSpec, add_adapter, count_parameters
from tunelab.recipe import load_recipe

TINY_BASE = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
N = 6  # virtual tokens


def _base():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32)


def _prompt_tuned(seed: int = 0, init_text: str | None = None):
    torch.manual_seed(seed)
    model = add_adapter(_base(), AdapterSpec("prompt_tuning", virtual_tokens=N, init_text=init_text))
    with torch.no_grad():  # away from the vocabulary rows it starts from, so a wrong offset shows
        model.prompt_encoder["default"].embedding.weight.add_(torch.randn_like(
            model.prompt_encoder["default"].embedding.weight))
    return model.eval()


def test_counted_as_peft_counts_it_and_the_ratio_cli_agrees():
    base_total = sum(p.numel() for p in _base().parameters())
    model = _prompt_tuned()
    trainable, total = count_parameters(model)
    peft_trainable, peft_all = model.get_nb_trainable_parameters()
    assert trainable == peft_trainable == N * model.config.hidden_size
    assert total == base_total and peft_all == base_total + trainable
    from tunelab.scoring import adapter_param_counts
    counts = adapter_param_counts(str(TINY_BASE), 1, None, adapter="prompt_tuning", virtual_tokens=N)
    assert (counts["trainable"], counts["total"]) == (trainable, total)


def test_text_init_starts_from_the_texts_token_embeddings():
    from tokenizers import Tokenizer
    model = add_adapter(_base(), AdapterSpec("prompt_tuning", virtual_tokens=N, init_text="the answer"))
    ids = Tokenizer.from_file(str(TINY_BASE / "tokenizer.json")).encode("the answer").ids
    ids = (ids * N)[:N]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight,
                               model.get_input_embeddings().weight[ids])


def test_the_loss_is_peft_own_forward_loss():
    """Over many generated batches: rows of 2 to 12 tokens, right padding, a prompt of 1 to 5 tokens not trained.
    At least the first: tunelab never trains a row's first token (`data.packing._cut`), which peft's forward would
    predict from the last virtual token."""
    from tunelab.data.packing import IGNORE
    from tunelab.train.methods.sft_loss import LabelledLoss
    model = _prompt_tuned()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        rows = int(torch.randint(1, 5, (1,), generator=g))
        lengths = torch.randint(2, 13, (rows,), generator=g)
        width = int(lengths.max())
        ids = torch.randint(3, vocab, (rows, width), generator=g)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        ids[mask == 0] = 0
        labels = ids.clone()
        for r, prompt in enumerate(torch.randint(1, 6, (rows,), generator=g).tolist()):
            labels[r, :min(prompt, int(lengths[r]) - 1)] = IGNORE
        labels[mask == 0] = IGNORE
        count = int((labels[:, 1:] != IGNORE).sum())
        model.zero_grad()
        ours = LabelledLoss(model)(input_ids=ids, labels=labels, num_items_in_batch=count, attention_mask=mask)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours.backward()
    assert model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0  # the virtual tokens learn


def test_greedy_decoding_matches_peft_generate_row_by_row():
    """Generated rows of 1 to 12 tokens, most behind a shared 5-token header as a chat template's, some without,
    decoded in batches of 1, 3 and 8 (left-padded, continuous batching) against peft's `generate` one row at a time."""
    from tunelab.decoding.embedded import decode_rows
    model = _prompt_tuned(1)
    vocab = model.config.vocab_size
    eos = model.generation_config.eos_token_id
    stops = frozenset([eos] if isinstance(eos, int) else eos or [])
    g = torch.Generator().manual_seed(0)
    head = torch.randint(3, vocab, (5,), generator=g).tolist()
    rows = [(head if i % 4 else []) + torch.randint(3, vocab, (int(torch.randint(1, 13, (1,), generator=g)),),
                                                    generator=g).tolist() for i in range(16)]
    want = []
    for row in rows:
        out = model.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                             max_new_tokens=8, do_sample=False)[0, len(row):].tolist()
        want.append([t for t in out if t not in stops])
    for share, batch in ((rows, 1), (rows, 3), ([r for r in rows if r[:5] == head], 8), (rows, 8)):
        got, _ = decode_rows(model, share, 8, stops, 0, batch_size=batch)
        assert got == [want[rows.index(r)] for r in share], batch


def test_log_likelihoods_match_peft_logits():
    from tunelab.decoding.forward import logits_at
    from tunelab.metrics.loglik import _score_groups, _score_pairs
    model = _prompt_tuned(2)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, vocab, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
                for _ in range(8)]
    pairs = [(i, contexts[i % 8], torch.randint(3, vocab, (int(torch.randint(1, 5, (1,), generator=g)),),
                                                generator=g).tolist()) for i in range(24)]  # 3 a context

    def peft_logp(ctx, cont):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, N:].log_softmax(-1)
        return sum(logits[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))

    want = [peft_logp(c, t) for _, c, t in pairs]
    with torch.no_grad():
        plain: dict = {}
        _score_pairs(model, [(i, c, t) for i, c, t in pairs], plain, 4, 64, 0, torch.device("cpu"), _NoBar())
        grouped: dict = {}
        groups = {}
        for i, c, t in pairs:
            groups.setdefault(tuple(c), []).append((i, t))
        _score_groups(model, list(groups.items()), grouped, 4, 0, torch.device("cpu"), _NoBar())
    for results in (plain, grouped):
        got = [results[i].logprob for i, _, _ in pairs]
        assert got == pytest.approx(want, abs=1e-4)
    # logits at kept positions without a cache: the input's own positions, not the virtual tokens'
    ids = torch.tensor([[1, 5, 9, 14]])
    keep = torch.tensor([[False, True, False, True]])
    with torch.no_grad():
        torch.testing.assert_close(logits_at(model, ids, torch.ones_like(ids), keep),
                                   model(input_ids=ids).logits[0, N:][keep[0]], atol=1e-5, rtol=1e-5)


class _NoBar:
    def update(self, n):
        pass


def test_a_run_trains_saves_loads_through_plain_peft_and_export_refuses_it(tmp_path):
    from peft import PeftModel

    from tunelab.convert.export import export
    from tunelab.model.loading import load_for_inference
    from tunelab.runs import list_checkpoints
    from tunelab.train.loop import train
    sections = lora_sections(TINY_BASE, max_steps=6, batch_size=4, lr=3e-2, num_checkpoints=2)
    sections["lora"] = {"enabled": True, "adapter": "prompt_tuning", "virtual_tokens": N}
    sections["data"]["packing"] = False
    recipe = load_recipe(write_recipe(tmp_path, "pt", **sections))
    summary = train(recipe)
    first, last = (c / "adapter" for c in list_checkpoints(recipe.run_dir))
    config = json.loads((last / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == N
    assert summary["trainable_params"] == N * _base().config.hidden_size
    assert summary["total_params"] == sum(p.numel() for p in _base().parameters())
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    with torch.no_grad():
        early = PeftModel.from_pretrained(_base(), first).eval()(input_ids=ids).logits
        theirs = PeftModel.from_pretrained(_base(), last).eval()(input_ids=ids).logits
        assert not torch.allclose(early, theirs, atol=1e-4)  # it trained between the checkpoints
        ours, _ = load_for_inference(str(last), merge=True)  # stays a peft model: nothing to merge
        from tunelab.decoding.forward import forward
        torch.testing.assert_close(forward(ours, input_ids=ids).logits, theirs[:, N:], atol=1e-5, rtol=1e-5)
    # served as the run's adapter: the server's continuous-batching engine answers as peft's generate does
    from tunelab.serve.engine import SamplingParams
    from tunelab.serve.models import ServedModel
    served = ServedModel.load(recipe.run_dir, max_batch=4)
    try:
        peft_model = PeftModel.from_pretrained(_base(), last).eval()
        for text in ("12 * 34 = ", "7 * 8 = "):  # past the end-of-text it would stop at: six tokens each
            ids = served.encode(text)
            got = list(served.engine.stream(ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)))
            want = list(ids)
            with torch.no_grad():  # greedy by peft's own forward, the whole sequence each token
                for _ in range(6):
                    want.append(int(peft_model(input_ids=torch.tensor([want])).logits[0, -1].argmax()))
            assert got[-1].seq.output_ids == want[len(ids):]
    finally:
        served.close()
    with pytest.raises(TunelabError, match="prompt-tuning adapter has none to merge"):
        export(list_checkpoints(recipe.run_dir)[-1], tmp_path / "exported", dtype="float32")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("change,message", [
    ({"data": {"packing": True}}, "set data.packing: false"),
    ({"train": {"save_merged": True}}, "nothing to merge"),
    ({"lora": {"target_modules": ["q_proj"]}}, "leave target_modules out"),
])
def test_the_recipe_refuses_what_prompt_tuning_cannot_do(tmp_path, change, message):
    sections = lora_sections(TINY_BASE, max_steps=2)
    sections["lora"] = {"enabled": True, "adapter": "prompt_tuning"}
    sections["data"]["packing"] = False
    for key, value in change.items():
        sections[key] = {**sections[key], **value}
    with pytest.raises(TunelabError, match=message):
        load_recipe(write_recipe(tmp_path, "bad", **sections))
    with pytest.raises(ValueError, match="virtual_tokens is a prompt_tuning setting"):
        from tunelab.recipe.lora import LoraConfig
        LoraConfig(adapter="lora", virtual_tokens=4)


def test_a_saved_config_gives_back_its_spec_and_the_cli_counts_it(capsys):
    from tunelab.cli import main
    from tunelab.model.lora import peft_config
    spec = AdapterSpec("prompt_tuning", virtual_tokens=N)
    saved = json.loads(json.dumps(peft_config(spec).to_dict(), default=lambda v: getattr(v, "value", list(v))))
    again = AdapterSpec.from_saved(saved)
    assert (again.kind, again.virtual_tokens) == ("prompt_tuning", N)
    assert "6 virtual tokens" in again.describe()
    assert main(["ratio", "--model", str(TINY_BASE), "--adapter", "prompt_tuning", "--virtual-tokens", "6",
                 "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["trainable"] == _prompt_tuned().get_nb_trainable_parameters()[0] == N * _base().config.hidden_size


def test_an_rft_run_samples_with_its_virtual_tokens_and_its_checkpoints_are_evaluated(tmp_path, tiny_base):
    """RFT samples with the live prompt-tuned model (the decoding core's virtual prefix) and fine-tunes on what the
    grader accepts; each checkpoint is evaluated as the run's adapter (loaded unmerged: nothing to merge)."""
    import yaml
    from test_grpo_run import metrics_lines, run_train
    from test_rft import rft_recipe
    path = rft_recipe(tmp_path, tiny_base, steps=4, checkpoints=1)
    recipe = yaml.safe_load(path.read_text())
    recipe["lora"] = {"enabled": True, "adapter": "prompt_tuning", "virtual_tokens": 4}
    recipe["data"]["packing"] = False
    recipe["train"]["lr"] = 3e-2
    recipe["eval"] = {"tasks": [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 6, "seed": 9,
                                                                  "options": {"kinds": ["int_add"], "int_digits": 1}}}],
                      "max_new_tokens": 8}
    recipe["score"] = {"formula": "stage1", "accuracy_task": "arithmetic"}
    path.write_text(yaml.safe_dump(recipe))
    assert run_train(path, verb="run") == 0
    run_dir = tmp_path / "runs" / "rft"
    lines = metrics_lines(run_dir)
    assert lines and all("frac_accepted" in x for x in lines) and any(x["frac_accepted"] > 0 for x in lines)
    ckpt = list_checkpoints_of(run_dir)[-1]
    assert json.loads((ckpt / "adapter" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoints"][ckpt.name]["arithmetic"]["n"] == 6 and metrics["best_checkpoint"] == ckpt.name
    assert metrics["ratio"]["trainable"] == 4 * json.loads((Path(tiny_base) / "config.json").read_text())["hidden_size"]


def list_checkpoints_of(run_dir):
    from tunelab.runs import list_checkpoints
    return list_checkpoints(run_dir)
