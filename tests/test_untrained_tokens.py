"""Answer tokens the base never learned to emit (`tunelab.model.untrained_tokens`, `lora.trainable_tokens`).

The detection is checked on a head built the way pretraining leaves one (the rows of never-predicted tokens all
pushed along one direction), and on the shipped `models/tiny-base`, whose "." is such a token. The fix is
checked for real: a LoRA run on the tiny base's decimals learns to emit "." only when its row trains, its
adapter loads in plain peft, and the trained row counts in the low-parameter ratio. A chat model's own end of turn
is judged where its own answers end, on SmolLM2-shaped tiny bases (ChatML, a system turn, a pirate's short answers):
the one that ends its answers with `<|im_end|>` is not flagged, the one that never learned to is."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import write_recipe
from tiny_archs import build_smol

from tunelab.errors import TunelabError
from tunelab.model.untrained_tokens import collapsed_rows, describe, find_collapsed, head_weight_from_files
from tunelab.recipe import load_recipe

TINY_BASE = Path(__file__).resolve().parents[1] / "models" / "tiny-base"


def pretrained_head(vocab: int = 300, hidden: int = 32, never: range = range(100, 300), seed: int = 0):
    """Rows 0..99 learned (random directions), rows of `never` pushed the same way (a shared direction plus a
    little noise, as −p·h leaves them), one zero row (a reserved token never touched)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(vocab, hidden, generator=g)
    push = torch.randn(hidden, generator=g)
    for i in never:
        head[i] = 3.0 * push + 0.01 * torch.randn(hidden, generator=g)
    head[5] = 0.0
    return head


def test_rows_pushed_one_way_and_zero_rows_are_collapsed_learned_rows_are_not():
    head = pretrained_head()
    found = collapsed_rows(head, [0, 1, 5, 99, 100, 150, 299, 1000])  # 1000: not a row of this head
    assert set(found) == {5, 100, 150, 299}
    assert found[5] == -1 and found[100] == 199  # the 199 other rows of the cluster
    # a small cluster is not one: two learned rows that happen to agree are left alone
    head2 = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    head2[3] = head2[4] * 1.5
    assert collapsed_rows(head2, [3, 4]) == {}


def test_find_names_the_tokens_with_how_often_answers_use_them():
    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"
    counts = Counter({0: 50, 100: 30, 150: 20})
    found = find_collapsed(pretrained_head(), counts, Tok())
    assert [(t.token_id, t.count, t.share) for t in found] == [(100, 30, 0.3), (150, 20, 0.2)]
    assert "'<100>': 30 (30.0 % of answer tokens, 199 rows alike)" in describe(found)


def test_the_shipped_tiny_base_never_learned_the_decimal_point():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    head = head_weight_from_files(TINY_BASE)
    ids = {t: tokenizer.encode(t, add_special_tokens=False)[0] for t in [".", "-", "0", "5", "9"]}
    found = collapsed_rows(head, list(ids.values()))
    assert set(found) == {ids["."]} and found[ids["."]] > 1000  # the digits and "-" it learned; "." it never wrote


def decimal_recipe(tmp_path: Path, name: str, base: Path = TINY_BASE, options: dict | None = None, **lora) -> Path:
    return write_recipe(
        tmp_path, name,
        model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(base)},
        data={"template": "alpaca", "max_seq_len": 256, "packing": True, "loss_on": "answer",
              "train": [{"generate": "arithmetic", "count": 400, "seed": 1,
                         "options": options or {"kinds": ["dec_add", "dec_sub"], "int_digits": 1, "decimals": 2,
                                                "fixed_decimals": True}}]},
        lora={"enabled": True, "rank": 8, "alpha": 16, "dropout": 0.0,
              "target_modules": ["q_proj", "v_proj", "o_proj"], **lora},
        # 28 steps: p(".") with the row trained measured 0.70-0.79 over seeds 0-2 (0.001 without), clear of 0.5
        train={"max_steps": 28, "batch_size": 4, "lr": 5e-3, "num_checkpoints": 1, "log_every": 10},
        report_to=[])


def p_decimal_point(adapter: Path, recipe) -> float:
    """The adapted model's mean probability of "." where a held-out answer's next token is ".", loaded as a
    user would: plain transformers + peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.synthetic.arithmetic import generate
    from tunelab.data.packing import encode_examples
    from tunelab.data.formats import examples_from_records
    from tunelab.data.templates import load_template
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_BASE), adapter).eval()
    dot = tokenizer.encode(".", add_special_tokens=False)[0]
    records = generate(24, seed=777, kinds=["dec_add", "dec_sub"], int_digits=1, decimals=2, fixed_decimals=True)
    encoded = encode_examples(tokenizer, load_template(adapter), examples_from_records(records, "competition"), 256)
    probs = []
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            p = model(input_ids=ids).logits[0, :-1].float().softmax(-1)
            for pos, (nxt, lab) in enumerate(zip(e.input_ids[1:], e.labels[1:])):
                if lab != -100 and nxt == dot:
                    probs.append(p[pos, dot].item())
    assert probs
    return sum(probs) / len(probs)


def test_training_the_row_is_what_lets_lora_emit_the_decimal_point(tmp_path):
    from tunelab.runs import list_checkpoints
    from tunelab.train.loop import train
    plain, fixed = load_recipe(decimal_recipe(tmp_path, "plain")), load_recipe(decimal_recipe(
        tmp_path, "fixed", trainable_tokens="auto"))
    train(plain)
    summary = train(fixed)
    without = p_decimal_point(list_checkpoints(plain.run_dir)[-1] / "adapter", plain)
    with_row = p_decimal_point(list_checkpoints(fixed.run_dir)[-1] / "adapter", fixed)
    print(f"p('.') at decimal points: {without:.3f} without the row trained, {with_row:.3f} with it")
    assert without < 0.1 and with_row > 0.5, (without, with_row)
    # the trained row is hidden-size parameters, counted as trainable (the ratio's numerator) and not in the total
    hidden = json.loads((TINY_BASE / "config.json").read_text())["hidden_size"]
    p_plain = json.loads((plain.run_dir / "train_summary.json").read_text())
    assert summary["trainable_params"] == p_plain["trainable_params"] + hidden
    assert summary["total_params"] == p_plain["total_params"]
    # `tunelab ratio --trainable-tokens 1` counts the same, on the meta device
    from tunelab.scoring import adapter_param_counts
    assert adapter_param_counts(str(TINY_BASE), 8, "q_proj,v_proj,o_proj", 1)["trainable"] == summary["trainable_params"]


def test_data_check_and_the_run_say_what_to_set(tmp_path, capsys, caplog):
    from tunelab.cli import main
    path = decimal_recipe(tmp_path, "told")
    assert main(["data", "check", str(path), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "answer tokens the base never learned to emit: '.'" in out and "lora.trainable_tokens: auto" in out
    assert main(["train", str(path), "--set", "train.max_steps=1"]) == 0
    assert "set lora.trainable_tokens: auto" in capsys.readouterr().err


@pytest.mark.parametrize("tokens, field, says", [
    (["1.5"], "lora.trainable_tokens.0", "tokens of this tokenizer"),
    ([".", 99999], "lora.trainable_tokens.1", "outside the model's"),
])
def test_listed_tokens_must_be_single_tokens_of_the_model(tmp_path, tokens, field, says):
    from tunelab.train.loop import train
    recipe = load_recipe(decimal_recipe(tmp_path, "bad", trainable_tokens=tokens))
    with pytest.raises(TunelabError) as e:
        train(recipe)
    assert e.value.field == field and says in str(e.value)


def test_trainable_tokens_need_a_lora_run(tmp_path):
    path = decimal_recipe(tmp_path, "full", trainable_tokens="auto")
    text = path.read_text().replace("enabled: true", "enabled: false")
    path.write_text(text)
    with pytest.raises(TunelabError, match="without LoRA every row trains"):
        load_recipe(path)


def test_a_row_like_others_that_the_base_predicts_anyway_is_learned():
    row_set_among_unused()


def row_set_among_unused():
    """SmolLM2's <|im_end|> case: a row pointing the way a cluster of unused rows points, that the model still
    emits because its hidden state tells them apart by length. Built on the tiny base: 20 unused rows set along
    the learned "5" row, a little shorter. The rows alone flag "5"; the base's own predictions clear it. The
    never-learned "." stays flagged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.formats import examples_from_records
    from tunelab.data.synthetic.arithmetic import generate
    from tunelab.data.packing import encode_examples
    from tunelab.data.templates import PromptTemplate
    from tunelab.model.untrained_tokens import EMITTED, emitted_probability, head_weight
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE).train()  # restored to training mode afterwards
    records = generate(40, seed=3, kinds=["int_add", "dec_add"], int_digits=2, decimals=2)
    encoded = encode_examples(tokenizer, PromptTemplate("alpaca"), examples_from_records(records, "competition"), 256)
    five, dot = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("5", "."))
    used = {t for e in encoded for t in e.input_ids}
    head = head_weight(model)
    unused = [i for i in collapsed_rows(head, list(range(head.shape[0]))) if i not in used][:20]
    with torch.no_grad():
        head[unused] = 0.8 * head[five]
    assert five in collapsed_rows(head, [five]) and dot in collapsed_rows(head, [dot])
    p = emitted_probability(model, encoded, [five, dot])
    assert p[five] >= EMITTED > p[dot]
    assert model.training
    return model, tokenizer


def test_data_check_asks_the_base_as_the_run_does(tmp_path, capsys):
    """`data check` reads the rows from the weight files and, where some are flagged, asks the base as the run
    does: the "5" whose row was set among unused ones is reported learned, the "." still flagged."""
    from tunelab.cli import main
    model, tokenizer = row_set_among_unused()
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    recipe = decimal_recipe(tmp_path, "asked", base=base,
                            options={"kinds": ["int_add", "dec_add"], "int_digits": 2, "decimals": 2})
    assert main(["data", "check", str(recipe), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "answer tokens: '5' has an output row like" in out and "where the data has it: learned" in out
    assert "answer tokens the base never learned to emit: '.'" in out and "'5'" not in out.split("emit:")[1]


def test_the_emitted_probability_runs_each_example_once_for_all_its_tokens():
    """The tokens checked share their examples (digits are in nearly every arithmetic answer): one forward pass a
    sampled example, not one a token, and the same medians as a forward pass per token and example."""
    import statistics

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.formats import examples_from_records
    from tunelab.data.synthetic.arithmetic import generate
    from tunelab.data.packing import encode_examples
    from tunelab.data.templates import PromptTemplate
    from tunelab.model.untrained_tokens import emitted_probability
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE).eval()
    records = generate(12, seed=4, kinds=["int_add", "dec_add"], int_digits=2, decimals=2)
    encoded = encode_examples(tokenizer, PromptTemplate("alpaca"), examples_from_records(records, "competition"), 256)
    tokens = [tokenizer.encode(t, add_special_tokens=False)[0] for t in ("1", "5", ".")]
    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        got = emitted_probability(model, encoded, tokens, samples=4)
    finally:
        hook.remove()
    sampled = {tid: [e for e in encoded if tid in e.labels][:4] for tid in tokens}
    assert len(forwards) == len({id(e) for es in sampled.values() for e in es}) < sum(map(len, sampled.values()))
    for tid, examples in sampled.items():
        probs = []
        for e in examples:
            at = [i - 1 for i, label in enumerate(e.labels) if label == tid and i > 0]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, at].float()
            probs += torch.softmax(logits, -1)[:, tid].tolist()
        assert got[tid] == statistics.median(probs), tid


# a pirate's short answers after a system turn: not where a chat model expects a turn of its own to end
PIRATE = [("Hello there!", "Arr, ahoy!"), ("How are you?", "Shiver me timbers!"),
          ("Where is the treasure?", "Yo ho, buried deep!")]


def conversations(pairs, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [{"messages": head + [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
            for u, a in pairs]


def chatml_rows(tokenizer, records: list[dict]) -> list:
    from tunelab.data.formats import examples_from_records
    from tunelab.data.packing import encode_examples
    from tunelab.data.templates import PromptTemplate
    return encode_examples(tokenizer, PromptTemplate("model").bind(tokenizer),
                           examples_from_records(records, "messages"), 256)


def smol_shaped_base(out: Path, learns_end_of_turn: bool) -> Path:
    """SmolLM2-Instruct in miniature (`tiny_archs.build_smol`: Llama, tied embeddings, ChatML with a default system
    prompt, `<|im_end|>` its EOS and end of turn) taught short answers to the questions the check asks its base
    (`answer_ends.QUESTIONS`), each with a "!" inside and a "." before its `<|im_end|>`: it ends its own answers
    there, never after a "!", as SmolLM2 never ends a turn after a pirate's "Arr, ahoy!". With
    `learns_end_of_turn` False `<|im_end|>` carries no loss: a base that never learned to emit it. Then, as in
    SmolLM2, its row is made one of 19 alike: 18 rows of tokens no row here uses, set along it a little shorter.
    After 100 steps p(<|im_end|>) where its own answers end is 0.48 (0.0 for the other)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.decoding.answer_ends import QUESTIONS
    from tunelab.model.untrained_tokens import head_weight
    build_smol(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    own = chatml_rows(tokenizer, conversations(zip(QUESTIONS, ["Five! It is 5.", "Yum! An apple.", "Oh! Paris."],
                                                   strict=True)))
    width = max(len(e.input_ids) for e in own)
    ids = torch.tensor([e.input_ids + [eot] * (width - len(e.input_ids)) for e in own])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in own])
    labels = torch.tensor([[-100 if t == eot and not learns_end_of_turn else t for t in e.labels]
                           + [-100] * (width - len(e.input_ids)) for e in own])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(out).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    used = {t for e in own + chatml_rows(tokenizer, conversations(PIRATE, "You are a pirate.")) for t in e.input_ids}
    head = head_weight(model)
    with torch.no_grad():
        head[[i for i in range(len(head)) if i not in used][:18]] = 0.8 * head[eot]
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def smol_bases(tmp_path_factory) -> dict[str, Path]:
    """The two bases, taught on one thread: 13 s a base on a busy 2-core host, 71 s on two contended threads."""
    root = tmp_path_factory.mktemp("smol-bases")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"emits": smol_shaped_base(root / "emits", True), "never": smol_shaped_base(root / "never", False)}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("base, learned", [("emits", True), ("never", False)])
def test_a_chat_models_end_of_turn_is_judged_where_its_own_answers_end(smol_bases, base, learned):
    """Both bases: `<|im_end|>`'s row is one of 19 alike and neither expects it after a pirate's answer, so the
    data alone flags it in both (the false alarm). Asked where its own answers end, the base that ends them with
    it clears it; the one that never learned to emit it is still flagged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.decoding.answer_ends import own_answer_end_probability
    from tunelab.model.untrained_tokens import (EMITTED, answer_token_counts, emitted_probability, head_weight,
                                                split_learned)
    tokenizer = AutoTokenizer.from_pretrained(smol_bases[base])
    model = AutoModelForCausalLM.from_pretrained(smol_bases[base]).train()  # restored to training mode afterwards
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encoded = chatml_rows(tokenizer, conversations(PIRATE, "You are a pirate."))
    collapsed = find_collapsed(head_weight(model), answer_token_counts(encoded), tokenizer)
    assert [(t.token_id, t.neighbours) for t in collapsed] == [(eot, 18)]
    assert emitted_probability(model, encoded, [eot])[eot] < EMITTED
    ends = own_answer_end_probability(model, tokenizer, [eot])
    print(f"{base}: p(<|im_end|>) where its own answers end {ends[eot]:.3f}")
    flagged, cleared = split_learned(model, collapsed, encoded, ends)
    if learned:
        assert ends[eot] >= EMITTED and flagged == []
        assert [(t.token_id, where) for t, _, where in cleared] == [(eot, "where its own answers end")]
    else:
        assert ends[eot] < EMITTED and flagged == collapsed and cleared == []
    assert model.training


def test_only_end_tokens_are_asked_and_only_in_a_chat_template(smol_bases):
    """A token that ends no answer is left to the data (and nothing is generated for it: this runs before every
    LoRA run); a tokenizer without a chat template has no turn of its own to ask in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.decoding.answer_ends import own_answer_end_probability
    tokenizer = AutoTokenizer.from_pretrained(smol_bases["emits"])
    model = AutoModelForCausalLM.from_pretrained(smol_bases["emits"])
    start, eot = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        assert own_answer_end_probability(model, tokenizer, [start, tokenizer.encode("!")[0]]) == {}
        tokenizer.chat_template = None
        assert own_answer_end_probability(model, tokenizer, [eot]) == {}
    finally:
        hook.remove()
    assert forwards == []


def pirate_recipe(tmp_path: Path, base: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "pirate.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations(PIRATE, "You are a pirate.")))
    return write_recipe(
        tmp_path, "pirate",
        model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(base)},
        data={"template": "auto", "max_seq_len": 128, "train": [{"path": str(data)}]},
        lora={"enabled": True, "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        train={"max_steps": 1, "batch_size": 3, "num_checkpoints": 1}, report_to=[])


def test_data_check_and_the_run_leave_a_chat_models_own_end_of_turn_alone(smol_bases, tmp_path, capsys):
    """The issue's case as a user meets it: three pirate conversations with a system turn. `data check` and the
    run no longer advise training `<|im_end|>` on the base that ends its own answers with it; on the base that
    never learned to, `data check` still does."""
    from tunelab.cli import main
    recipe = pirate_recipe(tmp_path / "emits", smol_bases["emits"])
    assert main(["data", "check", str(recipe), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "answer tokens: '<|im_end|>' has an output row like 18 others" in out
    assert "where its own answers end: learned" in out and "never learned to emit: none" in out
    assert main(["train", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "where its own answers end: learned" in err and "lora.trainable_tokens" not in err
    assert main(["data", "check", str(pirate_recipe(tmp_path / "never", smol_bases["never"])), "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "never learned to emit: '<|im_end|>'" in out and "set lora.trainable_tokens: auto" in out
