"""Proof of equivalence with MindFormers itself: a tiny Hugging Face Llama, converted by `tunelab convert`'s
code to a MindFormers .ckpt, loaded into MindFormers' own LlamaForCausalLM (strict: nothing missing, nothing
left over) on MindSpore's CPU backend, gives the logits transformers gives.

MindFormers 1.9.0 (the version the package index resolves here) pins MindSpore 2.9, numpy 1.26 and
transformers 4.x, so it lives in an interpreter of its own: `.venv-mindformers/` at the repository root
(`.ci/run` builds it: `python3 -m venv .venv-mindformers && .venv-mindformers/bin/pip install
mindformers==1.9.0`) or any Python named by TUNELAB_MINDFORMERS_PYTHON. tests/mindformers_forward.py runs
there; without such an interpreter this file skips, saying so.

Not covered: InternLM (MindFormers keeps it under research/, not an importable model class), bf16 (MindSpore's
CPU backend has no bf16 Gather: a bf16 checkpoint is compared after casting to fp32, which the round-trip
tests already prove lossless).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "mindformers_forward.py"


def _mindformers_python() -> str | None:
    given = os.environ.get("TUNELAB_MINDFORMERS_PYTHON")
    candidates = [given] if given else [str(ROOT / ".venv-mindformers" / "bin" / "python")]
    for python in candidates:
        if python and Path(python).is_file():
            # in a temporary directory: importing mindformers creates ./output/log
            probe = subprocess.run([python, "-c", "import mindformers"], capture_output=True, timeout=300,
                                   cwd=tempfile.gettempdir())
            if probe.returncode == 0:
                return python
    return None


MF_PYTHON = _mindformers_python()
pytestmark = pytest.mark.skipif(MF_PYTHON is None, reason=(
    "no Python with mindformers: build .venv-mindformers (see this file's docstring; .ci/run does) or set "
    "TUNELAB_MINDFORMERS_PYTHON"))


def _tiny_llama(out: Path, kv_heads: int, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 and larger weights, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.05 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.parametrize("kv_heads, fused", [(4, False), (2, False), (2, True)], ids=["mha", "gqa", "gqa-qkv-concat"])
def test_mindformers_llama_on_our_ckpt_gives_transformers_logits(tmp_path, kv_heads, fused):
    """fused: `--qkv-concat`, the w_qkv / w_gate_hidden layout of a MindFormers YAML with qkv_concat: True."""
    from transformers import LlamaForCausalLM

    from tunelab.convert.mindformers import hf_to_mindspore, mindformers_model_config
    hf_dir = _tiny_llama(tmp_path / "hf", kv_heads, seed=kv_heads)
    hf_to_mindspore(hf_dir, tmp_path / "model.ckpt", qkv_concat=fused)
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    model_config = {**mindformers_model_config(cfg), **({"qkv_concat": True} if fused else {})}
    (tmp_path / "model_config.json").write_text(json.dumps(model_config), encoding="utf-8")
    # token 0 is the pad id, which MindFormers' mask hides (transformers, given no mask, does not)
    ids = np.random.RandomState(kv_heads).randint(3, 320, size=(2, 24)).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    run = subprocess.run([MF_PYTHON, str(SCRIPT), str(tmp_path / "model_config.json"), str(tmp_path / "model.ckpt"),
                          str(tmp_path / "ids.npy"), str(tmp_path / "logits.npy")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-1000:]
    theirs = np.load(tmp_path / "logits.npy")
    model = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    assert theirs.shape == ours.shape
    diff = float(np.abs(theirs - ours).max())
    assert diff < 1e-4, f"max |logit difference| {diff:.3g}"
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    print(f"{sys.platform} kv_heads={kv_heads} fused={fused}: max |MindFormers - transformers| = {diff:.2e}")
