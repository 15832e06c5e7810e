"""Log-likelihood scoring of (context, continuation) pairs, in the style of lm-evaluation-harness.

For every pair the result is the sum of the continuation's token log-probabilities given the context, the
number of continuation tokens, and whether greedy decoding would have produced exactly that continuation
(`is_greedy`). Multiple-choice tasks score each option as a continuation of the same prompt and pick the
argmax, so no answer parsing is involved.

Tokenisation follows tunelab's training and generation: context and continuation are tokenised separately
without special tokens (`add_special_tokens=False`) and concatenated, so the continuation's tokens are the
ones a fine-tuned model was trained to produce after the prompt. (lm-eval tokenises context+continuation
together and splits; with separate tokenisation the boundary is exact by construction.) When a pair is
longer than the model's context, the context is cut from the left, as lm-eval does.

Batching: pairs are sorted by length (longest first, so an out-of-memory error shows in the first batch),
`batch_size` pairs go through one forward pass, right-padded; the logits are computed only at the
continuation positions (transformers' boolean `logits_to_keep`), so memory does not grow with the
vocabulary times the prompt length. Log-softmax runs in float32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoglikResult:
    logprob: float   # sum of the continuation tokens' log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax at its position
    tokens: int      # continuation tokens scored


def model_context_length(model, tokenizer=None) -> int:
    """The model's context: config.max_position_embeddings (or n_positions), capped by a sane
    tokenizer.model_max_length; 2048 when neither says."""
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        n = min(n, tok_max)
    return int(n)


def _forward_selected(model, input_ids, attention_mask, keep):
    """Logits at the `keep` positions (bool, batch x seq), flattened row-major to (keep.sum(), vocab)."""
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                       use_cache=False).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    if logits.ndim == 3:  # the model ignored the mask and returned every position
        logits = logits[keep]
    return logits.float()


def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 32,
                  max_length: int | None = None, progress: bool = False,
                  desc: str = "loglik") -> list[LoglikResult]:
    """Score every (context, continuation) pair; results in input order."""
    import torch
    from tqdm.auto import tqdm

    if not requests:
        return []
    max_length = max_length or model_context_length(model, tokenizer)
    contexts = tokenizer([c for c, _ in requests], add_special_tokens=False)["input_ids"]
    continuations = tokenizer([c for _, c in requests], add_special_tokens=False)["input_ids"]
    rows = []  # (input ids, number of continuation tokens, continuation ids)
    for ctx, cont in zip(contexts, continuations):
        cont = cont[-max_length:]
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        rows.append((full[:-1], len(cont), cont))
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), requests[i][0]))
    results: list[LoglikResult | None] = [None] * len(rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(rows), disable=not progress, desc=desc, unit="pair",
                                      leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start: start + batch_size]]
            scored = [i for i in idx if rows[i][1] > 0]
            for i in idx:
                if rows[i][1] == 0:  # an empty continuation: probability 1
                    results[i] = LoglikResult(0.0, True, 0)
            if scored:
                width = max(len(rows[i][0]) for i in scored)
                input_ids = torch.full((len(scored), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(scored), width), dtype=torch.long)
                keep = torch.zeros((len(scored), width), dtype=torch.bool)
                targets = []
                for r, i in enumerate(scored):
                    ids, n_cont, cont = rows[i]
                    input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[r, :len(ids)] = 1
                    keep[r, len(ids) - n_cont: len(ids)] = True
                    targets += cont
                logits = _forward_selected(model, input_ids.to(device), attention.to(device), keep.to(device))
                logprobs = torch.log_softmax(logits, dim=-1)
                target = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
                token_lp = logprobs.gather(-1, target[:, None]).squeeze(-1).double().cpu()
                greedy = (logprobs.argmax(-1) == target).cpu()
                pos = 0
                for i in scored:
                    n = rows[i][1]
                    results[i] = LoglikResult(float(token_lp[pos: pos + n].sum()),
                                              bool(greedy[pos: pos + n].all()), n)
                    pos += n
            bar.update(len(idx))
    return results  # type: ignore[return-value]
