"""Kernels a model runs under in training and in decoding alike: the CPU attention for packed rows
(`attention`), rotary embeddings without copies (`rotary`), and the one log-probability of target tokens every
method and scorer uses (`logprobs`, with distillation's KL beside it in `kl`)."""

# the model types written as Llama is, checked against transformers 5.x's modeling files: the head is
# `lm_head(last_hidden_state)` and the loss plain token cross-entropy (`logprobs.head_parts`), attention is plain
# scaled-dot-product over transformers' mask (`attention.use_cpu_attention`), positions are rotary, so a constant
# shift of a packed row's positions is exact (`train.methods.grpo_groups`). Others (soft-capped logits, attention
# sinks, absolute positions, custom kernels) run their own forward. The one list: a type added here must hold all
# three.
STANDARD_DECODERS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"})
