"""Run MindFormers' own LlamaForCausalLM on a .ckpt that tunelab converted, and save its logits.

Runs under a Python that has `mindformers` (1.9.0 with MindSpore 2.9 on CPU; its pins — numpy 1.26,
transformers 4.x — cannot share tunelab's environment, so tests/test_mindformers_logits.py calls this
script with that interpreter). It imports nothing from tunelab or torch.

    python mindformers_forward.py MODEL_CONFIG.json MODEL.ckpt IDS.npy OUT.npy

MODEL_CONFIG.json is `tunelab.convert.mindformers.mindformers_model_config` of the HF config. Two
settings make MindFormers' Llama run on the CPU backend (found by trying: both defaults fail there):
`use_rope_slice=True` (the default rotary path is a broadcast BatchMatMul the CPU kernel rejects) and
`fused_rms_norm=False` (the fused RmsNorm op has no CPU kernel). The checkpoint must load with nothing
missing on either side, or the script fails.
"""

import json
import sys

import numpy as np


def main(config_path: str, ckpt: str, ids_path: str, out: str) -> None:
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from mindformers import LlamaConfig, LlamaForCausalLM

    ids = np.load(ids_path).astype(np.int32)
    mc = json.load(open(config_path, encoding="utf-8"))
    mc.pop("type", None)
    mc = {k: v for k, v in mc.items() if v is not None}
    mc.update(batch_size=ids.shape[0], seq_length=ids.shape[1], compute_dtype="float32",
              param_init_type="float32", layernorm_compute_type="float32", softmax_compute_type="float32",
              rotary_dtype="float32", use_flash_attention=False, use_past=False, use_rope_slice=True,
              fused_rms_norm=False)
    net = LlamaForCausalLM(LlamaConfig(**mc))
    net.set_train(False)
    not_in_ckpt, not_in_net = ms.load_param_into_net(net, ms.load_checkpoint(ckpt), strict_load=True)
    if not_in_ckpt or not_in_net:
        sys.exit(f"parameters the model lacks in the checkpoint: {not_in_ckpt}; left over: {not_in_net}")
    out_t = net(ms.Tensor(ids, ms.int32))
    logits = (out_t[0] if isinstance(out_t, tuple) else out_t).asnumpy()
    np.save(out, logits.reshape(ids.shape[0], ids.shape[1], -1).astype(np.float32))
    print(f"mindspore {ms.__version__}: logits {logits.shape}")


if __name__ == "__main__":
    main(*sys.argv[1:])
