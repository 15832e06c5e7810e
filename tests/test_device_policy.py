"""The device and precision policy (`tunelab.model.device`), on GPUs that are not here: `torch.cuda` is mocked
to answer as a V100 (sm70), T4 (sm75), A100 (sm80), H100 (sm90) or no GPU would, and what each verb would load
where is asserted. `is_bf16_supported` is mocked as the real one behaves: with emulation allowed (its default) a
sm70 says yes; only `including_emulation=False` tells the truth, which is what the policy must ask."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.model import device as policy

GPUS = {"sm70": ((7, 0), "Tesla V100-SXM2-32GB"), "sm75": ((7, 5), "Tesla T4"),
        "sm80": ((8, 0), "NVIDIA A100-SXM4-80GB"), "sm90": ((9, 0), "NVIDIA H100 80GB HBM3")}


@pytest.fixture
def gpu(monkeypatch):
    """`gpu("sm80", count=2)` makes torch.cuda answer as that many GPUs of that kind; `gpu(None)`: no GPU."""
    def make(kind: str | None, count: int = 1):
        if kind is None:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
            return
        cap, name = GPUS[kind]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or cap >= (8, 0))
    monkeypatch.setattr(policy, "npu_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return make


@pytest.mark.parametrize("kind, train_auto, infer_auto", [
    ("sm70", ("fp16", True), "float16"),
    ("sm75", ("fp16", True), "float16"),
    ("sm80", ("bf16", False), "bfloat16"),
    ("sm90", ("bf16", False), "bfloat16"),
])
def test_auto_is_native_bf16_else_fp16_with_a_scaler(gpu, kind, train_auto, infer_auto):
    gpu(kind)
    dev = policy.resolve_device("auto")
    assert dev == torch.device("cuda", 0)
    p = policy.training_precision("auto", dev)
    assert (p.name, p.grad_scaler) == train_auto and p.note is None
    assert policy.inference_dtype("auto", dev) == infer_auto
    explicit = policy.training_precision("bf16", dev)
    if kind in ("sm70", "sm75"):  # asked for bf16 where it is emulated: fp16 instead, and the user is told why
        assert (explicit.name, explicit.grad_scaler) == ("fp16", True)
        assert GPUS[kind][1] in explicit.note and "train.precision: fp16" in explicit.note
    else:
        assert explicit == policy.Precision("bf16")
    assert policy.training_precision("fp16", dev) == policy.Precision("fp16", grad_scaler=True)
    assert policy.inference_dtype("fp32", dev) == "float32" and policy.inference_dtype("bfloat16", dev) == "bfloat16"


def test_fp32_on_cuda_runs_matmuls_in_tf32(gpu):
    gpu("sm80")
    before = torch.get_float32_matmul_precision()
    try:
        assert policy.training_precision("fp32", torch.device("cuda", 0)) == policy.Precision("fp32")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_each_rank_takes_its_own_gpu(gpu, monkeypatch):
    gpu("sm80", count=8)
    assert [policy.resolve_device("auto", rank) for rank in (0, 3, 7)] == \
        [torch.device("cuda", 0), torch.device("cuda", 3), torch.device("cuda", 7)]
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert policy.resolve_device("auto") == torch.device("cuda", 5) == policy.resolve_device("cuda")
    assert policy.resolve_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(TunelabError, match="has 8 CUDA GPUs"):
        policy.resolve_device("cuda:8")


def test_no_gpu_means_the_cpu_and_asking_for_one_is_an_error(gpu):
    gpu(None)
    cpu = policy.resolve_device("auto")
    assert cpu == torch.device("cpu")
    assert policy.training_precision("auto", cpu) == policy.Precision("fp32")
    assert policy.inference_dtype("auto", cpu) == "float32"
    with pytest.raises(TunelabError, match="no CUDA GPU is visible") as e:
        policy.resolve_device("cuda", field="train.device")
    assert "train.device" in str(e.value)
    with pytest.raises(TunelabError, match="torch_npu"):
        policy.resolve_device("npu:1")
    for bad in ("gpu", "cuda:x", "cpu:0", "mps:1"):
        with pytest.raises(TunelabError, match="unknown device"):
            policy.resolve_device(bad)
    note = policy.training_precision("fp16", cpu)
    assert note.name == "fp32" and "fp16 autocast has no fast kernels" in note.note


def test_bf16_on_a_cpu_only_where_it_is_faster(monkeypatch):
    """Emulated bf16 ran ~60x slower than fp32 on an AVX2-only host (25 s demo steps instead of 0.3 s), and on
    an Intel Xeon with AVX512-BF16 but no AMX a bf16 matmul runs at half fp32's speed (the pretraining
    benchmark trained at 0.68x nanoGPT's fp32 tokens/s): bf16 is kept only where it is clearly faster, for an
    explicit bf16 and for `auto` alike, and the choice says the two speeds it was made on."""
    cpu = torch.device("cpu")
    monkeypatch.delenv(policy.AUTO_CPU_ENV, raising=False)
    raced = []

    def race(speedup):
        def run(width=policy.RACE_WIDTH):
            raced.append(width)
            return policy.MatmulRace(width, 100.0, 100.0 * speedup)
        return run
    for speedup in (0.0, 1 / 60, 0.52, 1.0, 1.2):
        monkeypatch.setattr(policy, "cpu_matmul_race", race(speedup))
        p = policy.training_precision("bf16", cpu)
        assert p.name == "fp32" and f"{speedup:.2g}x the speed of fp32" in p.note and "train.precision: fp32" in p.note
        assert "256-wide matrices at" in p.note and "100.0 in fp32" in p.note
        auto = policy.training_precision("auto", cpu, 576)
        assert auto.name == "fp32" and auto.note.startswith("precision: fp32, as this CPU multiplies 576-wide")
        assert policy.training_precision("fp32", cpu) == policy.Precision("fp32")
    for speedup in (1.25, 3.0, 4.4):
        monkeypatch.setattr(policy, "cpu_matmul_race", race(speedup))
        for requested in ("bf16", "auto"):
            p = policy.training_precision(requested, cpu, 960)
            assert p.name == "bf16" and p.autocast_dtype == torch.bfloat16
            assert p.note == (f"precision: bf16 autocast, as this CPU multiplies 960-wide matrices at "
                              f"{100 * speedup:,.1f} GFLOP/s in bf16 and 100.0 in fp32 ({speedup:.2g}x)")
    assert raced[:2] == [256, 576] and raced[-1] == 960
    # pinned: `auto` is fp32 with no race (the suite's setting: the same numbers on every host)
    monkeypatch.setenv(policy.AUTO_CPU_ENV, "fp32")
    monkeypatch.setattr(policy, "cpu_matmul_race", lambda width=256: pytest.fail("raced while pinned"))
    assert policy.training_precision("auto", cpu, 576) == policy.Precision("fp32")
    monkeypatch.undo()
    state = torch.random.get_rng_state()
    assert policy.cpu_matmul_race().speedup >= 0  # the matmul race draws no random numbers: a seeded run stays seeded
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_race_multiplies_at_the_models_width_within_bounds(monkeypatch):
    """The race's matrices are as wide as the model (rounded to 64), at least 256 and at most 768 wide (an
    emulated bf16 1024² product takes ~3 s on an AVX2-only host); GFLOP/s are 2·n³ over the best time."""
    sizes = []

    def seconds(size, rounds=3):
        sizes.append(size)
        return 2 * size ** 3 / 1e9 / 50.0, 2 * size ** 3 / 1e9 / 150.0
    monkeypatch.setattr(policy, "_race_seconds", seconds)
    for width, size in ((64, 256), (576, 576), (600, 576), (2048, 768), (4096, 768)):
        race = policy.cpu_matmul_race(width)
        assert race.width == size and sizes[-1] == size
        assert race.fp32 == pytest.approx(50.0) and race.speedup == pytest.approx(3.0)
    monkeypatch.setattr(policy, "_race_seconds", lambda size, rounds=3: (0.01, None))
    assert policy.cpu_matmul_race(256).bf16 == 0.0 and policy.cpu_matmul_race(256).speedup == 0.0   # no bf16 kernels


def test_a_run_races_at_its_models_hidden_size(tmp_path, monkeypatch):
    """`train.precision: auto` on a CPU: the race is run at the model's hidden size, read from its config."""
    from types import SimpleNamespace

    from conftest import write_recipe

    from tunelab.recipe import load_recipe
    from tunelab.train.setup import choose_precision
    tiny_base = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
    seen = []
    monkeypatch.setattr(policy, "training_precision", lambda requested, device, width=256: (
        seen.append((requested, width)) or policy.Precision("fp32")))
    path = write_recipe(tmp_path, "width", model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                                                  "path": str(tiny_base)}, train={"precision": "auto"})
    choose_precision(load_recipe(path), SimpleNamespace(device=torch.device("cpu"), main=True))
    assert seen == [("auto", json.loads((tiny_base / "config.json").read_text())["hidden_size"])]


@pytest.fixture
def recorded_loads(monkeypatch):
    """Every model load's (dtype, device) as the verbs ask for it; the model itself is loaded on this CPU in
    fp32 (there is no GPU), so the verb runs on to the end."""
    from tunelab.model import loading
    real, calls = loading.load_pretrained, []

    def load(path, dtype="float32", device=None):
        calls.append((dtype, str(device)))
        return real(path, dtype="float32")
    monkeypatch.setattr(loading, "load_pretrained", load)
    return calls


@pytest.mark.parametrize("kind, half", [("sm80", "bfloat16"), ("sm70", "float16")])
def test_every_verb_loads_on_the_gpu_in_its_native_half_precision(kind, half, gpu, recorded_loads, tmp_path,
                                                                  tiny_base, capsys):
    """`eval`, `generate` (and `serve`, `ui`: the same ServedModel.load) and `tunelab run`'s evaluation load
    onto the GPU in bf16 where native, fp16 on older GPUs, never fp32 on the host unless asked."""
    import json

    from tunelab.cli import main
    from tunelab.serve.backends import build_backends
    from tunelab.serve.models import ServedModel
    gpu(kind, count=2)
    data = tmp_path / "dev.json"
    data.write_text(json.dumps([{"problem": "1+1=", "solution": "2"}, {"problem": "2+3=", "solution": "5"}]))
    assert main(["eval", "--model", str(tiny_base), "--tasks", "arithmetic", "--data", f"arithmetic={data}",
                 "--out", str(tmp_path / "e1")]) == 0
    assert main(["eval", "--model", str(tiny_base), "--tasks", "arithmetic", "--data", f"arithmetic={data}",
                 "--out", str(tmp_path / "e2"), "--device", "cuda:1", "--precision", "fp32"]) == 0
    assert main(["generate", str(tiny_base), "1+1=", "--max-new-tokens", "2"]) == 0
    ServedModel.load(tiny_base, device="cuda:1", precision="bf16").close()
    for backend in build_backends([f"m={tiny_base}"], precision="fp32").values():
        backend.served.close()
    assert recorded_loads == [(half, "cuda:0"), ("float32", "cuda:1"), (half, "cuda:0"), ("bfloat16", "cuda:1"),
                              ("float32", "cuda:0")]


def test_a_runs_evaluation_uses_the_device_it_trained_on(gpu, recorded_loads, tmp_path, tiny_base):
    from conftest import write_recipe

    from tunelab.eval.sets import eval_sets
    from tunelab.pipeline.evaluation import cached_eval
    from tunelab.recipe import load_recipe
    gpu("sm90", count=2)
    recipe = load_recipe(write_recipe(tmp_path, "placed", train={"device": "cuda:1"},
                                      eval={"tasks": [{"task": "arithmetic", "limit": 2,
                                                       "source": {"generate": "arithmetic", "count": 2}}]}))
    sets = eval_sets(recipe.eval)
    cached_eval(tiny_base, sets, tmp_path / "out", recipe, None, "base")
    recipe.eval.device, recipe.eval.precision = "cuda:0", "fp16"
    cached_eval(tiny_base, sets, tmp_path / "out2", recipe, None, "base")
    assert recorded_loads == [("bfloat16", "cuda:1"), ("float16", "cuda:0")]


def test_a_runs_evaluation_on_a_gpu_loads_the_base_once_and_swaps_adapters(gpu, recorded_loads, tmp_path,
                                                                             tiny_base):
    """On a GPU, `tunelab run` evaluates the base and every checkpoint on one base model held on the device: one
    load instead of one per checkpoint, no merge; each adapter is swapped in and used unmerged. The results equal
    the CPU path's (a fresh load with the adapter merged) for every task."""
    from conftest import lora_sections, write_recipe

    from tunelab.eval.sets import eval_sets
    from tunelab.pipeline.evaluation import cached_eval, run_models
    from tunelab.recipe import load_recipe
    from tunelab.runs import list_checkpoints, model_dir_of
    from tunelab.train.loop import train
    choice = tmp_path / "choice.jsonl"
    choice.write_text("\n".join(json.dumps({"question": f"{a} + {b} =", "choices": [str(a + b + d) for d in range(4)],
                                            "answer": 0}, ensure_ascii=False) for a, b in [(1, 2), (3, 4), (12, 9)]))
    tasks = [{"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                               "options": {"kinds": ["int_mul"], "int_digits": 2}}},
             {"task": "reading", "source": {"generate": "reading", "count": 8, "seed": 8}, "ability": True},
             {"task": "choice", "mode": "loglik", "source": {"path": str(choice)}}]
    sections = lora_sections(tiny_base, max_steps=6, num_checkpoints=2)
    recipe = load_recipe(write_recipe(tmp_path, "swap", eval={"tasks": tasks, "max_new_tokens": 10}, **sections))
    train(recipe)
    recorded_loads.clear()  # the training's own load
    sets = eval_sets(recipe.eval)
    jobs = [(tiny_base, "base")] + [(model_dir_of(c), c.name) for c in list_checkpoints(recipe.run_dir)]
    assert len(jobs) == 3
    on_cpu = {name: cached_eval(d, sets, tmp_path / "cpu" / name, recipe, None, name, run_models(recipe))
              for d, name in jobs}
    assert len(recorded_loads) == 3  # the CPU path: a fresh (merged) load per directory
    gpu("sm90", count=1)
    recipe.eval.device = "cuda:0"
    models = run_models(recipe)
    on_gpu = {name: cached_eval(d, sets, tmp_path / "gpu" / name, recipe, None, name, models) for d, name in jobs}
    models.close()
    assert recorded_loads[3:] == [("bfloat16", "cuda:0")] and models.loads == 1 and models.swaps == 2
    for name, results in on_gpu.items():
        for label, metrics in results.items():
            primary = metrics["primary_metric"]
            assert metrics[primary] == pytest.approx(on_cpu[name][label][primary], abs=1e-6), (name, label)


def test_a_gpu_process_group_gives_host_tensors_a_backend_of_their_own(gpu, monkeypatch):
    """Under torchrun on GPUs the group is `cpu:gloo,cuda:nccl`: the loop's host-side reductions (counts, losses,
    stop signals) go through gloo, the model's through NCCL. An NCCL-only group died at step 1 on them."""
    import torch.distributed as td

    from tunelab.train import distributed
    gpu("sm80", count=2)
    asked = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: asked.append(("set_device", str(device))))
    monkeypatch.setattr(td, "is_initialized", lambda: False)
    monkeypatch.setattr(td, "init_process_group", lambda backend: asked.append(("group", backend)))
    monkeypatch.setattr(td, "get_rank", lambda: 1)
    monkeypatch.setattr(td, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist = distributed.init_distributed("auto")
    assert asked == [("set_device", "cuda:1"), ("group", "cpu:gloo,cuda:nccl")]
    assert dist.device == torch.device("cuda", 1) and (dist.rank, dist.world) == (1, 2)


_HOST_REDUCTION = """
import sys, torch, torch.distributed as td
td.init_process_group(sys.argv[1])
from tunelab.train.distributed import Dist, all_sum
try:
    said = f"sum {all_sum(Dist(td.get_rank(), 2, td.get_rank(), torch.device('cpu')), [1.0, 2.0])}"
except Exception as e:
    said = f"failed {type(e).__name__} {str(e).splitlines()[0]}"
open(f"rank{td.get_rank()}.txt", "w").write(said)
td.destroy_process_group()
"""


@pytest.mark.parametrize("backend, works", [("cuda:gloo", False), ("cpu:gloo,cuda:gloo", True)])
def test_the_loops_host_reductions_need_a_cpu_backend_in_the_group(tmp_path, backend, works):
    """The original multi-GPU failure, reproduced for real on two processes: a group with a backend for the
    GPU alone (here `cuda:gloo`, as NCCL is `cuda:nccl`) cannot reduce the loop's host tensors; with a CPU
    backend beside it, as `init_distributed` builds it, the same reduction works."""
    import subprocess
    import sys
    script = tmp_path / "reduce.py"
    script.write_text(_HOST_REDUCTION)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), backend], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    if works:
        assert lines == ["sum [2.0, 4.0]"] * 2
    else:
        assert all(line.startswith("failed") and "cpu" in line.lower() for line in lines), lines
