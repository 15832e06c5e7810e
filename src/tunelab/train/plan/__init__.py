"""Will this run fit the card? The per-device memory of ONE training step, traced through tunelab's own code.

No weights are loaded and no GPU is needed. The model is built from its config alone (`config`: a local
config.json, the Hugging Face cache, or the built-in config of a hub id the shipped recipes name), wrapped as the
training loop wraps it (`make_lora_config` + peft's `get_peft_model`, activation checkpointing, `LabelledLoss`),
and one step (`spec`) runs — forward, backward, gradient clipping, the optimizer's update — on *fake* tensors
(`trace`: `torch._subclasses.fake_tensor.FakeTensorMode`, shapes and dtypes, no storage) under torch's
`MemTracker`, which counts every tensor the step creates, when it is freed, and what it is (`categories`: weight,
gradient, optimizer state, activation, backward temporary). The optimizer's states exist before the traced step
(what every step after the first sees), and with `train.grad_accum > 1` so do the gradients (a later micro-batch
runs with them held). `estimate` puts these together into the plan of a recipe on a card, `advice` re-estimates
the changes that would make it fit, `report` prints it.

What the trace cannot see is added by a stated rule:
- Fake tensors are CPU tensors: a CPU build of torch aborts in the backward pass of fake CUDA tensors. Bytes do
  not depend on the device; the kernels that differ are made to match CUDA's: dropout runs as `native_dropout`
  (a 1-byte mask, as on a GPU, not the CPU path's full-width mask), and attention is the model's SDPA, which on
  fake CPU tensors takes the flash kernel (output + log-sum-exp saved, as CUDA's flash/memory-efficient kernels).
  Autocast's lists of fp32 ops differ a little between CPU and CUDA; Llama-style norms cast explicitly anyway.
- The CUDA context (driver, cuBLAS/cuDNN handles and workspaces: `CUDA_CONTEXT`) is outside torch's allocator.
- The caching allocator reserves more than it hands out; the excess comes from memory that comes and goes within a
  step: `ALLOCATOR_RESERVE` of the activations, loss/logits and temporaries.
- Under DDP each device holds the whole replica plus the reducer's gradient buckets (as large as the gradients:
  the loop does not set `gradient_as_bucket_view`). FSDP (`train.strategy: fsdp`, if the recipe has it) is a
  rule here, not traced: the persistent state (weights, gradients, optimizer states) split N ways plus two
  gathered decoder layers.
- Quantised bases (`model.quantization: nf4|int8`) do not trace (bitsandbytes' `Params4bit` cannot wrap a fake
  tensor): the step is traced with the quantised linear layers in 16 bits — everything else as tunelab's QLoRA
  has it (norms, embeddings and head upcast to fp32 by `prepare_for_kbit`) — and their bytes are replaced by
  `NF4_BYTES` / `INT8_BYTES` per weight, plus one dequantised layer as a temporary. 8-bit optimizers trace.

The micro-batch is `train.batch_size` full rows of `data.max_seq_len` tokens (packed: every row full; unpacked:
padded to the longest, at worst the maximum), every position labelled: an upper bound (answer-only loss labels
fewer, and a corpus or replayed block labels all; with a frozen head the loss is chunked, so the difference is
small; with a trained head the logits' gradient scales with the labelled positions).
"""
