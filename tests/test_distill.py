"""Distillation (`train.distill`): the loss and its gradients are the plain PyTorch formula computed example by
example (`F.kl_div` at temperature T, times T², beside the cross-entropy), packed rows (and rows laid end to end)
distil exactly the tokens each example distils alone, the KL is projected in chunks as one pass would, under LoRA
the teacher is the model with its adapter off (nothing new held), a teacher from a path must share the tokenizer,
the schema refuses what cannot work, and a real run logs `distill_kl`."""

from __future__ import annotations

import copy
import json
import random
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.data.examples import Example
from tunelab.data.packing import IGNORE, Encoded, collate_flat, collate_rows, pack_examples, unpacked_rows
from tunelab.errors import TunelabError
from tunelab.recipe.train import DistillConfig
from tunelab.train.methods.distill_loss import DistilledLoss, ProjectedKL, mark_replay, token_kl

from conftest import recipe_dict

VOCAB = 101


@pytest.fixture(autouse=True)
def _one_thread():
    """The 2 cores are shared by several test runs: one thread each is fastest (conftest restores the count)."""
    torch.set_num_threads(1)


def _llama(seed: int, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


def _samples(count: int, seed: int, every: int = 2) -> list[Encoded]:
    """Random samples: a prompt (unlabelled) then an answer (labelled); every `every`-th one distilled."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt, answer = rng.randint(3, 9), rng.randint(2, 8)
        ids = [rng.randrange(1, VOCAB) for _ in range(prompt + answer)]
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:], distill=i % every == 0))
    return out


def _reference(student, teacher, samples, spec: DistillConfig) -> torch.Tensor:
    """The loss as plain PyTorch writes it, each sample alone: (Σ CE + weight · T² · Σ KL) / trained tokens."""
    T, total = spec.temperature, 0.0
    count = sum(sum(label != IGNORE for label in s.labels[1:]) for s in samples)
    for s in samples:
        ids, targets = torch.tensor([s.input_ids]), torch.tensor(s.labels[1:])
        where = targets != IGNORE
        logits = student(input_ids=ids).logits[0, :-1][where]
        total = total + F.cross_entropy(logits, targets[where], reduction="sum")
        if spec.tokens == "all" or s.distill:
            with torch.no_grad():
                t = teacher(input_ids=ids).logits[0, :-1][where]
            ls, lt = F.log_softmax(logits / T, -1), F.log_softmax(t / T, -1)
            kl = (F.kl_div(ls, lt, log_target=True, reduction="sum") if spec.kind == "forward_kl"
                  else F.kl_div(lt, ls, log_target=True, reduction="sum"))
            total = total + spec.weight * T ** 2 * kl
    return total / count


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)


def _items(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@pytest.mark.parametrize("spec", [
    DistillConfig(weight=0.7, temperature=1.0, tokens="replay"),
    DistillConfig(weight=1.5, temperature=2.0, tokens="all"),
    DistillConfig(weight=0.5, temperature=3.0, tokens="replay", kind="reverse_kl"),
], ids=["replay", "all-T2", "reverse-T3"])
def test_loss_and_gradients_equal_the_plain_formula_example_by_example(spec):
    student, teacher = _llama(0), _llama(1).eval()
    samples = _samples(9, seed=3)
    if spec.tokens == "all":
        for s in samples:
            s.distill = False  # tokens: all distils every trained token: nothing is marked
    rows = pack_examples(samples, 40)
    assert any(r.position_ids.count(0) > 1 for r in rows)
    batch = collate_rows(rows, 0, packed=True)
    assert ("distill_mask" in batch) == (spec.tokens == "replay")
    loss_model = DistilledLoss(student, spec, teacher)
    loss = loss_model(**batch, num_items_in_batch=_items(batch))
    loss.backward()
    got = _grads(student)
    student.zero_grad()
    want = _reference(student, teacher, samples, spec)
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    _assert_grads_equal(got, _grads(student))
    metrics = loss_model.take_metrics()
    assert metrics["distill_kl"] > 0 and loss_model.take_metrics() == {}  # read once a metrics line


@pytest.mark.patched
def test_packed_and_flat_rows_distil_the_tokens_each_example_distils_alone():
    """A token's KL is the same packed (in a padded grid, or laid end to end) as alone, and the distilled tokens
    are exactly the distilled examples' trained tokens."""
    from tunelab.model.kernels.attention import use_cpu_attention
    student, teacher = _llama(0), _llama(1).eval()
    assert use_cpu_attention(student) and use_cpu_attention(teacher)
    samples = _samples(10, seed=5, every=3)
    alone = []
    with torch.no_grad():
        for s in samples:
            if s.distill:
                ids, where = torch.tensor([s.input_ids]), torch.tensor(s.labels[1:]) != IGNORE
                alone.append(token_kl(student(input_ids=ids).logits[0, :-1][where],
                                      teacher(input_ids=ids).logits[0, :-1][where], 2.0))
    alone = torch.cat(alone)
    rows = pack_examples(samples, 48)
    for batch in (collate_rows(rows, 0, packed=True), collate_flat(rows)):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "distill_mask")}
        chosen = (batch["labels"][:, 1:] != IGNORE) & batch["distill_mask"][:, 1:]
        with torch.no_grad():
            packed = token_kl(student(**inputs, use_cache=False).logits[:, :-1][chosen],
                              teacher(**inputs, use_cache=False).logits[:, :-1][chosen], 2.0)
        # rows hold the samples in another order: the same tokens' KL, as a multiset
        torch.testing.assert_close(packed.sort().values, alone.sort().values, atol=1e-6, rtol=1e-5)
    spec = DistillConfig(weight=1.0, temperature=2.0)
    grid, flat = collate_rows(rows, 0, packed=True), collate_flat(rows)
    losses = []
    for batch in (grid, flat, collate_rows(unpacked_rows(samples), 0, packed=False)):
        loss_model = DistilledLoss(student, spec, teacher)
        losses.append(loss_model(**batch, num_items_in_batch=_items(grid)).detach())
        assert loss_model.take_metrics()["distill_kl"] == pytest.approx(float(alone.mean()), rel=1e-5)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(losses[2], losses[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("own_head", [False, True])
def test_the_chunked_projection_is_kl_div_over_every_row(reverse, own_head):
    """A vocabulary of 32,768 makes chunks of 64 positions, three here, each with its share of the gradient: the
    KL to fp32's rounding and the gradients as close to float64's as autograd's own in fp32."""
    torch.manual_seed(0)
    n, hidden, vocab, T, scale = 140, 8, 32_768, 1.5, 0.3
    h = torch.randn(n, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden, requires_grad=True)
    th = torch.randn(n, hidden)
    tw = torch.randn(vocab, hidden) if own_head else w.detach()
    term, kl = ProjectedKL.apply(h, w, th, tw, T, scale, reverse)
    term.backward()

    def kl_div(dtype):
        hh, ww = (x.detach().to(dtype).requires_grad_() for x in (h, w))
        ls, lt = F.log_softmax(hh @ ww.t() / T, -1), F.log_softmax(th.to(dtype) @ tw.to(dtype).t() / T, -1)
        out = F.kl_div(lt, ls, log_target=True, reduction="sum") if reverse else \
            F.kl_div(ls, lt, log_target=True, reduction="sum")
        (out * scale).backward()
        return out.detach(), hh.grad, ww.grad

    fp32, fp64 = kl_div(torch.float32), kl_div(torch.float64)
    torch.testing.assert_close(kl.double(), fp64[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(term.double(), fp64[0] * scale, rtol=1e-6, atol=1e-6)
    for got, autograd, exact in ((h.grad, fp32[1], fp64[1]), (w.grad, fp32[2], fp64[2])):
        error = lambda x: (x.double() - exact).abs().max().item()  # noqa: E731
        assert error(got) <= 2 * error(autograd) + 1e-7
    # the teacher's logits given instead of its hidden states and head: the same
    term2, _ = ProjectedKL.apply(h.detach(), w.detach(), th @ tw.t(), None, T, scale, reverse)
    torch.testing.assert_close(term2, term.detach(), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_stays_near_fp32():
    student, teacher = _llama(0), _llama(1).eval()
    samples = _samples(6, seed=9)
    batch = collate_rows(pack_examples(samples, 40), 0, packed=True)
    spec = DistillConfig(weight=1.0, temperature=2.0)
    fp32 = DistilledLoss(student, spec, teacher)(**batch, num_items_in_batch=_items(batch)).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = DistilledLoss(student, spec, teacher)(**batch, num_items_in_batch=_items(batch)).detach()
    assert float(bf16) == pytest.approx(float(fp32), rel=2e-2)
    assert bf16.dtype == torch.float32


def test_under_lora_the_teacher_is_the_model_with_its_adapter_off():
    from peft import LoraConfig, get_peft_model
    base = _llama(0)
    frozen_base = copy.deepcopy(base).eval()
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    params, modules = [id(p) for p in model.parameters()], len(list(model.modules()))
    spec = DistillConfig(weight=0.8, temperature=1.5, tokens="all")
    loss_model = DistilledLoss(model, spec)
    # nothing new: the loss module holds the model's parameters and modules, and no copy of the base
    assert [id(p) for p in loss_model.parameters()] == params and len(list(loss_model.modules())) == modules + 1
    samples = _samples(6, seed=2)
    for s in samples:
        s.distill = False
    batch = collate_rows(pack_examples(samples, 40), 0, packed=True)
    model.train()
    loss = loss_model(**batch, num_items_in_batch=_items(batch))
    loss.backward()
    got = _grads(model)
    assert got and all("lora_" in name for name in got)
    assert model.training and all(m.training for m in model.modules())  # its train mode is back
    model.zero_grad()
    want = _reference(model, frozen_base, samples, spec)
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    _assert_grads_equal(got, _grads(model))
    with torch.no_grad():  # the adapter is on again after the teacher's forward
        ids = batch["input_ids"][:1, :8]
        assert not torch.allclose(model(input_ids=ids).logits, frozen_base(input_ids=ids).logits)


def test_validation_and_micro_batches_without_distilled_tokens_skip_the_teacher():
    student = _llama(0)

    class Refuses(torch.nn.Module):  # a teacher that must not be asked
        config = types.SimpleNamespace(model_type="refuses")

        def forward(self, **_):
            raise AssertionError("the teacher ran")

    samples = _samples(4, seed=1)
    for s in samples:
        s.distill = False
    batch = collate_rows(pack_examples(samples, 40), 0, packed=True)
    assert "distill_mask" not in batch
    plain = DistilledLoss(student, DistillConfig(tokens="all"), Refuses()).eval()  # validation: cross-entropy alone
    from tunelab.train.methods.sft_loss import LabelledLoss
    want = LabelledLoss(student)(**batch, num_items_in_batch=_items(batch))
    torch.testing.assert_close(plain(**batch, num_items_in_batch=_items(batch)), want)
    replay = DistilledLoss(student, DistillConfig(tokens="replay"), Refuses())
    torch.testing.assert_close(replay(**batch, num_items_in_batch=_items(batch)), want)
    assert replay.take_metrics() == {}


def test_on_replay_marks_the_replayed_examples_and_needs_some():
    examples = [Example(id=str(i), instruction="q", output="a", meta={"replay": "self"} if i % 2 else {})
                for i in range(4)]
    encoded = _samples(4, seed=0)
    mark_replay(encoded, examples)
    assert [e.distill for e in encoded] == [False, True, False, True]
    with pytest.raises(TunelabError, match="no training example") as err:
        mark_replay(encoded, [Example(id="x", instruction="q", output="a")] * 4)
    assert err.value.field == "train.distill.tokens"


def _save_teacher(directory, tokenizer, vocab: int):
    model = _llama(3, vocab)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tokenizer():
    from tunelab.model.tokenizer import train_bpe_tokenizer
    return train_bpe_tokenizer(["1 + 2 = 3", "what is 12 + 30? 42", "the cat sat on the mat"] * 10, 300)


def test_a_teacher_from_a_path_shares_the_tokenizer(tmp_path, tokenizer):
    from tunelab.train.methods.distill_loss import load_teacher
    student = _llama(0, len(tokenizer))
    teacher = load_teacher(_save_teacher(tmp_path / "same", tokenizer, len(tokenizer)), student, tokenizer,
                           "float32")
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(TunelabError, match="output rows") as err:
        load_teacher(_save_teacher(tmp_path / "wider", tokenizer, len(tokenizer) + 64), student, tokenizer,
                     "float32")
    assert err.value.field == "train.distill.teacher"
    from tunelab.model.tokenizer import train_bpe_tokenizer
    other = train_bpe_tokenizer(["entirely different words here"] * 10, 300)
    with pytest.raises(TunelabError, match="another tokenizer") as err:
        load_teacher(_save_teacher(tmp_path / "other", other, len(tokenizer)), student, tokenizer, "float32")
    assert err.value.field == "train.distill.teacher"
    with pytest.raises(TunelabError) as err:
        load_teacher(str(tmp_path / "missing"), student, tokenizer, "float32")
    assert err.value.field == "train.distill.teacher"


@pytest.mark.parametrize("sections, message", [
    ({"train": {"method": "dpo", "distill": {}}}, "train.method sft"),
    ({"train": {"distill": {}}}, "train.distill.teacher: a full fine-tune"),
    ({"train": {"distill": {"weight": 0, "teacher": "t"}}}, "greater than 0"),
    ({"train": {"distill": {"temperature": -1, "teacher": "t"}}}, "greater than 0"),
    ({"train": {"distill": {"tokens": "some", "teacher": "t"}}}, "'replay' or 'all'"),
    ({"train": {"distill": {"teacher": "t", "alpha": 1}}}, "unknown key"),
    ({"lora": {"enabled": True}, "train": {"distill": {}, "strategy": "fsdp"}}, "train.strategy ddp"),
    ({"data": {"train": [{"corpus": "c"}]}, "train": {"distill": {"teacher": "t"}}}, "a corpus run has none"),
])
def test_the_schema_refuses_what_cannot_distil(tmp_path, sections, message):
    from tunelab.recipe import validate_recipe
    with pytest.raises(TunelabError, match=message):
        validate_recipe(recipe_dict(tmp_path, **sections))


def test_the_schema_takes_a_lora_run_or_a_teacher(tmp_path):
    from tunelab.recipe import recipe_from_raw
    from tunelab.recipe import validate_recipe
    recipe = validate_recipe(recipe_dict(tmp_path, lora={"enabled": True}, train={"distill": {"weight": 0.5}}))
    assert recipe.train.distill == DistillConfig(weight=0.5)
    recipe = validate_recipe(recipe_dict(tmp_path, train={"distill": {"teacher": "t", "tokens": "all"}}))
    assert recipe.train.distill.teacher == "t" and recipe.train.distill.kind == "forward_kl"
    assert validate_recipe(recipe_dict(tmp_path)).train.distill is None


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory, tokenizer):
    """A random micro Llama with its tokenizer: a teacher, or a base to train LoRA on."""
    from tunelab.model.loading import build_from_scratch
    directory = tmp_path_factory.mktemp("micro")
    torch.manual_seed(7)
    build_from_scratch("micro", len(tokenizer), {}, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _logged(recipe) -> list[dict]:
    lines = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line]


def test_a_run_distils_from_a_teacher_and_logs_distill_kl(tmp_path, micro_dir):
    """Logit KD as the course project does it: a from-scratch model that takes the teacher's tokenizer."""
    from tunelab.recipe import validate_recipe
    from tunelab.train.loop import train
    recipe = validate_recipe(recipe_dict(
        tmp_path / "runs", model={"tokenizer": str(micro_dir)},
        train={"max_steps": 3, "num_checkpoints": 1, "distill": {"teacher": str(micro_dir), "tokens": "all",
                                                                 "temperature": 2.0}}))
    train(recipe)
    logged = _logged(recipe)
    assert len(logged) == 3 and all(line["distill_kl"] > 0 for line in logged)


def test_a_lora_run_distils_its_replayed_examples_from_its_base(tmp_path, micro_dir, monkeypatch):
    """Examples marked as replay of the base's answers are distilled from the model with its adapter off: at the
    first step the adapter (B = 0) changes nothing, so the KL is 0; then it grows."""
    import dataclasses

    import tunelab.train.loop as loop
    from tunelab.recipe import validate_recipe
    own = loop.training_examples

    def half_replayed(recipe):
        return [dataclasses.replace(ex, meta={"replay": "self"}) if i % 2 else ex
                for i, ex in enumerate(own(recipe))]

    monkeypatch.setattr(loop, "training_examples", half_replayed)
    recipe = validate_recipe(recipe_dict(
        tmp_path / "runs", model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                                  "path": str(micro_dir)},
        lora={"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.1},
        train={"max_steps": 4, "num_checkpoints": 1, "lr": 3e-2, "distill": {"weight": 0.5}}))
    loop.train(recipe)
    kl = [line["distill_kl"] for line in _logged(recipe)]
    assert len(kl) == 4 and kl[0] == pytest.approx(0, abs=1e-6) and kl[-1] > 1e-4


def test_the_documented_section_is_a_valid_recipe(tmp_path):
    """docs/recipes.md's `train.distill` block, with its defaults spelled out, validates under LoRA."""
    import re
    from pathlib import Path

    import yaml

    from tunelab.recipe import validate_recipe
    text = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M) if "distill:" in b.split("\n")[2]]
    train = yaml.safe_load(block)["train"]
    recipe = validate_recipe(recipe_dict(tmp_path, lora={"enabled": True}, train=train))
    assert recipe.train.distill == DistillConfig()
