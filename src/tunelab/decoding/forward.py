"""The forward pass under every decoding path: float32 logits only at the positions that need them, rotary
embeddings computed without copies where that gives transformers' result exactly (`rotary.py`), and host
tensors sent to the device without the host waiting.
"""

from __future__ import annotations

import functools
import inspect


def takes_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do; a peft wrapper passes it on
    to its base). Read from the signature once a class — never by catching a TypeError from the forward, which
    would also swallow a real error inside the model and run the forward twice."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _signature_takes(type(base))


@functools.cache
def _signature_takes(cls) -> bool:
    params = inspect.signature(cls.forward).parameters
    return "logits_to_keep" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def logits_at(model, input_ids, attention_mask, keep, **kwargs):
    """Float32 logits at the `keep` positions (bool, batch × seq), flattened row-major to (keep.sum(), vocab).

    transformers computes the vocabulary projection only there (`logits_to_keep`); a model class without
    that argument, or one that ignores it, is run on every position and the kept ones are selected."""
    if takes_logits_to_keep(model):
        kwargs = {**kwargs, "logits_to_keep": keep}
    logits = forward(model, input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    if logits.ndim == 3:
        logits = logits[keep] if logits.shape[1] == keep.shape[1] else logits.reshape(-1, logits.shape[-1])
    return logits.float()


def forward(model, **kwargs):
    """`model(**kwargs)`, with rotary embeddings computed without copies where that is exact (`rotary.py`).

    A prompt-tuned model (`model.virtual_tokens`) runs its base: over a KV cache, whose front already holds the
    virtual tokens (`DecodeBatch.prefill` put them there), or, without one, with them prepended here and the
    logits cut back to the input's own positions."""
    from tunelab.model.kernels.rotary import fast_rotary
    from tunelab.model.virtual_tokens import peft_inner_model, prefixed_logits, prompt_tuned, virtual_tokens
    with fast_rotary(model):
        if not prompt_tuned(model):
            return model(**kwargs)
        if kwargs.get("past_key_values") is not None:  # a decode step: the embeddings are not computed again
            return peft_inner_model(model)(**kwargs)
        return prefixed_logits(model, virtual_tokens(model), **kwargs)


def last_logits(model, **kwargs):
    """Float32 logits of each row's last position, (batch, vocab)."""
    if takes_logits_to_keep(model):
        kwargs = {**kwargs, "logits_to_keep": 1}
    logits = forward(model, **kwargs).logits
    return logits[:, -1, :].float()


def to_device(tensor, device):
    """A host tensor on `device` without the host waiting for the device: on CUDA through pinned memory and an
    asynchronous copy (a copy from pageable memory waits for the stream first); elsewhere `tensor.to(device)`."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
