"""Peak memory and time of `tunelab convert` (HF <-> MindFormers .ckpt) against MindFormers' own way.

MindFormers' `convert_weight.py` loads the whole model (`LlamaForCausalLM.from_pretrained`), converts its
`state_dict()` into a list and saves that list: the model and its converted copy are in memory together. The
baseline here does the same (with tunelab's .ckpt writer, as MindSpore need not be installed). tunelab
streams one tensor at a time. A synthetic bf16 Llama of about --gb GB is written shard by shard (never whole
in memory), each conversion runs in a fresh process, and its peak RSS (ru_maxrss) is printed next to the
model's size; the ratio that matters is peak / model size (about 2 for the baseline, far below 1 for
tunelab, so an 8B model (16 GB in bf16) converts on a 32 GB machine).

    python benchmarks/bench_convert.py            # ~1 GB model, about a minute
    python benchmarks/bench_convert.py --gb 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

log = common.logger("convert")

CHILD = {
    "tunelab HF -> ckpt": "from tunelab.convert.mindformers import hf_to_mindspore as f; f(A, B)",
    "baseline HF -> ckpt (whole model, as MindFormers)": (
        "import torch; from transformers import LlamaForCausalLM\n"
        "from tunelab.convert.mindformers import hf_to_ms_name\n"
        "from tunelab.convert.mindspore_ckpt import write_ckpt\n"
        "m = LlamaForCausalLM.from_pretrained(A, dtype=torch.bfloat16)\n"
        "items = [(hf_to_ms_name(k), v.clone()) for k, v in m.state_dict().items()]\n"
        "write_ckpt(B, items)"),
    "tunelab ckpt -> HF": "from tunelab.convert.mindformers import mindspore_to_hf as f; f(B, C, config=A)",
}


def synthetic_model(root: Path, gb: float) -> tuple[Path, float]:
    """A random bf16 Llama of about `gb` GB, one safetensors shard per layer group, written tensor by tensor."""
    import torch
    from safetensors.torch import save_file
    hidden, inter, vocab, heads = 2048, 5632, 32000, 16
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2
    layers = max(1, round((gb * 1e9 - 2 * vocab * hidden * 2) / per_layer))
    d = root / "hf"
    d.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "vocab_size": vocab, "rms_norm_eps": 1e-5, "hidden_act": "silu",
              "max_position_embeddings": 2048, "tie_word_embeddings": False, "dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(config))
    weight_map = {}
    shards = [["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]] + [
        [f"model.layers.{i}.{m}" for m in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                           "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                           "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                                           "input_layernorm.weight", "post_attention_layernorm.weight")]
        for i in range(layers)]
    shapes = {"embed_tokens": (vocab, hidden), "lm_head": (vocab, hidden), "norm": (hidden,),
              "q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
              "o_proj": (hidden, hidden), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
              "down_proj": (hidden, inter), "layernorm": (hidden,)}
    total = 0
    for n, names in enumerate(shards):
        fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            module = name.split(".")[-2]  # q_proj, input_layernorm, embed_tokens, …
            key = "layernorm" if module.endswith("layernorm") else module
            tensors[name] = torch.randn(shapes[key], dtype=torch.bfloat16)
            total += tensors[name].nbytes
            weight_map[name] = fname
        save_file(tensors, d / fname, metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    return d, total / 1e9


def run_child(code: str, a: Path, b: Path, c: Path) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of `code` in a fresh interpreter."""
    prog = (f"A, B, C = {str(a)!r}, {str(b)!r}, {str(c)!r}\n{code}\n"
            "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1e6, time.perf_counter() - t  # ru_maxrss is in KB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="model size in GB (bf16)")
    ap.add_argument("--out", default=str(common.HERE / "results" / "convert.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        model, size = synthetic_model(root, args.gb)
        log(f"synthetic Llama: {size:.2f} GB bf16 in {model}")
        rows = {}
        for label, code in CHILD.items():
            ckpt, back = root / "m.ckpt", root / "back"
            if "-> ckpt" in label:
                ckpt.unlink(missing_ok=True)
            else:
                shutil.rmtree(back, ignore_errors=True)
            peak, secs = run_child(code, model, ckpt, back)
            rows[label] = {"peak_rss_gb": peak, "seconds": secs, "peak_over_model": peak / size}
            log(f"{label:52s} peak RSS {peak:6.2f} GB ({peak / size:4.2f} x model)  {secs:6.1f} s")
        base = rows["baseline HF -> ckpt (whole model, as MindFormers)"]["peak_rss_gb"]
        ours = rows["tunelab HF -> ckpt"]["peak_rss_gb"]
        log(f"peak memory, baseline / tunelab: {base / ours:.2f}x")
        result = {"model_gb": size, "rows": rows, "baseline_over_tunelab": base / ours,
                  "load": common.load_average()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
