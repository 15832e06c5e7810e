"""Kernels a model runs under in training and in decoding alike: the CPU attention for packed rows
(`attention`), rotary embeddings without copies (`rotary`), and the one log-probability of target tokens every
method and scorer uses (`logprobs`, with distillation's KL beside it in `kl`)."""
