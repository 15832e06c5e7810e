"""The KL divergence between a teacher's next-token distributions and the model's, a chunk of positions at a time:
distillation's term (`train/methods/distill_loss.py`). The student's log-probabilities come from the kernel every
method shares (`logprobs.log_softmax_chunks`); the teacher's chunk is made beside it from its hidden states and
head, or from its logits. Checked against `F.kl_div` per example in tests/test_distill.py."""

from __future__ import annotations

import torch

from tunelab.model.kernels.logprobs import FusedGrads, log_softmax_chunks, matmul_dtype


def teacher_logits(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The teacher's logits from what `_teacher_outputs` kept: its hidden states and head weight, or its logits."""
    return x if weight is None else x @ weight.to(x.dtype).t()


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             reverse: bool = False) -> torch.Tensor:
    """Each position's KL(teacher ‖ student) (`reverse`: KL(student ‖ teacher)) at `temperature`, in fp32."""
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (s.exp() * (s - t)).sum(-1) if reverse else (t.exp() * (t - s)).sum(-1)


class ProjectedKL(torch.autograd.Function):
    """(`scale` × Σ_rows KL, and the sum itself, not differentiable) with the student's logits `hidden @ weight.T`
    and the teacher's `teacher_hidden @ teacher_weight.T` (`teacher_hidden` are its logits when `teacher_weight` is
    None), both made ~8 MB of fp32 logits at a time as `logprobs.log_softmax_chunks` makes them, with the
    gradients for `hidden` and `weight` taken in the forward pass: ∂KL/∂s = (softmax(s/T) − softmax(t/T)) / T, or
    reversed p_s ⊙ (log p_s − log p_t − KL) / T. Under autocast the matmuls run in its dtype and each chunk's
    gradient is rounded to it before them; in fp32 the weight's gradient is summed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor,
                teacher_weight: torch.Tensor | None, temperature: float, scale: float, reverse: bool):
        device = hidden.device.type
        dtype = matmul_dtype(hidden, weight)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), weight.to(dtype)
        t_w = None if teacher_weight is None else w if teacher_weight is weight else teacher_weight.to(dtype)
        t_h = teacher_hidden if t_w is None else teacher_hidden.to(dtype)
        grads = FusedGrads(h, w, dtype, want_hidden, want_weight)
        exact, grad_logits, grad_w, grad_h = grads.exact, grads.grad_logits, grads.grad_w, grads.grad_h
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(device, enabled=False):
            for lo, hi, s in log_softmax_chunks(h, w, temperature):
                t = t_h[lo:hi] if t_w is None else t_h[lo:hi] @ t_w.t()
                t = torch.log_softmax(t.float() / temperature, dim=-1)
                if reverse:
                    r = s - t
                    kl = (s.exp_() * r).sum(-1)
                    g = s.mul_(r.sub_(kl[:, None]))
                else:
                    p_t = t.exp()
                    kl = (p_t * (t - s)).sum(-1)
                    g = s.exp_().sub_(p_t)
                total += kl.sum()
                if not (want_hidden or want_weight):
                    continue
                g.mul_(scale / temperature)
                if not exact:  # rounded to the matmul dtype, as autograd rounds a gradient
                    g = torch.mul(g, 1.0, out=grad_logits[lo:hi]) if want_weight else g.to(dtype)
                if want_hidden:
                    torch.mm(g, w, out=grad_h[lo:hi])
                if grad_w is not None:
                    grad_w.addmm_(g.t(), h[lo:hi])
            ctx.save_for_backward(*grads.saved(h, hidden, weight))
        ctx.mark_non_differentiable(total)
        return total * scale, total

    @staticmethod
    def backward(ctx, grad_term: torch.Tensor, grad_total: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_term if grad_h is not None else None,
                grad_w * grad_term if grad_w is not None else None, None, None, None, None, None)
