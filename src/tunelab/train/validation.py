"""Validation loss on a corpus's val split during training, and early stopping on it.

The validation loss is the training loss's exact definition on held-out blocks: the mean cross-entropy of
every real token (EOT included, each block's first token unscored, padding never), so exp(val_loss) is the
val split's perplexity as the `ppl` task measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def validation_sums(loss_model, rows, *, batch_size: int, pad_id: int, packed: bool, device, autocast_dtype,
                    rank: int = 0, world: int = 1, flat: bool = False) -> tuple[float, int]:
    """(summed token loss, scored tokens) over this rank's share of `rows` (a CorpusRows); no gradients, eval
    mode (nothing random happens, so the training run's random state is untouched). `flat`: packed rows laid
    end to end, as training lays them (`collate_flat`)."""
    import torch

    from tunelab.data.packing import batch_to, collate
    from tunelab.model.eval_mode import eval_mode
    total, count = 0.0, 0
    n = rows.rows_per_epoch
    with eval_mode(loss_model), torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                                enabled=autocast_dtype is not None):
        for start in range(rank * batch_size, n, batch_size * world):
            batch = collate(rows.rows(start, min(batch_size, n - start)), pad_id, packed, flat)
            scored = int((batch["labels"][:, 1:] != -100).sum())
            total += loss_model(**batch_to(batch, device), num_items_in_batch=1).item()  # a sum over the batch's scored tokens
            count += scored
    return total, count


def val_record(step: int, loss_sum: float, tokens: float) -> dict:
    """The metrics.jsonl line of one validation."""
    loss = loss_sum / max(1, tokens)
    return {"step": step, "val_loss": loss, "val_ppl": math.exp(min(loss, 700)), "val_tokens": int(tokens)}


@dataclass
class EarlyStopping:
    """Stop after `patience` validations in a row that do not beat the best by more than `min_delta`."""

    patience: int | None
    min_delta: float = 0.0
    best: float = math.inf
    bad: int = 0

    def update(self, val_loss: float) -> bool:
        """Record a validation; True when training should stop now."""
        if val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "bad": self.bad}
