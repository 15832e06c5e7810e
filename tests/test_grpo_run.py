"""GRPO in tunelab's own loop (`train.method: grpo`): a real LoRA run on the session's tiny base samples with
tunelab's decoding core, scores with the tasks' graders and a user's reward function, logs TRL's metrics, moves
the policy toward the reward, writes checkpoints plain peft loads, resumes after kill -9 to the unbroken run's
weights, and turns a reward function that misbehaves into one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import chdir
from pathlib import Path

import pytest
import torch
import yaml
from conftest import lora_sections, sigkill_after_a_checkpoint, write_recipe

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints

REWARDS_PY = '''
def brevity(prompts, completions, **columns):
    """Shorter answers score higher: a reward any policy can move toward in a few steps."""
    return [-len(c) / 20 for c in completions]


def broken(prompts, completions, **columns):
    if any("2" in c for c in completions):
        raise ValueError("no twos")
    return [0.0] * len(completions)
'''


def grpo_recipe(tmp_path: Path, base: Path, name: str = "grpo", rewards=None, steps: int = 12, checkpoints: int = 3,
                **grpo) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "my_rewards.py").write_text(REWARDS_PY, encoding="utf-8")
    sections = lora_sections(base, max_steps=steps, batch_size=4, log_every=2, num_checkpoints=checkpoints)
    sections["lora"]["dropout"] = 0.0
    sections["data"] = {"max_seq_len": 96, "train": [
        {"generate": "arithmetic", "count": 64, "seed": 3, "options": {"kinds": ["int_add"], "int_digits": 1}}]}
    sections["train"].update(method="grpo", lr=2e-2, grpo={
        "num_generations": 4, "max_completion_length": 16, "beta": 0.04,
        "rewards": rewards or [{"task": "arithmetic"}, {"function": "my_rewards.py:brevity"}], **grpo})
    return write_recipe(tmp_path, name, **sections, report_to=[])


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open(encoding="utf-8")]


def run_train(path: Path, *extra: str, verb: str = "train") -> int:
    """`tunelab train PATH` in this process, from the recipe's folder: where a process of its own is not what a
    test is about, one start-up of torch and transformers fewer (its stderr goes to capsys)."""
    with chdir(path.parent):
        return main([verb, str(path), *extra])


def test_a_grpo_run_moves_toward_its_reward_logs_trl_metrics_and_loads_in_peft(tmp_path, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    assert run_train(grpo_recipe(tmp_path, tiny_base)) == 0
    run_dir = tmp_path / "runs" / "grpo"
    lines = metrics_lines(run_dir)
    assert [x["step"] for x in lines] == [2, 4, 6, 8, 10, 12]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "rewards/arithmetic/mean", "rewards/brevity/mean",
                "kl", "entropy", "clip_ratio/region_mean", "completions/mean_length", "completions/clipped_ratio"):
        assert all(key in x for x in lines), key
    assert all(0 <= x["rewards/arithmetic/mean"] <= 1 for x in lines)
    # the brevity reward pulls the completions shorter, and the total reward up
    assert lines[-1]["completions/mean_length"] < lines[0]["completions/mean_length"]
    assert lines[-1]["reward"] > lines[0]["reward"]
    assert (run_dir / "grpo.png").stat().st_size > 10_000  # reward and KL curves
    adapter = list_checkpoints(run_dir)[-1] / "adapter"
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
    assert any(torch.count_nonzero(p) for n, p in tuned.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("grpo", [{}, {"num_iterations": 3, "zero_variance": "resample"},
                                  {"zero_variance": "refill"}])
def test_a_killed_grpo_run_resumes_to_the_unbroken_runs_weights(tmp_path, tiny_base, grpo):
    """With num_iterations 3 a generation batch is trained on at steps 3k, 3k+1 and 3k+2: the first checkpoint
    (step 4 of 8) falls inside one, so the resumed run must take the batch, old log-probabilities included, from
    it. The killed run is a process of its own; the unbroken one and the resumption run here."""
    unbroken = grpo_recipe(tmp_path / "a", tiny_base, steps=8, checkpoints=2, **grpo)
    assert run_train(unbroken) == 0
    path = grpo_recipe(tmp_path / "b", tiny_base, steps=8, checkpoints=2, **grpo)
    run_dir = tmp_path / "b" / "runs" / "grpo"
    sigkill_after_a_checkpoint([sys.executable, "-m", "tunelab.cli", "train", str(path)], path.parent, run_dir)
    assert run_train(path, "--resume") == 0
    got, want = metrics_lines(run_dir), metrics_lines(tmp_path / "a" / "runs" / "grpo")
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want):
        for key in ("loss", "reward", "completions/mean_length", "kl", "clip_ratio/region_mean"):
            assert g.get(key) == pytest.approx(w.get(key), abs=1e-6), (g["step"], key)
    a = torch.load(list_checkpoints(run_dir)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    b = torch.load(list_checkpoints(tmp_path / "a" / "runs" / "grpo")[-1] / "trainer_state.pt",
                   weights_only=False)["trainable"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_several_updates_per_generation_batch_clip_and_resampling_rescues_groups(tmp_path, tiny_base):
    """num_iterations 2: the second update of a batch sees the policy moved since sampling (ratios leave 1, some
    tokens clip); zero_variance resample draws the groups that scored all alike again, and logs how many."""
    assert run_train(grpo_recipe(tmp_path, tiny_base, rewards=[{"task": "arithmetic"}], num_iterations=2,
                                 zero_variance="resample", resample_rounds=2, epsilon=0.02)) == 0
    lines = metrics_lines(tmp_path / "runs" / "grpo")
    assert [x["step"] for x in lines] == [2, 4, 6, 8, 10, 12]
    assert [x["epoch"] for x in lines] == [round(x["step"] * 4 / 2 / 64, 4) for x in lines]  # 6 batches of 4
    assert any(x["clip_ratio/region_mean"] > 0 for x in lines)
    assert all(0 <= x["frac_groups_rescued"] <= x["frac_groups_resampled"] <= 1 for x in lines)
    assert all(x["frac_groups_skipped"] <= 1 - x["frac_groups_rescued"] for x in lines)
    assert any(x["frac_groups_resampled"] > 0 for x in lines)


def test_by_default_a_group_whose_answers_all_scored_alike_is_never_trained_on(tmp_path, tiny_base, monkeypatch):
    """`zero_variance: skip`, the default: each step's batch holds exactly the groups whose rewards differ, all G
    answers of each; a step where none differ trains on nothing (one group kept for the pass, its mask all zero)."""
    import tunelab.train.methods.grpo as grpo
    from tunelab.train.methods.grpo import GRPOLossModel
    G = 4
    steps: list[dict] = []
    real_score, real_collate = GRPOLossModel._score, grpo.collate_completions

    def score(self, examples, completions):
        out = real_score(self, examples, completions)
        steps.append({"scores": out.view(-1, G), "prompts": [e.id for e in examples[::G]]})
        return out

    def collate(prompts, completions, *args):
        batch = real_collate(prompts, completions, *args)
        steps[-1].update(rows=len(prompts), mask=batch["completion_mask"])  # zeroed after, in place, if none teach
        return batch
    monkeypatch.setattr(GRPOLossModel, "_score", score)
    monkeypatch.setattr(grpo, "collate_completions", collate)
    assert run_train(grpo_recipe(tmp_path, tiny_base, rewards=[{"task": "arithmetic"}], steps=8)) == 0
    assert load_recipe(tmp_path / "grpo.yaml").train.grpo.zero_variance == "skip"
    assert len(steps) == 8
    seen_alike = seen_mixed = False
    for step in steps:
        differ = int((step["scores"].amax(1) > step["scores"].amin(1)).sum())
        seen_alike |= differ < len(step["prompts"])
        seen_mixed |= differ > 0
        if differ:
            assert step["rows"] == G * differ and int(step["mask"].sum()) > 0, step
        else:
            assert step["rows"] == G and int(step["mask"].sum()) == 0, step
    assert seen_alike and seen_mixed  # both kinds of group occurred, so the rule was exercised


def test_refill_puts_other_prompts_groups_in_place_of_those_that_teach_nothing(tmp_path, tiny_base, monkeypatch):
    """zero_variance refill (DAPO's dynamic sampling): a group whose completions all scored alike is replaced by
    the group of another of the run's prompts, drawn again up to resample_rounds times; the share is logged, and
    the replaced groups' prompts are the run's own."""
    from tunelab.train.methods.grpo import GRPOLossModel
    drawn_for: list = []
    real = GRPOLossModel._reserve_row

    def recorded(self, *args):
        row = real(self, *args)
        assert any(row is r for r in self.reserve)
        drawn_for.append(row.example.id)
        return row
    monkeypatch.setattr(GRPOLossModel, "_reserve_row", recorded)
    assert run_train(grpo_recipe(tmp_path, tiny_base, rewards=[{"task": "arithmetic"}], zero_variance="refill",
                                 resample_rounds=2)) == 0
    lines = metrics_lines(tmp_path / "runs" / "grpo")
    assert all(0 <= x["frac_groups_rescued"] <= x["frac_groups_refilled"] <= 1 for x in lines)
    assert any(x["frac_groups_refilled"] > 0 for x in lines) and "frac_groups_resampled" not in lines[0]
    assert drawn_for and len(set(drawn_for)) > 1  # several prompts drawn, not one


def test_filter_prompts_trains_only_on_prompts_whose_answers_differ_in_reward(tmp_path, tiny_base, monkeypatch):
    """filter_prompts: a group sampled for every prompt from the starting model; the prompts whose group scored
    alike (all right, all wrong) are dropped before the steps are counted, the rest are all the run trains on, and
    the verdicts are kept in the run for a resume."""
    from tunelab.train.methods.grpo import GRPOLossModel
    scored, trained_on = [], set()
    real_score, real_rollout = GRPOLossModel._score, GRPOLossModel.rollout

    def score(self, examples, completions):
        out = real_score(self, examples, completions)
        scored.append((examples, out))
        return out

    def rollout(self, rows, *args, **kwargs):
        trained_on.update(r.example.id for r in rows)
        return real_rollout(self, rows, *args, **kwargs)
    monkeypatch.setattr(GRPOLossModel, "_score", score)
    monkeypatch.setattr(GRPOLossModel, "rollout", rollout)
    real_spread = GRPOLossModel.spread
    during: list = []

    def spread(self, rows, batch):
        start = len(scored)
        out = real_spread(self, rows, batch)
        during.extend(scored[start:])
        return out
    monkeypatch.setattr(GRPOLossModel, "spread", spread)
    assert run_train(grpo_recipe(tmp_path, tiny_base, rewards=[{"task": "arithmetic"}], steps=4,
                                 filter_prompts=True, temperature=1.5)) == 0
    saved = json.loads((tmp_path / "runs" / "grpo" / "prompt_filter.json").read_text())
    # the verdicts from the starting model's own scores: a prompt is kept when its 4 answers' rewards differ
    groups = [(ex[0].id, s.view(-1)) for examples, s in during for ex, s in
              zip([examples[i: i + 4] for i in range(0, len(examples), 4)], s.view(-1, 4))]
    assert saved["prompts"] == len(groups) == 64
    kept_ids = {gid for i, (gid, s) in enumerate(groups) if i in saved["kept"]}
    assert [i for i, (_, s) in enumerate(groups) if s.max() > s.min()] == saved["kept"]
    assert 0 < len(saved["kept"]) < 64
    assert trained_on and trained_on <= kept_ids
    # resumed, the run reads its verdicts rather than sampling them again
    monkeypatch.setattr(GRPOLossModel, "spread", lambda *a: pytest.fail("the prompts were sampled again"))
    assert run_train(tmp_path / "grpo.yaml", "--resume") == 0


def test_the_packed_layout_trains_as_the_padded_one(tmp_path, tiny_base):
    """Each group's prompt once, no padding (`data.packing`, the default) against TRL's padded rows: the same
    samples, rewards and (to float rounding) loss, KL and entropy at the first step."""
    lines = {}
    for packing in (True, False):
        path = grpo_recipe(tmp_path / str(packing), tiny_base, name="grpo")
        raw = yaml.safe_load(path.read_text())
        raw["data"]["packing"] = packing
        raw["train"].update(max_steps=2, log_every=1, num_checkpoints=1)
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        assert run_train(path) == 0
        lines[packing] = metrics_lines(tmp_path / str(packing) / "runs" / "grpo")[0]
    packed, padded = lines[True], lines[False]
    for key in ("reward", "reward_std", "completions/mean_length"):
        assert packed[key] == padded[key], key
    for key in ("loss", "kl", "entropy"):
        assert packed[key] == pytest.approx(padded[key], abs=1e-5, rel=1e-4), key
    assert packed["tokens_per_s"] > 0 and padded["tokens_per_s"] > 0


def test_a_reward_function_that_raises_is_one_line_naming_it(tmp_path, tiny_base, capsys):
    path = grpo_recipe(tmp_path, tiny_base, rewards=[{"function": "my_rewards.py:broken"}])
    capsys.readouterr()
    assert run_train(path) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    err = [line for line in stderr.splitlines() if line.startswith("tunelab: error")]
    assert len(err) == 1 and "broken" in err[0] and "no twos" in err[0] and "train.grpo.rewards.0" in err[0], stderr


@pytest.mark.parametrize("change, says", [
    ({"lora": {"enabled": False}}, "takes its reference from the base under a LoRA adapter"),
    ({"train": {"strategy": "fsdp"}}, "whole weights"),
    ({"train": {"grpo": {"rewards": [{"task": "no-such-task"}]}}}, "no-such-task"),
    ({"data": {"replay": "self"}}, "use train.method rft"),
])
def test_recipes_grpo_cannot_train_are_refused(tmp_path, tiny_base, change, says):
    from tunelab.pipeline import train_recipe
    path = grpo_recipe(tmp_path, tiny_base)
    raw = yaml.safe_load(path.read_text())
    for section, value in change.items():
        for key, sub in value.items():
            raw[section][key] = {**raw[section][key], **sub} if isinstance(sub, dict) else sub
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(TunelabError, match=says):
        train_recipe(load_recipe(path))


@pytest.fixture(scope="module")
def sft_run(tiny_base, tmp_path_factory) -> Path:
    """A finished 8-step LoRA SFT run (rank 4, one checkpoint): what the continuing GRPO runs start from."""
    from tunelab.pipeline import train_recipe
    sft = write_recipe(tmp_path_factory.mktemp("sft"), "sft",
                       **lora_sections(tiny_base, max_steps=8, num_checkpoints=1), report_to=[])
    train_recipe(load_recipe(sft))
    return sft.parent / "runs" / "sft"


def test_grpo_continues_a_lora_runs_adapter_with_it_as_the_reference(tmp_path, tiny_base, sft_run, capsys):
    """`model.path: RUN` of a LoRA run: GRPO trains that run's best adapter further (one adapter over the original
    base is still what is handed in), and the KL term's reference is that adapter as it was, not the base."""
    path = grpo_recipe(tmp_path / "g", tiny_base, max_completion_length=12)
    raw = yaml.safe_load(path.read_text())
    raw["model"]["path"] = str(sft_run)
    raw["lora"]["rank"] = 16  # the continued adapter's own settings win (it was rank 4)
    raw["train"].update(max_steps=2, log_every=1, num_checkpoints=1)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    capsys.readouterr()
    assert run_train(path) == 0
    assert "continuing the adapter" in capsys.readouterr().err
    lines = metrics_lines(tmp_path / "g" / "runs" / "grpo")
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at the first step
    assert lines[1]["kl"] > 0
    adapter = list_checkpoints(tmp_path / "g" / "runs" / "grpo")[-1] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and Path(config["base_model_name_or_path"]).resolve() == Path(tiny_base).resolve()
    assert not (adapter / "reference").exists()
    from safetensors.torch import load_file
    start = load_file(list_checkpoints(sft_run)[-1] / "adapter" / "adapter_model.safetensors")
    end = load_file(adapter / "adapter_model.safetensors")
    assert start.keys() == end.keys()
    moved = max((end[k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 0.5  # trained further from where the SFT run left it, not from zero


def test_a_continued_runs_retention_is_against_the_original_base(tmp_path, tiny_base, sft_run, capsys):
    """The competition keeps the ORIGINAL base's abilities: a GRPO run on an SFT run's best checkpoint reports its
    gain over that checkpoint ("base", where it started) and its retention against the model the adapter was
    first trained on, evaluated on the ability tasks alone."""
    path = grpo_recipe(tmp_path / "g", tiny_base, max_completion_length=8)
    raw = yaml.safe_load(path.read_text())
    raw["model"]["path"] = str(sft_run)
    raw["train"].update(max_steps=1, num_checkpoints=1)
    raw["eval"] = {"batch_size": 16, "max_new_tokens": 8, "tasks": [
        {"task": "arithmetic", "source": {"generate": "arithmetic", "count": 12, "seed": 9,
                                          "options": {"kinds": ["int_add"], "int_digits": 1}}},
        {"task": "reading", "source": {"generate": "reading", "count": 12, "seed": 10}, "ability": True}]}
    raw["score"] = {"formula": "stage1", "accuracy_task": "arithmetic"}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    capsys.readouterr()
    assert run_train(path, verb="run") == 0
    stdout = capsys.readouterr().out
    run_dir = tmp_path / "g" / "runs" / "grpo"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["original_base"]) == {"reading"}  # the ability tasks only
    origin = json.loads((run_dir / "eval" / "original-base" / "results.json").read_text())
    kept = metrics["retention"]
    assert set(kept) == {"reading.f1", "reading.exact_match"}
    assert all(v["base"] == origin["reading"][k.split(".")[1]] for k, v in kept.items())
    assert "arithmetic" in metrics["base"]  # the gain is over where the run started
    report = (run_dir / "report.md").read_text()
    assert "vs original base" in report + stdout and "(grpo.png)" in report


def test_grpo_on_a_4bit_base_samples_scores_and_trains_its_adapter(tmp_path, tiny_base):
    """QLoRA: the base in NF4 (bitsandbytes on this CPU, not a mock), sampled by the decoding core, the packed
    forward through the quantised layers, the KL reference with the adapter off; the adapter learns."""
    path = grpo_recipe(tmp_path, tiny_base, max_completion_length=8)
    raw = yaml.safe_load(path.read_text())
    raw["model"]["quantization"] = "nf4"
    raw["train"].update(max_steps=4, log_every=1, num_checkpoints=1)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert run_train(path) == 0
    lines = metrics_lines(tmp_path / "runs" / "grpo")
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(x["kl"] >= 0 and x["grad_norm"] > 0 for x in lines) and lines[0]["kl"] == pytest.approx(0, abs=1e-6)
    adapter = list_checkpoints(tmp_path / "runs" / "grpo")[-1] / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0


def test_a_two_process_grpo_run_killed_inside_a_generation_batch_resumes_to_the_unbroken_run(tmp_path, tiny_base):
    """DDP under torchrun (gloo), num_iterations 3: each rank keeps its own generation batch, so a checkpoint holds
    every rank's (`trainer_state.gather_objects`) and each resumed rank takes its own back. Killed (SIGKILL to the
    whole process group) after the step-4 checkpoint of 8, inside the batch sampled at step 3, the resumed run
    ends with the unbroken one's metrics and adapter."""
    import os
    import signal
    import time

    def torchrun(path: Path, *extra: str, kill_after_checkpoint: bool = False):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tunelab.cli", "train", str(path), *extra]
        if not kill_after_checkpoint:
            r = subprocess.run(cmd, cwd=path.parent, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-4000:]
            return
        proc = subprocess.Popen(cmd, cwd=path.parent, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        run_dir = path.parent / "runs" / "grpo"
        deadline = time.monotonic() + 300
        while not list_checkpoints(run_dir):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (run_dir / "train_summary.json").exists()

    grpo = {"num_iterations": 3, "beta": 0.0}
    unbroken = grpo_recipe(tmp_path / "a", tiny_base, steps=8, checkpoints=2, **grpo)
    torchrun(unbroken)
    path = grpo_recipe(tmp_path / "b", tiny_base, steps=8, checkpoints=2, **grpo)
    torchrun(path, kill_after_checkpoint=True)
    torchrun(path, "--resume")
    got, want = metrics_lines(tmp_path / "b" / "runs" / "grpo"), metrics_lines(tmp_path / "a" / "runs" / "grpo")
    assert [g["step"] for g in got] == [w["step"] for w in want] == [2, 4, 6, 8]
    for g, w in zip(got, want):
        for key in ("loss", "reward", "completions/mean_length", "clip_ratio/region_mean", "grad_norm"):
            assert g.get(key) == pytest.approx(w.get(key), abs=1e-6), (g["step"], key)
    state = torch.load(list_checkpoints(tmp_path / "b" / "runs" / "grpo")[0] / "trainer_state.pt",
                       weights_only=False)
    assert len(state["loss_window"]) == 2 and all(w["buffer"] for w in state["loss_window"])  # inside a batch
    a = torch.load(list_checkpoints(tmp_path / "b" / "runs" / "grpo")[-1] / "trainer_state.pt",
                   weights_only=False)["trainable"]
    b = torch.load(list_checkpoints(tmp_path / "a" / "runs" / "grpo")[-1] / "trainer_state.pt",
                   weights_only=False)["trainable"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
