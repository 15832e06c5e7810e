"""A CPU training attention for packed rows, registered with transformers as `tunelab_cpu`.

Packed rows need an explicit block-diagonal mask, and with a mask PyTorch's CPU SDPA kernel is slow,
in bf16 especially: measured here, 16 rows × 4 heads × 256 tokens, forward + backward, 54 ms per layer.
Two batched matmuls around a bf16 softmax (which accumulates in fp32 inside the kernel) do the same
arithmetic in 26 ms with the same rounding as transformers' eager path (the softmax output is bf16 there
too). The mask is the one transformers builds for SDPA (block-diagonal from restarting position ids), so
the model code and its mask logic stay transformers'. Only architectures with plain scaled-dot-product attention
over transformers' mask are switched (`STANDARD_DECODERS`; others, with soft-capped logits, attention sinks or
custom kernels, keep their own implementation); on GPU or with attention dropout a call goes to transformers' SDPA
function.

Training on CPU goes one step further (`data.packing.collate_flat`, `takes_flat_rows`): the packed rows come
as ONE sequence with no padding, so the per-token layers (projections, MLP, norms, the vocabulary head) run on
real tokens only, and attention runs span by span — each sample, or each row with a shared prefix — over the
span's own length with its own mask. Measured here (16 rows of 200-256 tokens, 4 heads, fp32, forward +
backward): 36 ms per layer row by row against 46 ms for the padded batch; the linear layers save the grid's
padding (~9 % on corpus blocks).
"""

from __future__ import annotations

import contextlib

import torch

from tunelab.model.kernels import STANDARD_DECODERS

NAME = "tunelab_cpu"
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")
# attention implementations that take a 4-D mask of rows with a shared prefix (`data.packing.collate_rows`; eager
# as `additive_for_eager` gives it); flash attention's packed path takes position ids only
MASKED_ATTENTION = ("sdpa", "eager", NAME)


def additive_for_eager(config, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean 4-D mask as the model's attention takes it. transformers passes a 4-D mask through as it is
    (a shared prefix's, `data.packing.collate_rows`), and its eager attention ADDS the mask to the scores: a
    boolean one would add 1 where a token may look and 0 where it may not, masking nothing. For eager it becomes
    0 / the dtype's lowest (as transformers' own `eager_mask`); SDPA and `tunelab_cpu` take booleans."""
    if (mask is None or mask.dtype != torch.bool or mask.ndim != 4
            or getattr(config, "_attn_implementation", None) != "eager"):
        return mask
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
        ~mask, torch.finfo(torch.float32).min)


@contextlib.contextmanager
def decoding_attention(model):
    """The model under SDPA for the duration, when it trains under `tunelab_cpu`: that kernel is written for
    training rows, and a decode step (one query a row over a KV cache) runs faster under SDPA. Measured on the
    quickstart's model, 128 rows sampled together with LoRA (GRPO's rollout), 1 thread: 0.61 s → 0.41 s."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "_attn_implementation", None) != NAME:
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(NAME)


def cpu_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  row_lengths: tuple[int, ...] | None = None, span_masks: tuple[int, ...] | None = None,
                  **kwargs):
    """Same contract as transformers' `sdpa_attention_forward`: returns ((batch, q_len, heads, dim), None).

    With `row_lengths` (`data.packing.collate_flat`) the batch is one sequence of spans laid end to end and
    span i attends under `attention_mask[span_masks[i]]` (masks, 1, width, width): attention runs span by span."""
    unsupported = (query.device.type != "cpu" or dropout > 0.0
                   or any(kwargs.get(k) is not None for k in _UNSUPPORTED_KWARGS)
                   or (attention_mask is not None and attention_mask.dtype != torch.bool))
    if unsupported and row_lengths is not None:
        raise ValueError("rows laid end to end (row_lengths) need tunelab_cpu attention on CPU without dropout, "
                         "soft-capping or sinks")
    if unsupported:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if row_lengths is None:
        return _attend(query, key, value, attention_mask, None, scale), None
    # split, not slice: the backward of a split is one concatenation, of a slice a zero tensor per row
    rows = zip(query.split(row_lengths, dim=2), key.split(row_lengths, dim=2), value.split(row_lengths, dim=2))
    return torch.cat([_attend(q, k, v, attention_mask, m, scale) for m, (q, k, v) in zip(span_masks, rows)],
                     dim=1), None


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
            which: int | None, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v as (batch, q_len, heads, dim); `which` picks one mask (its top-left corner)
    from a (masks, 1, width, width) mask."""
    scores = torch.matmul(query, key.transpose(2, 3))  # under autocast: not query's dtype
    q_len, k_len = scores.shape[-2:]
    if which is None:
        bias = _additive_mask(mask, scores.dtype, q_len, k_len, scores.device)
    else:
        width = mask.shape[-1]
        bias = _additive_mask(mask, scores.dtype, width, width, scores.device)[which, :, :q_len, :k_len]
    # in place: matmul's backward needs its inputs, not its output
    scores.mul_(scale).add_(bias)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous()


_last_mask: tuple | None = None  # (mask, dtype, q_len, k_len, additive mask) of the latest forward pass


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype, q_len: int, k_len: int,
                   device: torch.device) -> torch.Tensor:
    """0 where attention is allowed, the dtype's minimum elsewhere (never -inf: a fully masked row stays finite).

    Every layer of a forward pass gets the same mask object, so the conversion is done once per pass.
    """
    global _last_mask
    if _last_mask is not None and _last_mask[0] is mask and _last_mask[1:4] == (dtype, q_len, k_len):
        return _last_mask[4]
    bool_mask = mask
    if bool_mask is None:  # transformers skipped the mask because it is plainly causal
        bool_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    bias = torch.zeros(bool_mask.shape, dtype=dtype, device=device)
    bias.masked_fill_(~bool_mask, torch.finfo(dtype).min)
    _last_mask = (mask, dtype, q_len, k_len, bias)
    return bias


def register() -> str:
    """Make `tunelab_cpu` a valid `attn_implementation` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, cpu_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_cpu_attention(model) -> bool:
    """Switch a CPU model to `tunelab_cpu` attention for training; False (unchanged) when it does not apply, or
    the `cpu_attention` patch is not active (`model.patches`)."""
    from tunelab.model.patches import active
    if not active("cpu_attention"):
        return False
    config = getattr(model, "config", None)
    if (config is None or getattr(config, "model_type", None) not in STANDARD_DECODERS
            or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", NAME)):
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):  # an architecture that only accepts its own kernels
        return False
    return True


def takes_flat_rows(model, max_len: int) -> bool:
    """Whether training batches may be rows laid end to end (`data.packing.collate_flat`): the model runs
    `tunelab_cpu` attention on CPU, without attention dropout, and no sliding window is shorter than a row
    (the flat path's masks are the rows' own, with no window applied)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != NAME:
        return False
    if next(model.parameters()).device.type != "cpu" or float(getattr(config, "attention_dropout", 0.0) or 0.0):
        return False
    window = getattr(config, "sliding_window", None)
    return not window or window >= max_len
