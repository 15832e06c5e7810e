"""`tunelab export`: turn a run (its best or last checkpoint, as `tunelab.runs.pick_checkpoint` chooses it for
serve and predict too) into a standalone HF model directory, or into one GGUF file for llama.cpp, Ollama and
LM Studio (`export_gguf_dir`, the writing in `gguf_export`).

Adapters are merged into the base; weights are saved as safetensors in the chosen dtype with the tokenizer,
the prompt template and a model card (recipe, seed, training time, measured abilities). With a scale (`--scale`),
a LoRA adapter's update is merged times that scale (`tunelab.model.lora_scale`): a number in (0, 1], or `chosen`,
the scale the run's adapter-scale frontier chose (`tunelab.pipeline.scale_frontier`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.runs import best_results, pick_checkpoint, verdict


def model_card(run_dir: Path, source: Path, scale: float | None = None) -> str:
    """A README.md for the exported model from the run's recipe, summary and metrics, and the adapter scale it
    was merged at (None: as trained). A summary or metrics file that is not what tunelab wrote (edited, damaged)
    is an error naming it, not a traceback."""
    from tunelab.records import read_json_object, read_text
    scaled = "" if scale is None else f", its LoRA update times {scale:g} (W + s·ΔW: toward the base)"
    lines = [f"# {run_dir.name}", "", f"Exported by `tunelab export` from `{source}`{scaled}.", ""]
    recipe = run_dir / "recipe.yaml"
    def abilities(m: dict) -> list[str]:
        return _scale_lines(m, scale, source.parent.name) + _ability_lines(m, scale)
    for path, section in ((run_dir / "train_summary.json", _training_lines), (run_dir / "metrics.json", abilities)):
        if path.exists():
            try:
                lines += section(read_json_object(path))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise TunelabError(f"not a tunelab {path.name} ({type(e).__name__}: {e}); move it aside to "
                                   "export without it", file=path) from e
    if recipe.exists():
        lines += ["## Recipe", "", "```yaml", read_text(recipe).rstrip(), "```", ""]
    return "\n".join(lines)


def _training_lines(s: dict) -> list[str]:
    return ["## Training", "",
            f"- {s['steps']} optimizer steps over {s['samples']:,} samples, {s['train_seconds'] / 60:.0f} "
            f"minutes of CPU/GPU time (world size {s['world_size']})",
            f"- final training loss {s['final_loss']:.4f}",
            f"- parameters: {s['total_params']:,} (trainable {s['trainable_params']:,})", ""]


def _scale_lines(m: dict, scale: float | None, checkpoint: str) -> list[str]:
    """What the run measured of `checkpoint` at the scale the export was merged at, when its frontier holds it."""
    if scale is None:
        return []
    frontier = m.get("scale_frontier") or {}
    point = next((p for p in frontier.get("points", []) if p["scale"] == scale
                  and frontier["checkpoint"] == checkpoint), None)
    lines = [f"## Adapter scale {scale:g}", ""]
    if point is None:
        return lines + ["Not evaluated at this scale (a run evaluates the scales in its recipe's eval.scales); "
                        "the abilities below are the checkpoint's as trained.", ""]
    lines.append(f"- {frontier['accuracy_task']}: {100 * point['accuracy']:.1f}% ({frontier['checkpoint']} at "
                 f"scale {scale:g})")
    judged = point["retention"]
    if judged.get("verdict"):  # as the evaluation wrote it (`tunelab.eval.retention.overall`)
        lines.append(f"- retention: {judged['verdict']}")
    lines += [f"- retention {key}: " + (verdict(entry) if entry.get("retained") is None else
                                        f"{100 * entry['retained']:.1f}% of the base's, {verdict(entry)}")
              for key, entry in judged["entries"].items()]
    return lines + [""]


def _ability_lines(m: dict, scale: float | None = None) -> list[str]:
    best = m.get("best_checkpoint")
    if not best:
        return []
    lines = [f"## Measured abilities ({best}{'' if scale is None else ', as trained: scale 1'})", ""]
    for task, res in best_results(m).items():  # pretraining: maybe no tasks
        keys = [k for k in ("accuracy", "format_ok", "within_tol", "digit_acc", "exact_match", "f1",
                            "perplexity", "unigram_perplexity", "rougeL_f", "fact_recall") if k in res]
        shown = ", ".join(f"{k} {res[k] * 100:.1f}%" if res[k] <= 1 and k not in ("f1", "exact_match",
                                                                               "rougeL_f", "perplexity")
                          else f"{k} {res[k]:.1f}" for k in keys)
        lines.append(f"- **{task}** (n={res.get('n', '?')}): {shown}")
    return lines + [""]


def export(run_or_ckpt: str | Path, out: str | Path, dtype: str = "bfloat16", which: str = "best",
           fmt: str = "hf", scale: float | str | None = None) -> Path:
    """Merged weights, tokenizer, prompt template and the checkpoint's generation_config.json (the decoding
    its evaluation used), so the export answers under plain `transformers` as it did in `tunelab eval`.
    `fmt`: "hf" (that directory), "mindspore" (the same directory with `model.ckpt` and
    `model_config.yaml`, MindFormers' names and its `model.model_config`, in place of the safetensors weights)
    or "both" (the HF directory plus `mindspore/model.ckpt` and `mindspore/model_config.yaml`). `scale`: merge a
    LoRA adapter's update times this (`resolve_scale`); None merges it as trained."""
    if fmt not in ("hf", "mindspore", "both"):
        raise TunelabError(f"unknown export format '{fmt}' (hf, mindspore, both)", field="fmt")
    import torch

    from tunelab.data.templates import TEMPLATE_FILE
    from tunelab.decoding.generation_config import GENERATION_CONFIG_FILE, load_generation_config, with_stop_ids
    from tunelab.model.loading import is_adapter_dir, quiet_transformers
    quiet_transformers()
    src, out = Path(run_or_ckpt), _fresh_output(out)
    model_dir = pick_checkpoint(src, which)
    run_dir = _run_dir(src, model_dir)
    scale = resolve_scale(scale, run_dir, model_dir)
    model, tokenizer = _load_merged(model_dir, scale)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if (model_dir / TEMPLATE_FILE).exists():
        shutil.copy(model_dir / TEMPLATE_FILE, tmp / TEMPLATE_FILE)
    # generation_config.json: the checkpoint's, the decoding its evaluation used (an adapter's own, not the base's
    # that save_pretrained wrote), else the model's own; either way listing every stop id
    own = load_generation_config(model_dir) if is_adapter_dir(model_dir) else None
    config = with_stop_ids(own if own is not None else model.generation_config, model, tokenizer)
    config.to_json_file(tmp / GENERATION_CONFIG_FILE, use_diff=True)
    (tmp / "README.md").write_text(model_card(run_dir, model_dir, scale), encoding="utf-8")
    if fmt != "hf":
        _add_mindspore(tmp, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _fresh_output(out: str | Path) -> Path:
    """The export's output directory, refused when it holds anything: an export never overwrites."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TunelabError("output directory exists and is not empty", file=out)
    return out


def _run_dir(src: Path, model_dir: Path) -> Path:
    """The run a checkpoint's model directory belongs to (runs/X/checkpoints/C/model -> runs/X), else `src`."""
    return model_dir.parent.parent.parent if model_dir.parent.parent.name == "checkpoints" else src


def resolve_scale(scale: float | str | None, run_dir: Path, model_dir: Path) -> float | None:
    """The adapter scale an export merges at: None (as trained), a number in (0, 1], or `chosen`: the scale the
    run's frontier chose for its checkpoint (`tunelab.pipeline.scale_frontier`), an error when the run has no
    frontier, chose none, or this export is of another checkpoint. Errors name the `scale` argument."""
    from tunelab.model.lora_scale import asked_scale
    from tunelab.records import read_json_object
    if scale != "chosen":
        return asked_scale(scale, None)
    metrics = run_dir / "metrics.json"
    frontier = read_json_object(metrics).get("scale_frontier") if metrics.is_file() else None
    if frontier and model_dir.parent.name != frontier["checkpoint"]:
        raise TunelabError(f"'chosen' is a scale of {frontier['checkpoint']}, the checkpoint the frontier measured; "
                           f"this export is of {model_dir.parent.name}", file=run_dir, field="scale")
    return asked_scale(scale, frontier, file=run_dir)


def _load_merged(model_dir: Path, scale: float | None, dtype: str = "float32"):
    """(model, tokenizer) with the adapter merged, its update times `scale` when one below 1 is given: the scaled
    adapter is written to a temporary directory (`scaled_adapter`), loaded and dropped."""
    from tunelab.model.loading import check_mergeable, is_adapter_dir, load_for_inference
    check_mergeable(model_dir, "exporting a model (and the hand-in, which exports each checkpoint)")
    if scale is None or scale == 1:
        return load_for_inference(str(model_dir), dtype=dtype, merge=True)
    if not is_adapter_dir(model_dir):
        raise TunelabError("an adapter scale scales a LoRA adapter's update, and this is a full model (a full "
                           "fine-tune has no adapter)", file=model_dir, field="scale")
    from tunelab.model.lora_scale import scaled_adapter
    with tempfile.TemporaryDirectory(prefix="tunelab-scaled-") as tmp:
        return load_for_inference(str(scaled_adapter(model_dir, scale, Path(tmp) / "adapter")), dtype=dtype,
                                  merge=True)


def export_gguf_dir(run_or_ckpt: str | Path, out: str | Path, quant: str = "f16", which: str = "best",
                    scale: float | str | None = None):
    """`tunelab export --format gguf`: the run's best (or last) checkpoint, merged (at `scale`, as `export`), as
    `out/NAME-QUANT.gguf` (NAME: the run's or the model directory's name) with the tokenizer and chat template in
    its metadata, and an Ollama `Modelfile` beside it. Returns `gguf_export.GGUFExport`."""
    from tunelab.convert.gguf_export import QUANTS, check_architecture, export_gguf
    from tunelab.data.templates import load_template
    from tunelab.model.loading import adapter_base, is_adapter_dir, quiet_transformers
    from tunelab.model.presets import load_config
    from tunelab.records import building_dir
    if quant not in QUANTS:
        raise TunelabError(f"unknown GGUF type '{quant}' ({', '.join(QUANTS)})", field="quant")
    quiet_transformers()
    src, out = Path(run_or_ckpt), _fresh_output(out)
    model_dir = pick_checkpoint(src, which)
    check_architecture(load_config(adapter_base(str(model_dir)) if is_adapter_dir(model_dir) else str(model_dir)))
    run_dir = _run_dir(src, model_dir)
    model, tokenizer = _load_merged(model_dir, resolve_scale(scale, run_dir, model_dir))
    name = run_dir.resolve().name
    template = load_template(model_dir)
    with building_dir(out) as tmp:
        result = export_gguf(model, tokenizer, Path(tmp), name, quant, template.system if template else "")
    command = result.quantize_command and result.quantize_command.replace(str(tmp), str(out))
    return dataclasses.replace(result, path=out / result.path.name, quantize_command=command)


def _add_mindspore(hf_dir: Path, fmt: str) -> None:
    """MindFormers' checkpoint and model_config of the HF weights just written (`tunelab convert`'s mapping);
    with fmt "mindspore" the safetensors weights are then removed, the small HF files stay."""
    import yaml

    from tunelab.convert.mindformers import hf_to_mindspore, mindformers_model_config
    dest = hf_dir / "mindspore" if fmt == "both" else hf_dir
    dest.mkdir(exist_ok=True)
    hf_to_mindspore(hf_dir, dest / "model.ckpt")
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    fragment = {"model": {"model_config": mindformers_model_config(cfg)}}
    (dest / "model_config.yaml").write_text(yaml.safe_dump(fragment, sort_keys=False), encoding="utf-8")
    if fmt == "mindspore":
        for p in hf_dir.glob("model*.safetensors*"):
            p.unlink()
