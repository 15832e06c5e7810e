"""Distillation (`train.distill`): beside the answers' cross-entropy, a KL term between a teacher's next-token
distribution and the model's at the distilled tokens.

Why: fine-tuning on a narrow task pulls the model away from what its base said elsewhere. Replaying the base's own
answers (examples marked `Example.meta["replay"]`) with cross-entropy teaches the one token the base wrote at each
position; the KL term teaches the base's whole distribution there, a denser hold on what it knew (`tokens: replay`).
With `teacher: PATH`, a model that shares the tokenizer, and `tokens: all` it is logit knowledge distillation (Hinton
et al. 2015), as the course project distils a small model from a bigger one.

The loss of a step, over its N trained (labelled) tokens, D ⊆ them distilled, s and t the model's and the
teacher's logits, T the temperature:

    loss = (Σ_{i ≤ N} CE_i + weight · T² · Σ_{i ∈ D} KL(softmax(t_i / T) ‖ softmax(s_i / T))) / N

(`kind: reverse_kl`: KL(softmax(s_i / T) ‖ softmax(t_i / T))). With `tokens: all` (D: every trained token) it is the
mean cross-entropy plus weight · T² · the mean KL. A distilled token's KL divides by the same count as its
cross-entropy, so it weighs the same whichever micro-batch, process or packed row it lands in (its mark travels
beside its label: `data.packing.Row.distill`), and a step that holds few replay tokens does not weigh them up.

The teacher is by default the base: the model's reference, as DPO's and GRPO's (`model.reference.reference_policy`:
its LoRA adapter switched off, or a continued adapter as it started), so no second copy is held; else the model
at `teacher`, loaded frozen on the model's device in its dtype. Its forward runs without gradients, in eval mode,
and only on micro-batches that hold distilled tokens: one extra forward of the teacher each. Only the distilled
positions' hidden states are kept and projected onto the vocabulary, a chunk at a time with the log-softmax in
fp32 (`model.kernels.kl.ProjectedKL`, through the log-probability kernel every method shares). Each metrics line gets
`distill_kl`, the mean KL per distilled token since the last line.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.data.packing import IGNORE, Encoded
from tunelab.model.kernels.rotary import fast_rotary
from tunelab.errors import TunelabError
from tunelab.model.kernels.kl import ProjectedKL, teacher_logits, token_kl
from tunelab.model.kernels.logprobs import head_parts, plain_linear
from tunelab.model.eval_mode import eval_mode
from tunelab.model.reference import reference_policy
from tunelab.train.methods.sft_loss import LabelledLoss, model_inputs


def mark_replay(encoded: list[Encoded], examples: list) -> None:
    """`tokens: replay`: mark the encodings of the examples that replay the base's own answers (`Example.meta
    ["replay"]`) as distilled; a run without any would distil nothing, which is an error."""
    for enc, example in zip(encoded, examples):
        enc.distill = bool(example.meta.get("replay"))
    if not any(enc.distill for enc in encoded):
        raise TunelabError("train.distill.tokens: replay distils the base's own answers replayed among the examples, "
                           "and no training example is one (data.replay: self adds them): add them, or tokens: all",
                           field="train.distill.tokens")


def load_teacher(path: str, model: nn.Module, tokenizer, dtype: str) -> nn.Module:
    """The model at `path` (a directory, hub id or LoRA adapter, merged), frozen in eval mode on `model`'s device
    in `dtype`; its logits mean the same tokens only under the same tokenizer, which is checked."""
    from tunelab.model.kernels.attention import use_cpu_attention
    from tunelab.model.loading import check_model_path, load_for_inference
    check_model_path(path, field="train.distill.teacher")
    device = next(model.parameters()).device
    teacher, its_tokenizer = load_for_inference(path, dtype, merge=True, device=device)
    if its_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise TunelabError(f"the teacher {path} has another tokenizer than the model's (its logits would mean other "
                           "tokens): a teacher shares the tokenizer (a from-scratch model takes the teacher's with "
                           "model.tokenizer)", field="train.distill.teacher")
    rows, want = teacher.get_output_embeddings().weight.shape[0], model.get_output_embeddings().weight.shape[0]
    if rows != want:
        raise TunelabError(f"the teacher {path} has a vocabulary of {rows:,} output rows, the model {want:,}: a "
                           "teacher's logits must be over the model's vocabulary", field="train.distill.teacher")
    teacher.requires_grad_(False)
    if device.type == "cpu":  # the attention the training rows are laid out for (`trainable_model` does the same)
        use_cpu_attention(teacher)
    return teacher


class DistilledLoss(LabelledLoss):
    """`LabelledLoss` plus the KL term (the module docstring); `forward` also takes the batch's `distill_mask`.
    Validation (eval mode) measures the cross-entropy alone, as `val_loss` is the perplexity's."""

    def __init__(self, model: nn.Module, spec, teacher: nn.Module | None = None):
        super().__init__(model)
        self.weight, self.temperature = spec.weight, spec.temperature
        self.reverse, self.every_token = spec.kind == "reverse_kl", spec.tokens == "all"
        # a tuple, not an attribute: the teacher is not trained, saved, sharded or wrapped by DDP with the model
        self._teacher = (teacher,)
        self._teacher_parts = head_parts(teacher) if teacher is not None else (
            self._parts if self.labelled_only else None)
        self.set_window(None)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int,
                distill_mask: torch.Tensor | None = None, label_index: torch.Tensor | None = None,
                **inputs) -> torch.Tensor:
        if not self.training or (distill_mask is None and not self.every_token):
            return super().forward(input_ids, labels, num_items_in_batch, label_index, **inputs)
        inputs = model_inputs(self.model, inputs)
        targets = labels[:, 1:]
        chosen = targets != IGNORE
        if distill_mask is not None:
            chosen &= distill_mask[:, 1:]
        teacher = self._teacher_outputs(input_ids, inputs, chosen)
        scale = self.weight * self.temperature ** 2 / num_items_in_batch
        if self.labelled_only:
            hidden = self.hidden_states(input_ids, inputs)[:, :-1]
            loss = self.cross_entropy(hidden, targets, num_items_in_batch)
            head = self._parts[1]
            if plain_linear(head):
                term, kl = ProjectedKL.apply(hidden[chosen], head.weight, *teacher, self.temperature, scale,
                                             self.reverse)
            else:
                kl = token_kl(head(hidden[chosen]), teacher_logits(*teacher), self.temperature, self.reverse).sum()
                term = kl * scale
        else:
            with fast_rotary(self.model):
                out = self.model(input_ids=input_ids, labels=labels, use_cache=False,
                                 num_items_in_batch=num_items_in_batch, **inputs)
            loss = out.loss
            kl = token_kl(out.logits[:, :-1][chosen], teacher_logits(*teacher), self.temperature, self.reverse).sum()
            term = kl * scale
        self._kl = self._kl + kl.detach()
        self._positions += teacher[0].shape[0]
        return loss + term

    def _teacher_outputs(self, input_ids: torch.Tensor, inputs: dict,
                         chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher at the distilled positions, without gradients: (their last hidden states, the head's weight)
        where the head is a plain projection, else (their logits, None)."""
        teacher = self._teacher[0]
        if teacher is not None and "row_lengths" in inputs:
            from tunelab.model.kernels.attention import takes_flat_rows
            if not takes_flat_rows(teacher, max(inputs["row_lengths"])):
                raise TunelabError("the teacher's attention cannot take the training rows laid end to end, as the "
                                   "model's does on this CPU: a teacher of the model's architecture",
                                   field="train.distill.teacher")
        model = teacher if teacher is not None else self.model
        with torch.no_grad(), self._as_teacher(), fast_rotary(model):
            if self._teacher_parts is None:
                return model(input_ids=input_ids, use_cache=False, **inputs).logits[:, :-1][chosen], None
            backbone, head = self._teacher_parts
            hidden = backbone(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state[:, :-1][chosen]
            return (hidden, head.weight) if plain_linear(head) else (head(hidden), None)

    def _as_teacher(self):
        """A loaded teacher in eval mode; else the model's reference (`model.reference.reference_policy`: the model
        with its adapter off, or the continued adapter as it started), in eval mode, without gradients."""
        if self._teacher[0] is not None:
            return eval_mode(self._teacher[0])
        return reference_policy(self.model)

    def window(self) -> dict:
        """The KL summed since the last metrics line and its tokens, for a checkpoint (`trainer_state.capture`)."""
        return {"kl": float(self._kl), "positions": self._positions}

    def set_window(self, window: dict | None) -> None:
        self._kl, self._positions = (window["kl"], window["positions"]) if window else (0.0, 0)

    def take_metrics(self) -> dict[str, float]:
        """`distill_kl`: the mean KL per distilled token since the last call (this process's; read here alone)."""
        out = {"distill_kl": float(self._kl) / self._positions} if self._positions else {}
        self.set_window(None)
        return out
