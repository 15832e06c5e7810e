"""`tunelab handin RUN --out DIR`: the submission a MindFormers competition asks for, from a finished run.

The rules ask for the hyper-parameter configuration, five merged full checkpoints saved at evenly spaced
points (the best one is scored), self-check results (logs, accuracy, retention, ratio, score), the
environment and an algorithm description. The bundle:

    recipe.yaml, mindformers.yaml   the run's recipe; the same settings as MindFormers YAML (model_config,
                                    pet_config, runner_config, lr_schedule) for the organisers' runner
    checkpoints/step-N/             each of the five checkpoints merged (`tunelab export`), as MindFormers
                                    `model.ckpt` (+ HF safetensors with --format both/hf)
    logs/                           training log (metrics.jsonl), train_summary.json, every eval results.json
    predictions/                    the prediction files of every evaluated checkpoint and of the base
    report.md, run_report.md        accuracy, retention, ratio, score (and the run's own report)
    plots/                          loss.png, checkpoints.png, frontier.png
    environment.txt                 Python, platform, torch, CUDA/NPU, the packages beyond a named base
    DESCRIPTION.md                  the algorithm description, pre-filled from the recipe, for the entrant
    MANIFEST.sha256                 sha256 of every other file (`sha256sum -c MANIFEST.sha256` checks it)

It refuses, naming what is missing, before writing anything: not five checkpoints, checkpoints not evenly
spaced, no metrics.json, no retention result. The bundle is written beside DIR and renamed into place.

With `--scale` the best checkpoint, the one scored, is merged with its LoRA update times that scale
(`tunelab.model.lora_scale`): a scale the run's adapter-scale frontier evaluated, or the one it chose
(`tunelab.pipeline.scale_frontier`), so that the accuracy, retention and score the report gives are the ones
measured of what is handed in. The other four checkpoints are merged as trained.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import yaml

from tunelab.checkpoint_manifest import file_sha256
from tunelab.errors import TunelabError
from tunelab.recipe import MINDFORMERS_MODULES
from tunelab.recipe.lora import adapter_targets
from tunelab.records import read_json_object, read_text, read_yaml
from tunelab.runs import check_checkpoints, list_checkpoints

REQUIRED_CHECKPOINTS = 5
_HF_TO_MINDFORMERS = {hf: ms for ms, hf in MINDFORMERS_MODULES.items()}


def check_run(run_dir: Path) -> dict:
    """The run's metrics.json after checking what the rules require; every problem in one message."""
    problems = [f"checkpoint {c.name} is damaged ({c.detail}): resume the run to rewrite it, or hand in another run"
                for c in check_checkpoints(run_dir) if c.status == "damaged"]
    ckpts = list_checkpoints(run_dir)
    steps = [int(c.name.split("-")[1]) for c in ckpts]
    if len(ckpts) != REQUIRED_CHECKPOINTS:
        problems.append(f"the rules ask for {REQUIRED_CHECKPOINTS} checkpoints, this run has {len(ckpts)} "
                        f"(train.num_checkpoints: 5)")
    elif not evenly_spaced(steps):
        problems.append(f"checkpoints are not evenly spaced: steps {steps}")
    metrics_path = run_dir / "metrics.json"
    metrics: dict = {}
    if not metrics_path.exists():
        problems.append("no metrics.json (the run was not evaluated: `tunelab run`)")
    else:
        metrics = read_json_object(metrics_path)
        if "score" not in metrics:
            problems.append("metrics.json has no accuracy/score (eval.tasks and score.accuracy_task)")
        if not metrics.get("retention"):
            problems.append("metrics.json has no retention result (eval.baseline: true and a task with "
                            "ability: true)")
    for name in ("recipe.yaml", "train_summary.json", "metrics.jsonl"):
        if not (run_dir / name).exists():
            problems.append(f"no {name}")
    if problems:
        raise TunelabError("cannot hand in: " + "; ".join(problems), file=run_dir)
    return metrics


def frontier_point(metrics: dict, scale: float | str | None) -> dict | None:
    """The frontier point (`scale_frontier`'s) the best checkpoint is handed in at: None without a scale; else
    the chosen one or the one of that scale, an error naming the scale when the run did not measure it."""
    if scale is None:
        return None
    from tunelab.model.lora_scale import asked_scale
    frontier = metrics.get("scale_frontier")
    if not frontier:
        raise TunelabError("the run has no adapter-scale frontier (eval.scales in its recipe): the hand-in report "
                           "gives what was measured, so it takes only a scale the run evaluated", field="scale")
    scale = asked_scale(scale, frontier)
    point = next((p for p in frontier["points"] if p["scale"] == scale), None)
    if point is None:
        evaluated = ", ".join(format(p["scale"], "g") for p in frontier["points"])
        raise TunelabError(f"the run did not evaluate scale {scale:g} (it evaluated {evaluated}): the hand-in "
                           "report gives what was measured", field="scale")
    return point


def evenly_spaced(steps: list[int]) -> bool:
    """Steps k*T/n rounded (`tunelab.train.checkpoints.checkpoint_steps`): gaps from step 0 differ by at
    most one step."""
    gaps = [b - a for a, b in zip([0] + steps, steps)]
    return bool(gaps) and max(gaps) - min(gaps) <= 1 and min(gaps) > 0


def mindformers_yaml(recipe: dict, base_config: dict | None) -> dict:
    """The run's settings as MindFormers YAML sections (what its finetune YAMLs hold)."""
    train, lora, data = recipe.get("train", {}), recipe.get("lora", {}), recipe.get("data", {})
    out: dict = {}
    model_config: dict = {}
    if base_config is not None:
        from tunelab.convert.mindformers import mindformers_model_config
        model_config = mindformers_model_config(base_config, seq_length=data.get("max_seq_len"))
    if lora.get("enabled", True) and lora.get("adapter", "lora") == "lora":  # another kind is handed in merged
        targets = adapter_targets("lora", lora.get("target_modules"))
        targets = [targets] if isinstance(targets, str) else targets
        model_config["pet_config"] = {
            "pet_type": "lora", "lora_rank": lora.get("rank"), "lora_alpha": lora.get("alpha"),
            "lora_dropout": lora.get("dropout"),
            "target_modules": "|".join(f".*{_HF_TO_MINDFORMERS.get(t, t)}" for t in targets)}
    if model_config:
        out["model"] = {"model_config": model_config}
    out["runner_config"] = {"epochs": train.get("epochs"), "batch_size": train.get("batch_size")}
    out["lr_schedule"] = {"type": "CosineWithWarmUpLR", "learning_rate": train.get("lr"),
                          "warmup_ratio": train.get("warmup_ratio"), "total_steps": -1}
    return out


def environment_text(base_packages: Path | None) -> str:
    """Python, platform, torch and its accelerator, then the installed packages not in the base list."""
    from importlib import metadata
    lines = [f"python {sys.version.split()[0]}", f"platform {platform.platform()}"]
    try:
        import torch
        lines.append(f"torch {torch.__version__}")
        lines.append(f"cuda {torch.version.cuda or 'none'} (available: {torch.cuda.is_available()})")
    except ImportError:
        lines.append("torch not installed")
    try:
        npu = metadata.version("torch_npu")
        lines.append(f"torch_npu {npu}")
    except metadata.PackageNotFoundError:
        lines.append("torch_npu not installed")
    installed = sorted({(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}.items())
    if base_packages:
        if not base_packages.is_file():
            raise TunelabError("base package list not found", file=base_packages, field="base_packages")
        base = {line.split("==")[0].split(" @ ")[0].strip().lower()
                for line in read_text(base_packages).splitlines()
                if line.strip() and not line.startswith("#")}
        extra = [(n, v) for n, v in installed if n and n not in base]
        lines += ["", f"# packages beyond {base_packages.name} ({len(extra)})"]
    else:
        extra = [(n, v) for n, v in installed if n]
        lines += ["", f"# every installed package ({len(extra)}; give --base-packages to list only the additions)"]
    lines += [f"{n}=={v}" for n, v in extra]
    return "\n".join(lines) + "\n"


def _method(lora: dict) -> str:
    """The trained parameters in words, from the run's `lora` section."""
    if not lora.get("enabled", True):
        return "full fine-tuning (every parameter trains)"
    kind = lora.get("adapter", "lora")
    targets = adapter_targets(kind, lora.get("target_modules")) or "peft's default for the model"
    if kind == "lora":
        return (f"LoRA (rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
                f"target modules {targets})")
    if kind == "prompt_tuning":  # never handed in (export refuses it): said for a run's own description
        return (f"prompt tuning ({lora.get('virtual_tokens', 20)} trained virtual tokens before every input; no "
                "weight changes, nothing merged)")
    name = {"ia3": "IA³ (learnt scales of the layers' outputs, or inputs of the feed-forward ones)",
            "vera": f"VeRA (rank {lora.get('rank')} frozen shared random matrices, trained scaling vectors)",
            "ln_tuning": "LN tuning (the norm layers' weights)"}.get(kind, kind)
    return f"{name}, target modules {targets}; merged into the handed-in weights"


def _replay_line(replay) -> str:
    """The base's own answers trained beside the task (`data.replay`): a judge reading the hand-in learns why the
    abilities were kept, not only the task's sources. `replay: self` written short is the defaults."""
    replay = replay if isinstance(replay, dict) else {}
    drawn = (f"{replay['count']:,} drawn" if replay.get("count")
             else f"{100 * (replay.get('fraction') or 0.1):g}% of the examples")
    prompts = ", ".join(map(str, replay.get("prompts") or ["shipped"]))
    cut = ", cut where they loop" if replay.get("loops") == "cut" else ""
    return (f"  - the base's own answers to general prompts ({prompts}), replayed: {drawn}, up to "
            f"{replay.get('max_new_tokens') or 128} tokens{cut}")


def _method_line(train: dict) -> list[str]:
    """The training method when it is not plain fine-tuning, with what an RFT stage sampled and kept."""
    method = train.get("method") or "sft"
    if method == "sft":
        return []
    if method == "rft":
        rft = train.get("rft") or {}
        return [f"- method: rejection-sampling fine-tuning (RFT): {rft.get('num_generations', 8)} answers a problem "
                f"sampled at temperature {rft.get('temperature', 0.7)}, at most {rft.get('keep', 2)} the grader "
                "accepts trained a problem"]
    return [f"- method: {method}"]


def _epochs_text(train: dict, summary: dict) -> str:
    """The recipe's epochs, or, when `train.max_steps` ended the schedule, how much of an epoch those steps saw: a
    short schedule on the same data reads as one, not as the epochs it never finished."""
    rows = summary.get("rows_per_epoch")
    if not train.get("max_steps") or not rows:
        return f"epochs {train.get('epochs')}"
    seen = (summary.get("steps") or 0) * train.get("batch_size", 1) * train.get("grad_accum", 1) \
        * summary.get("world_size", 1)
    return f"train.max_steps {train['max_steps']}: {seen / rows:.2g} of an epoch of {rows:,} rows"


def description(recipe: dict, summary: dict, metrics: dict, point: dict | None = None) -> str:
    """DESCRIPTION.md: the facts the recipe and run know, and the parts only the entrant can write. `point`: the
    frontier point the best checkpoint is handed in at (`frontier_point`)."""
    lora, train, data = recipe.get("lora", {}), recipe.get("train", {}), recipe.get("data", {})
    sources = data.get("train", [])
    method = _method(lora)
    n_sources = len(sources) + bool(data.get("replay"))
    lines = [f"# {recipe.get('name')}: algorithm description", "",
             "<!-- Pre-filled by `tunelab handin` from the recipe and the run; complete the TODO parts. -->", "",
             "## Method", "", f"- {method}",
             f"- base model: {recipe.get('model', {}).get('path') or recipe.get('model', {}).get('preset')}",
             f"- trainable parameters {summary.get('trainable_params'):,} of {summary.get('total_params'):,}"
             f" (low-parameter ratio {metrics['ratio']['ratio']:.6g})", "",
             "## Data", "",
             f"- {summary.get('samples'):,} training examples from {n_sources} source(s):"]
    for s in sources:
        if s.get("corpus") and s.get("replay"):
            lines.append(f"  - corpus {s['corpus']} (replayed as {100 * s['replay']:g}% of the training tokens, "
                         f"{summary.get('replayed_blocks', 0):,} blocks)")
            continue
        if s.get("corpus"):
            lines.append(f"  - corpus {s['corpus']} (pretraining)")
            continue
        what = s.get("path") or f"generated {s.get('generate')}"
        lines.append(f"  - {what} (format {s.get('format', 'auto')}, count {s.get('count', 'all')})")
    if data.get("replay"):
        lines.append(_replay_line(data["replay"]))
    lines += [f"- template {data.get('template')}, max sequence length {data.get('max_seq_len')}, "
              f"packing {data.get('packing')}, loss on {data.get('loss_on')}", "",
              "## Training", "",
              f"- {summary.get('steps')} optimizer steps, {_epochs_text(train, summary)}, batch size "
              f"{train.get('batch_size')} x grad_accum {train.get('grad_accum', 1)}, learning rate "
              f"{train.get('lr')} (warmup {train.get('warmup_ratio')}, cosine to {train.get('min_lr_ratio')}), "
              f"precision {summary.get('precision') or train.get('precision')} (as trained; the recipe asked for "
              f"{train.get('precision')})",
              *_method_line(train),
              f"- five checkpoints at evenly spaced steps; best: {metrics.get('best_checkpoint')}"
              + ("" if point is None else f", merged with its LoRA update times {point['scale']:g} (weight-space "
                                          "interpolation toward the base, chosen on the adapter-scale frontier)"),
              "",
              "## Why this works", "", "TODO: the idea behind the data mix and the settings, what was tried.", "",
              "## Reproducing", "", *_reproducing(summary), "",
              "```bash", "tunelab run recipe.yaml", "```", ""]
    return "\n".join(lines)


def _reproducing(summary: dict) -> list[str]:
    """Hardware and training time as the run recorded them (a run from before they were recorded: a TODO)."""
    seconds = summary.get("train_seconds")
    took = f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "TODO"
    if summary.get("resumed_from"):
        took += f" (resumed at step {summary['resumed_from']}; summed over the sessions)"
    return [f"- hardware: {summary.get('hardware') or 'TODO'}",
            f"- training wall-clock: {took}; evaluation and scoring come on top"]


def report(metrics: dict, recipe: dict, point: dict | None = None) -> str:
    """report.md: the scored checkpoint's accuracy, ratio, score and retention — at the adapter scale it is
    handed in at when `point` (`frontier_point`) is given — and every checkpoint's results."""
    s, r = metrics["score"], metrics["ratio"]
    accuracy, score, retention = s["accuracy"], s["value"], metrics["retention"]
    scaled = ""
    if point is not None:
        accuracy, score, retention = point["accuracy"], point["score"], point["retention"]["entries"]
        scaled = (f", merged at adapter scale **{point['scale']:g}** (its LoRA update times {point['scale']:g}: "
                  "`tunelab handin --scale`; the frontier of every scale is in run_report.md)")
    acc_task = recipe.get("score", {}).get("accuracy_task", "arithmetic")
    lines = [f"# Hand-in report: {recipe.get('name')}", "",
             f"- best checkpoint: **{metrics['best_checkpoint']}**{scaled}",
             f"- accuracy ({acc_task}): **{100 * accuracy:.2f}%**",
             f"- low-parameter ratio: {r['ratio']:.9g} ({r['trainable']:,} / {r['total']:,.0f})",
             f"- {s['formula']} score: **{score:.4f}**", "", "## Retention of original abilities", "",
             "| metric | base | tuned | retained | verdict |", "|---|---|---|---|---|"]
    from tunelab.eval.retention import verdict
    for key, v in retention.items():
        kept = "–" if v.get("retained") is None else f"{100 * v['retained']:.1f}%"
        lines.append(f"| {key} | {v['base']:.2f} | {v['tuned']:.2f} | {kept} | {verdict(v)} |")
    lines += ["", "## Every checkpoint", "", "| checkpoint | " + " | ".join(
        next(iter(metrics["checkpoints"].values()))) + " |", "|---|" + "---|" * len(
        next(iter(metrics["checkpoints"].values())))]
    from tunelab.report import checkpoint_cell
    for name, res in metrics["checkpoints"].items():
        lines.append(f"| {name} | " + " | ".join(checkpoint_cell(v) for v in res.values()) + " |")
    return "\n".join(lines) + "\n"


def handin(run_dir: str | Path, out: str | Path, fmt: str = "mindspore", dtype: str = "bfloat16",
           base_packages: str | Path | None = None, scale: float | str | None = None) -> Path:
    from tunelab.convert.export import export
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise TunelabError("output directory exists and is not empty", file=out)
    metrics = check_run(run_dir)
    point = frontier_point(metrics, scale)
    recipe, _ = read_yaml(run_dir / "recipe.yaml")
    summary = read_json_object(run_dir / "train_summary.json")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy(run_dir / "recipe.yaml", tmp / "recipe.yaml")
        base_config = None
        for ckpt in list_checkpoints(run_dir):
            at = point["scale"] if point is not None and ckpt.name == metrics["best_checkpoint"] else None
            dest = export(ckpt, tmp / "checkpoints" / ckpt.name, dtype, fmt=fmt, scale=at)
            if base_config is None:
                base_config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
        (tmp / "mindformers.yaml").write_text(
            "# The run's settings in MindFormers' YAML sections (merge into the organisers' finetune YAML)\n"
            + yaml.safe_dump(mindformers_yaml(recipe, base_config), sort_keys=False, allow_unicode=True),
            encoding="utf-8")
        logs = tmp / "logs"
        logs.mkdir()
        for name in ("metrics.jsonl", "train_summary.json", "metrics.json"):
            shutil.copy(run_dir / name, logs / name)
        for results in sorted((run_dir / "eval").glob("*/results.json")):
            shutil.copy(results, logs / f"eval-{results.parent.name}.json")
        preds = tmp / "predictions"
        preds.mkdir()
        for p in sorted((run_dir / "eval").glob("*/*.predictions.jsonl")):
            (preds / p.parent.name).mkdir(exist_ok=True)
            shutil.copy(p, preds / p.parent.name / p.name)
        plots = tmp / "plots"
        plots.mkdir()
        for png in ("loss.png", "checkpoints.png", "frontier.png"):
            if (run_dir / png).exists():
                shutil.copy(run_dir / png, plots / png)
        (tmp / "report.md").write_text(report(metrics, recipe, point), encoding="utf-8")
        if (run_dir / "report.md").exists():
            shutil.copy(run_dir / "report.md", tmp / "run_report.md")
        (tmp / "environment.txt").write_text(environment_text(Path(base_packages) if base_packages else None),
                                             encoding="utf-8")
        (tmp / "DESCRIPTION.md").write_text(description(recipe, summary, metrics, point), encoding="utf-8")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        (tmp / "MANIFEST.sha256").write_text(
            "".join(f"{file_sha256(p)}  {p.relative_to(tmp).as_posix()}\n" for p in files), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
