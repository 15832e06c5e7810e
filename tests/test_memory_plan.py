"""`tunelab plan`: the per-device memory of one training step, traced on fake tensors through tunelab's own
model building, LoRA wrapping, loss and optimizer, checked against published GPU peaks (torchtune) and against
the same step run for real here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_recipe

from tunelab.errors import TunelabError
from tunelab.model.lora import AdapterSpec
from tunelab.model.presets import load_config, preset_config
from tunelab.train.plan.categories import ALLOCATOR_RESERVE
from tunelab.train.plan.estimate import plan_memory
from tunelab.train.plan.sizes import GiB, parse_memory_size
from tunelab.train.plan.spec import StepSpec
from tunelab.train.plan.trace import measure_step

TINY_BASE = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# torchtune's README ("Memory and training speed"): Llama 3.1 8B on one RTX 4090, batch size 2 without gradient
# accumulation, a dataset packed to 2,048 tokens, torch.compile on; peak memory per GPU. Its recipe config
# (pytorch/torchtune recipes/configs/llama3_1/8B_lora_single_device.yaml): LoRA rank 8, alpha 16, dropout 0 on
# q_proj, v_proj, output_proj and the MLP (apply_lora_to_mlp: True), not the output head; dtype bf16, activation
# checkpointing on, torch.optim.AdamW (fused). QLoRA: the same with the base in NF4 (torchtune keeps the
# embeddings, norms and head in bf16).
TORCHTUNE_LORA_GIB = 16.2
TORCHTUNE_QLORA_GIB = 7.4
TORCHTUNE_TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def torchtune_llama_8b(**changes) -> StepSpec:
    return StepSpec(config=preset_config("llama3-8b"), dtype="bfloat16", lora=AdapterSpec("lora", 8, 16, 0.0, TORCHTUNE_TARGETS),
                    batch_size=2, seq_len=2048, packing=True, autocast="bf16", gradient_checkpointing=True,
                    **changes)


def allocator_view(step) -> float:
    """GiB as torch's CUDA memory stats see them (what torchtune logs): the step plus the allocator's reserve,
    without the CUDA context, which lives outside the allocator."""
    return (step.peak + ALLOCATOR_RESERVE * step.transient) / GiB


def test_lora_8b_step_is_within_20_percent_of_torchtunes_published_peak():
    """Measured: 17.4 GiB (17.2 traced + 0.2 reserve) against 16.2 GiB published, 1.07x, traced in ~7 s. torchtune
    holds its LoRA weights and AdamW states in bf16 (tunelab: fp32, +0.15 GiB) and compiles the model."""
    step = measure_step(torchtune_llama_8b())
    assert step.total_params == 8_030_261_248
    assert step.trainable_params == 32 * 8 * (4096 + 4096 + 4096 + 1024 + 4096 + 4096 + 3 * (4096 + 14336))
    assert 0 <= step.weights_frozen - 2 * 8_030_261_248 < 2 ** 20  # bf16, every base weight, + the rotary buffers
    assert abs(allocator_view(step) / TORCHTUNE_LORA_GIB - 1) <= 0.20, allocator_view(step)
    assert step.trace_seconds > 0     # reported; how fast it is is a benchmark's business, not a test's


def test_qlora_8b_step_is_within_20_percent_of_torchtunes_published_peak():
    """Measured: 7.9 GiB against 7.4 GiB published, 1.06x. The NF4 weights are a rule (module docstring); with the
    embeddings, norms and head in fp32 as tunelab's `prepare_for_kbit` keeps them, the same step needs ~11.3 GiB."""
    step = measure_step(torchtune_llama_8b(quantization="nf4", fp32_unquantized=False))
    assert abs(allocator_view(step) / TORCHTUNE_QLORA_GIB - 1) <= 0.20, allocator_view(step)
    assert any("nf4 weights by rule" in n for n in step.notes)


def _tiny_spec(**changes) -> StepSpec:
    return StepSpec(**{"config": load_config(str(TINY_BASE)), "dtype": "float32", "batch_size": 4, "seq_len": 256,
                       "autocast": "bf16", **changes})


@pytest.mark.parametrize("kind", ["lora", "full+checkpointing"])
def test_the_fake_trace_equals_the_same_step_run_for_real(kind):
    """The same step on real CPU tensors under the same MemTracker: measured ratio 1.000 (LoRA with dropout,
    and a full fine-tune with gradient accumulation and checkpointing), every category equal."""
    spec = (_tiny_spec(lora=AdapterSpec("lora", 8, 16, 0.05, ["q_proj", "v_proj"])) if kind == "lora" else
            _tiny_spec(gradient_checkpointing=True, grads_held=True))
    fake, real = measure_step(spec, fake=True), measure_step(spec, fake=False)
    for name in ("weights_frozen", "weights_trainable", "gradients", "optimizer_states", "activations",
                 "loss_logits", "temporary"):
        assert getattr(fake, name) == getattr(real, name), name
    assert fake.peak > 0 and fake.peak == real.peak


def test_the_estimate_is_close_to_the_cpu_allocators_own_peak():
    """An instrument other than MemTracker: torch's profiler hears every allocation of the CPU allocator (kernels'
    own workspaces included) with the running total allocated. The same step run for real peaks at 33.1 MiB
    there, the fake trace says 31.4 MiB (ratio 0.95; 0.96-0.97 with 4 layers and 2 or 4 rows): the difference is
    workspace inside kernels, which no count of tensors sees."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    config = load_config(str(TINY_BASE))
    config.num_hidden_layers = 2  # profiling costs by the operation: half the layers, half the time
    spec = _tiny_spec(config=config, lora=AdapterSpec("lora", 8, 16, 0.05, ["q_proj", "v_proj"]), batch_size=2)
    estimate = measure_step(spec).peak
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        measure_step(spec, fake=False)  # the model is built inside: every byte of the step is heard
    measured, events = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while events:
        event = events.pop()
        events += event.children
        if event.tag == _EventType.Allocation:
            measured = max(measured, event.extra_fields.total_allocated)
    assert 0.85 <= estimate / measured <= 1.02, (estimate, measured)


def test_gradient_checkpointing_lowers_the_activation_term(tmp_path):
    """Read from the recipe (`train.gradient_checkpointing`), enabled as the loop enables it: 47 -> 7 MiB of
    activations held at the peak of a LoRA step on the tiny base; nothing else changes but the backward's
    temporaries."""
    recipe_path = write_recipe(tmp_path, "gc", **_tiny_lora_sections())
    from tunelab.recipe import load_recipe
    plans = {gc: plan_memory(load_recipe(recipe_path, [f"train.gradient_checkpointing={str(gc).lower()}"]), 24 * GiB)
             for gc in (False, True)}
    off, on = plans[False].categories, plans[True].categories
    assert on["activations"] < off["activations"] / 4, (off["activations"], on["activations"])
    for name in ("weights (frozen)", "weights (trainable)", "optimizer states"):
        assert on[name] == off[name]
    assert plans[True].total < plans[False].total
    assert "gradient checkpointing" in plans[True].step and "no gradient checkpointing" in plans[False].step


def _tiny_lora_sections() -> dict:
    return {"model": {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": str(TINY_BASE)},
            "lora": {"enabled": True, "rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "data": {"max_seq_len": 256}, "train": {"batch_size": 8, "grad_accum": 2, "precision": "bf16"}}


def test_memory_sizes_parse_as_nvidia_smi_counts():
    assert parse_memory_size("24GiB") == parse_memory_size("24GB") == parse_memory_size("24G") == 24 * GiB
    assert parse_memory_size("80g") == parse_memory_size("80") == 80 * GiB
    assert parse_memory_size("16384MiB") == 16 * GiB
    assert parse_memory_size("1.5TB") == int(1.5 * 2 ** 40)
    for bad in ("", "lots", "-24GiB", "0GB", "24 GiBs", "24PB"):
        with pytest.raises(TunelabError, match="gpu_memory"):  # a Python call: the argument's name
            parse_memory_size(bad)


def test_plan_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    """0: it fits; 1: it does not, with the changes that would fit, each re-estimated; 2: bad input, one line."""
    from tunelab.cli import main
    recipe = str(write_recipe(tmp_path, "plan", **_tiny_lora_sections()))

    assert main(["plan", recipe, "--gpu-memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "DOES NOT FIT" not in out
    for row in ("weights (frozen)", "weights (trainable)", "gradients", "optimizer states", "activations",
                "loss / logits", "temporary / workspace", "device overhead", "total peak"):
        assert row in out, row

    # the CUDA context alone takes 0.5 GiB: no recipe change helps, and no advice claims to fit
    assert main(["plan", recipe, "--gpu-memory", "512MiB"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and " fits " not in out

    # a card a little too small: the step's own changes make it fit, each with its re-estimated total
    needed = plan_memory(_load(recipe), 24 * GiB).total
    card = f"{(needed - 2 ** 20) / 2 ** 20:.0f}MiB"
    assert main(["plan", recipe, "--gpu-memory", card, "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert not plan["fits"] and plan["advice"]
    sets = {" ".join(a["sets"]): a for a in plan["advice"]}
    assert sets["--set train.gradient_checkpointing=true"]["fits"]
    assert all(a["total_bytes"] < plan["total"] for a in plan["advice"])

    assert main(["plan", recipe, "--gpus", "2"]) == 0
    assert "DDP gradient buckets" in capsys.readouterr().out

    assert main(["plan", recipe, "--gpu-memory", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tunelab: error: --gpu-memory: expected a memory size")

    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    unknown = str(write_recipe(tmp_path / "u", "unknown", **{**_tiny_lora_sections(), "model": {
        "preset": None, "from_scratch": None, "tokenizer_vocab_size": None, "path": "nobody/no-such-model"}}))
    assert main(["plan", unknown]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.json for 'nobody/no-such-model'" in err


def test_a_missing_data_file_does_not_stop_the_plan(tmp_path, capsys):
    """The plan reads no data: a recipe whose data and corpus are elsewhere (a GPU box) is still planned."""
    from tunelab.cli import main
    sections = _tiny_lora_sections()
    sections["data"] = {**sections["data"], "train": [{"path": str(tmp_path / "not-here.json")},
                                                      {"corpus": str(tmp_path / "no-corpus"), "replay": 0.5}]}
    recipe = str(write_recipe(tmp_path, "nodata", **sections))
    assert main(["plan", recipe]) == 0
    assert "FITS" in capsys.readouterr().out
    assert main(["train", recipe]) == 2  # training does read it
    assert "not-here.json" in capsys.readouterr().err


def _load(path: str):
    from tunelab.recipe import load_recipe
    return load_recipe(path)


def test_a_grpo_plan_traces_the_policy_step_counts_the_rollout_cache_and_the_continued_adapter(tmp_path):
    """A GRPO step: the policy's forward on one packed row a prompt (the prompt once, its answers after it) or a
    row an answer; the sampling KV cache of every answer at once, equal to the bytes transformers' own cache holds
    for those rows; and a continued adapter's LoRA settings, not the recipe's."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from tunelab.recipe import load_recipe
    from tunelab.train.plan.categories import rollout_cache_bytes
    from tunelab.train.plan.spec import step_spec
    sections = _tiny_lora_sections()
    sections["train"].update(method="grpo", batch_size=4, precision="fp32",
                             grpo={"num_generations": 3, "max_completion_length": 16})
    sections["data"]["max_seq_len"] = 64
    recipe = load_recipe(write_recipe(tmp_path, "grpo", **sections))
    spec = step_spec(recipe, load_config(str(TINY_BASE)))
    assert (spec.batch_size, spec.seq_len, spec.grpo) == (4, 64 + 2 * 16, (4, 3, 16))
    unpacked = step_spec(load_recipe(write_recipe(tmp_path, "grpo2", **{**sections, "data": {
        "max_seq_len": 64, "packing": False}})), load_config(str(TINY_BASE)))
    assert (unpacked.batch_size, unpacked.seq_len) == (12, 64)
    # the formula against the cache transformers fills for 12 answers of 64 tokens
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE, dtype=torch.float32)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 100, (12, 64)), past_key_values=cache, use_cache=True)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert rollout_cache_bytes(spec) == rollout_cache_bytes(unpacked) == held
    plan = plan_memory(recipe, 24 * GiB)
    assert "GRPO: 4 prompts x 3 sampled answers of <= 16 tokens" in plan.step
    assert any("KV cache" in n for n in plan.notes)
    # Llama-3-8B, 16 prompts x 8 answers of 2,048 tokens in bf16: 32 GiB of cache, more than the step holds
    big = StepSpec(config=preset_config("llama3-8b"), dtype="bfloat16", lora=AdapterSpec("lora", 8, 16, 0.0, ["q_proj"]),
                   batch_size=16, seq_len=2048 + 7 * 512, grpo=(16, 8, 512), autocast="bf16")
    assert rollout_cache_bytes(big) == 2 * 32 * 8 * 128 * 2 * 128 * 2048 == 32 * GiB


def test_a_dpo_plan_traces_a_pair_as_two_padded_rows(tmp_path):
    """A DPO micro-batch of B pairs is 2B rows (chosen, rejected) padded, not packed: the rows the loss scores
    through the same chunked log-probability kernel as SFT's loss (`model.kernels.logprobs`)."""
    from tunelab.recipe import load_recipe
    from tunelab.train.plan.spec import step_spec
    sections = _tiny_lora_sections()
    sections["train"].update(method="dpo", batch_size=3, precision="fp32")
    sections["data"].update(max_seq_len=64, train=[{"path": str(tmp_path / "pairs.jsonl")}])
    spec = step_spec(load_recipe(write_recipe(tmp_path, "dpo", **sections), check_data=False),
                     load_config(str(TINY_BASE)))
    assert (spec.batch_size, spec.seq_len, spec.packing, spec.share_prefix) == (6, 64, False, False)


def test_a_continued_adapter_plans_with_its_own_lora_settings(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipe import load_recipe
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(TINY_BASE), LoraConfig(
        r=12, lora_alpha=24, target_modules=["k_proj", "down_proj"])).save_pretrained(adapter)
    sections = _tiny_lora_sections()
    sections["model"]["path"] = str(adapter)
    plan = plan_memory(load_recipe(write_recipe(tmp_path, "continued", **sections)), 24 * GiB)
    assert "LoRA rank 12 (alpha 24) on" in plan.step and "down_proj" in plan.step and "q_proj" not in plan.step


def test_a_course_stage_is_planned_before_the_run_it_starts_from(tmp_path, monkeypatch, capsys):
    """A student plans the course before renting the card: runs/minigpt-pretrain does not exist yet (a fresh
    working directory), so the SFT stage is planned from recipes/minigpt-pretrain.yaml, which produces it: said in
    one line, and the same plan as that architecture given by hand. A chain of stages (DPO after SFT after
    pretraining) finds each producer; a Python call without the recipe's file still refuses."""
    from tunelab.cli import main
    from tunelab.recipe import load_recipe
    from tunelab.train.plan.config import model_config
    monkeypatch.chdir(tmp_path)
    sft, small = RECIPES / "minigpt-sft.yaml", ["train.batch_size=1", "data.max_seq_len=64"]
    assert main(["plan", str(sft), "--gpu-memory", "24GiB", "--json", *[a for s in small for a in ("--set", s)]]) == 0
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert err == (f"runs/minigpt-pretrain does not exist yet: planning from {RECIPES / 'minigpt-pretrain.yaml'}, "
                   "which produces it\n")
    assert "preset minigpt-124m, vocabulary 32,000 (the corpus build's tokenizer.vocab_size)" in plan["model"]
    by_hand = load_recipe(sft, [*small, "model.path=null", "model.preset=minigpt-124m",
                                "model.overrides.vocab_size=32000"], check_data=False)
    assert plan["categories"] == plan_memory(by_hand, 24 * GiB).categories

    dpo = RECIPES / "minigpt-cpu-dpo.yaml"
    config, source = model_config(load_recipe(dpo, check_data=False), dpo)
    scratch, _ = model_config(load_recipe(RECIPES / "minigpt-cpu.yaml", check_data=False))
    assert config.to_dict() == scratch.to_dict() and "preset tiny" in source
    assert "runs/minigpt-cpu-sft, not run yet" in source and "runs/minigpt-cpu, not run yet" in source

    with pytest.raises(TunelabError, match="no config.json for 'runs/minigpt-pretrain'"):
        plan_memory(load_recipe(sft, check_data=False), 24 * GiB)


def test_a_run_no_recipe_produces_is_refused_in_one_line_naming_the_field_and_the_set_that_fixes_it(
        tmp_path, monkeypatch, capsys):
    """No recipe beside this one produces its model.path (another recipe, a YAML file that is no recipe, and the
    recipe itself, whose own run directory it names, are passed over): one line with the file, line and field,
    and the --set overrides that give the plan an architecture."""
    from tunelab.cli import main
    monkeypatch.chdir(tmp_path)
    model = {"preset": None, "from_scratch": None, "tokenizer_vocab_size": None}
    write_recipe(tmp_path, "other", **_tiny_lora_sections())
    (tmp_path / "notes.yaml").write_text("just: notes\n", encoding="utf-8")
    for name, path in (("orphan", "runs/never-made"), ("itself", str(tmp_path / "runs" / "itself"))):
        recipe = write_recipe(tmp_path, name, **{**_tiny_lora_sections(), "model": {**model, "path": path}})
        line = 1 + recipe.read_text(encoding="utf-8").splitlines().index(f"  path: {path}")
        assert main(["plan", str(recipe)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"tunelab: error: {recipe}:{line}, field 'model.path': no config.json for '{path}': "
                              f"not a local directory, no recipe in {tmp_path} produces it")
        assert "--set model.path=null --set model.preset=NAME (llama3-8b, " in err
        assert "--set model.overrides.vocab_size=N" in err
