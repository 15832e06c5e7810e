"""QLoRA and 8-bit optimizers through bitsandbytes, for real on the CPU (its CPU backend runs 4-bit NF4, int8
and the 8-bit optimizers): a quantised base trains LoRA adapters whose loss falls, the saved adapter gives the
trained model's logits on a base quantised by plain transformers, 8-bit AdamW (paged or not) learns and resumes
bit for bit, the low-parameter ratio's total counts 4-bit weights in full, and a missing bitsandbytes is one
error naming the extra that installs it."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from conftest import lora_sections, write_recipe

from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe, validate_recipe
from tunelab.runs import list_checkpoints
from tunelab.train.plots import read_metrics

pytest.importorskip("bitsandbytes")

EXTRA = "pip install 'tunelab[quant]'"
KEYS = ("step", "loss", "lr", "grad_norm")  # what a metrics line says about the run (not its timing)


def _bnb_config(kind: str):
    """What a user writes with plain transformers to load the base as the run did."""
    from transformers import BitsAndBytesConfig
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def _qlora_sections(base, kind: str, **train):
    sections = lora_sections(base, **train)
    sections["model"]["quantization"] = kind
    return sections


def _train_capturing_model(monkeypatch, path):
    """Train the recipe at `path`; returns (summary, the trained model). get_peft_model puts the adapters into
    the loaded model in place, so the model `build_model_and_tokenizer` returned is the trained one."""
    from tunelab.train import loop
    orig, seen = loop.build_model_and_tokenizer, {}

    def capture(*args, **kwargs):
        model, tok = orig(*args, **kwargs)
        seen["model"] = model
        return model, tok
    monkeypatch.setattr(loop, "build_model_and_tokenizer", capture)
    return loop.train(load_recipe(path)), seen["model"]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


# --- the recipe ------------------------------------------------------------------------------------------

def test_quantization_needs_lora_and_a_pretrained_model(tiny_base):
    data = {"train": [{"generate": "arithmetic"}]}
    with pytest.raises(TunelabError, match="lora.enabled: true") as e:
        validate_recipe({"name": "q", "model": {"path": str(tiny_base), "quantization": "nf4"}, "data": data,
                         "lora": {"enabled": False}})
    assert "model.quantization: nf4" in str(e.value)
    with pytest.raises(TunelabError, match="model.quantization: int8.*model.path") as e:
        validate_recipe({"name": "q", "model": {"preset": "micro", "from_scratch": True, "quantization": "int8"},
                         "data": data, "lora": {"enabled": True}})
    assert e.value.field == "model"
    with pytest.raises(TunelabError) as e:
        validate_recipe({"name": "q", "model": {"path": str(tiny_base), "quantization": "int4"}, "data": data})
    assert e.value.field == "model.quantization"
    with pytest.raises(TunelabError) as e:
        validate_recipe({"name": "q", "model": {"path": str(tiny_base)}, "data": data,
                         "train": {"optimizer": "adam_4bit"}})
    assert e.value.field == "train.optimizer"
    ok = validate_recipe({"name": "q", "model": {"path": str(tiny_base), "quantization": "nf4"}, "data": data,
                          "train": {"optimizer": "paged_adamw_8bit"}})
    assert ok.model.quantization == "nf4" and ok.lora.enabled and ok.train.optimizer == "paged_adamw_8bit"
    default = validate_recipe({"name": "q", "model": {"path": str(tiny_base)}, "data": data})
    assert default.model.quantization == "none" and default.train.optimizer == "adamw"


# --- parameter counts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_count_parameters_counts_quantized_weights_in_full(kind, tiny_base):
    """bitsandbytes packs two 4-bit weights per uint8 element: numel() halves them. The total (the competition's
    denominator) must be the base's real count, with or without LoRA on top."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.model.lora import count_parameters, make_lora_config
    from tunelab.model.quantization import load_quantized
    full = AutoModelForCausalLM.from_pretrained(tiny_base)
    real = sum(p.numel() for p in full.parameters())
    q = load_quantized(str(tiny_base), kind)
    stored = sum(p.numel() for p in q.parameters())
    if kind == "nf4":  # the point of the fix: what numel() says for a 4-bit model
        linear = sum(m.weight.numel() for m in full.modules()
                     if isinstance(m, torch.nn.Linear) and m is not full.lm_head)
        assert stored == real - linear // 2
    else:
        assert stored == real
    assert count_parameters(q)[1] == real
    lora = get_peft_model(q, make_lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    trainable, total = count_parameters(lora)
    assert total == real
    assert trainable == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n) > 0


# --- QLoRA runs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["nf4", "int8"])
def qlora_run(request, tiny_base, tmp_path_factory):
    """A 20-step LoRA run on the tiny base quantised to `kind`; the trained model's logits on a few prompts."""
    kind = request.param
    with pytest.MonkeyPatch.context() as mp:
        path = write_recipe(tmp_path_factory.mktemp(f"qlora-{kind}"), f"qlora-{kind}",
                            **_qlora_sections(tiny_base, kind, max_steps=20, log_every=4))
        summary, model = _train_capturing_model(mp, path)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_base)
    enc = tok(["What is 12 * 3?", "Compute 45 * 17."], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        logits = model(**enc).logits
    return {"kind": kind, "summary": summary, "run_dir": load_recipe(path).run_dir, "model": model, "enc": enc,
            "logits": logits}


def test_qlora_run_trains_adapters_on_a_quantized_base(qlora_run, tiny_base):
    import bitsandbytes as bnb
    kind, model, summary = qlora_run["kind"], qlora_run["model"], qlora_run["summary"]
    layer = bnb.nn.Linear4bit if kind == "nf4" else bnb.nn.Linear8bitLt
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, layer)  # LoRA wraps the quantised layer
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    losses = _losses(qlora_run["run_dir"])
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.05, losses
    # the same totals as an unquantised LoRA run: count_parameters reads the 4-bit weights' real shape
    from transformers import AutoModelForCausalLM
    assert summary["total_params"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_base).parameters())
    assert summary["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    ckpt = list_checkpoints(qlora_run["run_dir"])[-1]
    cfg = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_base)
    # the adapter file holds the adapters only, not the 4-bit base
    from safetensors import safe_open
    with safe_open(ckpt / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert f.keys() and all("lora_" in k for k in f.keys())


def test_saved_adapter_on_a_plainly_quantized_base_gives_the_trained_logits(qlora_run, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ckpt = list_checkpoints(qlora_run["run_dir"])[-1]
    base = AutoModelForCausalLM.from_pretrained(tiny_base, quantization_config=_bnb_config(qlora_run["kind"]))
    # as the run held its layers (`keep_training_layout`): bitsandbytes' CPU inference kernel, which this CPU
    # (AVX512-BF16) would otherwise switch to here, computes in bf16 and needs widths that are multiples of 32
    for module in base.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        plain = base.eval()(**qlora_run["enc"]).logits
    adapted = PeftModel.from_pretrained(base, ckpt / "adapter").eval()
    with torch.no_grad():
        got = adapted(**qlora_run["enc"]).logits
    mask = qlora_run["enc"]["attention_mask"].bool()
    # the same quantised weights and adapters: equal up to the attention kernel (tunelab's CPU one in training)
    torch.testing.assert_close(got[mask], qlora_run["logits"][mask], atol=1e-4, rtol=1e-4)
    assert (got[mask] - plain[mask]).abs().max() > 1e-2  # and the adapter is what changed them


@pytest.mark.parametrize("widths", ["tiny_base", "multiples_of_32"])
def test_a_validation_pass_leaves_4bit_training_exact(widths, tiny_base, tmp_path):
    """An eval-mode, no-grad forward (what validation does mid-run) must not change what the next training step
    computes: on this CPU bitsandbytes would repack the weights for its inference kernel, which fails on the tiny
    base (an MLP 176 wide) and, where the widths allow it, computes in bf16 and backpropagates wrongly."""
    from peft import get_peft_model

    from tunelab.model.lora import make_lora_config
    from tunelab.model.quantization import load_quantized, prepare_for_kbit
    path = tiny_base
    if widths == "multiples_of_32":
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
        path = tmp_path

    def build():
        torch.manual_seed(0)
        model = prepare_for_kbit(load_quantized(str(path), "nf4"), gradient_checkpointing=False,
                                 compute_dtype=torch.float32)
        config = make_lora_config(4, 8, 0.0, ["q_proj", "v_proj", "up_proj"])
        config.init_lora_weights = False  # random B too: every factor gets a gradient
        return get_peft_model(model, config)

    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    fresh, validated = build(), build()
    validated.eval()
    with torch.no_grad():
        eval_logits = validated(input_ids=ids).logits
    validated.train()
    for model in (fresh, validated):
        model(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(input_ids=ids).logits, eval_logits)
    grads = [(n, p.grad) for n, p in fresh.named_parameters() if p.requires_grad]
    other = dict((n, p.grad) for n, p in validated.named_parameters() if p.requires_grad)
    assert grads and all(g is not None and other[n] is not None and torch.equal(g, other[n]) for n, g in grads)


def test_nf4_bf16_run_computes_in_bf16(tiny_base, tmp_path, monkeypatch):
    """The 4-bit layers compute at the training precision: bf16 when the run trains in bf16 (forced here, as on a
    CPU where bf16 pays), fp32 otherwise (the runs above)."""
    import bitsandbytes as bnb

    from tunelab.model import device
    monkeypatch.setattr(device, "cpu_matmul_race", lambda width=256: device.MatmulRace(width, 100.0, 300.0))
    # peak_tflops given: without it the run times bf16 matmuls for MFU, emulated on a CPU where bf16 does not pay
    # (~15 s a matmul on an AVX2 host); MFU is not what this test is about
    path = write_recipe(tmp_path, "bf16", **_qlora_sections(tiny_base, "nf4", max_steps=8, log_every=2,
                                                            precision="bf16", peak_tflops=1.0))
    summary, model = _train_capturing_model(monkeypatch, path)
    assert summary["precision"] == "bf16"
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    losses = _losses(load_recipe(path).run_dir)
    assert all(x == x for x in losses) and losses[-1] < losses[0], losses


# --- 8-bit optimizers ------------------------------------------------------------------------------------

def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # 64 x 128 = 8,192 elements: 8-bit moments (bitsandbytes keeps tensors under 4,096 in fp32)
    return [torch.nn.Parameter(torch.randn(64, 128, generator=g)), torch.nn.Parameter(torch.randn(100, generator=g))]


def _steps(params, optimizer, first: int, last: int) -> None:
    for k in range(first, last):
        g = torch.Generator().manual_seed(1000 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _groups(params):
    return [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]


def _equal_states(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_states(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_states(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit", "paged_adamw_8bit"])
def test_optimizer_state_round_trips_and_continues_bit_for_bit(name, tmp_path):
    """What --resume does: state_dict() saved with torch.save, loaded into a new optimizer over the restored
    weights, continues exactly as the optimizer that never stopped."""
    from tunelab.train.optimizers import build_optimizer
    params = _params()
    opt = build_optimizer(_groups(params), name, lr=1e-2, betas=(0.9, 0.95), fused=True)
    _steps(params, opt, 0, 5)
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, tmp_path / "s.pt")
    if name != "adamw":  # the moments of the large tensor really are 8-bit
        state = opt.state_dict()["state"][0]["__bnb_optimizer_quant_state__"]
        assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    _steps(params, opt, 5, 10)

    saved = torch.load(tmp_path / "s.pt", weights_only=False)
    again = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = build_optimizer(_groups(again), name, lr=1e-2, betas=(0.9, 0.95), fused=True)
    opt2.load_state_dict(saved["opt"])
    _steps(again, opt2, 5, 10)
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    assert _equal_states(opt.state_dict(), opt2.state_dict())


def test_paged_adamw_8bit_on_cpu_is_adamw_8bit_with_one_warning(caplog):
    """Nothing to page on a CPU: tunelab builds adamw_8bit and says so once; bitsandbytes' own paged optimizer,
    which falls back to plain buffers there, takes the very same steps."""
    import bitsandbytes as bnb

    from tunelab.train.optimizers import build_optimizer
    params = _params()
    with caplog.at_level(logging.WARNING, logger="tunelab.train.optimizers"):
        opt = build_optimizer(_groups(params), "paged_adamw_8bit", lr=1e-2, betas=(0.9, 0.95))
    assert type(opt) is bnb.optim.AdamW8bit
    said = [r.getMessage() for r in caplog.records if r.name == "tunelab.train.optimizers"]
    assert len(said) == 1 and "uses adamw_8bit" in said[0]
    _steps(params, opt, 0, 6)

    theirs = _params()
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        paged = bnb.optim.PagedAdamW8bit(_groups(theirs), lr=1e-2, betas=(0.9, 0.95))
        _steps(theirs, paged, 0, 6)
    assert all(torch.equal(a, b) for a, b in zip(params, theirs))


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizer_qlora_run_learns_and_resumes_like_an_unbroken_run(name, tiny_base, tmp_path):
    """LoRA rank 64 on the 64-wide tiny base: each adapter factor has 4,096 elements, so its moments are 8-bit
    (smaller ones stay fp32 in bitsandbytes). The run is then resumed from its step-6 checkpoint (the later ones
    and the summary deleted; the log window 5-8 straddles it) and must end exactly where it ended unbroken."""
    from tunelab.train.loop import train
    sections = _qlora_sections(tiny_base, "nf4", max_steps=16, log_every=4, optimizer=name, lr=5e-3)
    sections["lora"].update(rank=64, alpha=64)
    recipe = load_recipe(write_recipe(tmp_path, name, **sections))
    run_dir = recipe.run_dir
    unbroken = train(recipe)
    losses = _losses(run_dir)
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.1, losses
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step-{s:06d}" for s in (3, 6, 10, 13, 16)]
    final = list_checkpoints(run_dir)[-1]
    want = torch.load(final / "trainer_state.pt", weights_only=False)
    moments = [s["__bnb_optimizer_quant_state__"] for s in want["optimizer"]["state"].values()]
    assert any(m["state1"].dtype == torch.uint8 for m in moments)  # 8-bit moments were in use
    want_metrics = [tuple(r[k] for k in KEYS) for r in read_metrics(run_dir / "metrics.jsonl")]

    import shutil
    for ckpt in list_checkpoints(run_dir):
        if int(ckpt.name.split("-")[1]) > 6:
            shutil.rmtree(ckpt)
    (run_dir / "train_summary.json").unlink()
    resumed = train(load_recipe(write_recipe(tmp_path, name, **sections)), resume=True)
    assert resumed["resumed_from"] == 6 and resumed["final_loss"] == unbroken["final_loss"]
    assert [tuple(r[k] for k in KEYS) for r in read_metrics(run_dir / "metrics.jsonl")] == want_metrics
    got = torch.load(list_checkpoints(run_dir)[-1] / "trainer_state.pt", weights_only=False)
    assert _equal_states(got["trainable"], want["trainable"])
    assert _equal_states(got["optimizer"], want["optimizer"])


# --- without bitsandbytes --------------------------------------------------------------------------------

def test_missing_bitsandbytes_is_one_error_naming_the_extra(monkeypatch, tiny_base, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.model.quantization import load_quantized
    from tunelab.train.optimizers import build_optimizer
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(TunelabError, match=EXTRA.replace("[", r"\[").replace("]", r"\]")) as e:
        load_quantized(str(tiny_base), "nf4")
    assert e.value.field == "model.quantization"
    with pytest.raises(TunelabError, match="bitsandbytes") as e:
        build_optimizer([{"params": _params()}], "adamw_8bit")
    assert e.value.field == "train.optimizer" and EXTRA in str(e.value)
    build_optimizer([{"params": _params()}], "adamw")  # torch's AdamW needs nothing more

    path = write_recipe(tmp_path, "nobnb", **_qlora_sections(tiny_base, "nf4", max_steps=2))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert EXTRA in err and "model.quantization" in err and err.count("\n") == 1
