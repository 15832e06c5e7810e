"""Stop a run whose loss says it has stopped learning or is running away, beyond NaN and infinity.

Two signs, each held for several steps so that one odd batch is never mistaken for them:
- *frozen*: a zero gradient and a loss that does not move. A far too high learning rate saturates the network
  (LoRA on the tiny base at `train.lr=1e5` outputs a uniform distribution: the loss sits at ln(vocabulary),
  7.4524, with a gradient norm of exactly 0.0, step after step), and without this check the run went on to the
  end and wrote a report as if it had trained.
- *spike*: the loss far above its running level (an exponential average over about 50 steps, which the spike
  itself does not move): `spike_factor` times the level and `spike_rise` nats above it, both. The rise keeps a
  run that has learnt its data down to 0.01 from stopping when a batch costs 0.05.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ZERO_GRAD = 1e-12  # a gradient norm this small moves no weight at any learning rate a recipe would use
FLAT = 1e-6        # relative change of the loss below which it "does not move"
SPAN = 50          # steps the running level averages over (exponential)


@dataclass
class DivergenceGuard:
    enabled: bool = True
    flat_steps: int = 10
    spike_factor: float = 3.0
    spike_rise: float = 1.0
    spike_steps: int = 10
    # state, saved in checkpoints so that a resumed run stops where an unbroken one would
    level: float | None = None
    seen: int = 0
    frozen: int = 0
    spiking: int = 0
    last_loss: float | None = None

    def update(self, loss: float, grad_norm: float) -> str | None:
        """Record a step; the reason to stop, or None. `loss` and `grad_norm` are finite (NaN is checked first)."""
        if not self.enabled:
            return None
        flat = self.last_loss is not None and abs(loss - self.last_loss) <= FLAT * max(1.0, abs(loss))
        self.frozen = self.frozen + 1 if grad_norm <= ZERO_GRAD and (flat or self.last_loss is None) else 0
        self.last_loss = loss
        spike = (self.level is not None and self.seen >= self.spike_steps
                 and loss > self.spike_factor * self.level and loss > self.level + self.spike_rise)
        self.spiking = self.spiking + 1 if spike else 0
        if not spike:
            alpha = 2 / (SPAN + 1)
            self.level = loss if self.level is None else (1 - alpha) * self.level + alpha * loss
            self.seen += 1
        if self.frozen >= self.flat_steps:
            return (f"the loss has stayed at {loss:.4f} with a zero gradient for {self.frozen} steps: the model no "
                    "longer learns (its weights have likely saturated)")
        if self.spiking >= self.spike_steps:
            return (f"the loss has stayed above {self.spike_factor:g}x its running level ({self.level:.4f}) for "
                    f"{self.spiking} steps ({loss:.4f} now): the run is diverging")
        return None

    @property
    def since(self) -> int:
        """How many steps back the sign began (the last good checkpoint is older)."""
        return max(self.frozen, self.spiking)

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in ("level", "seen", "frozen", "spiking", "last_loss")}

    def load(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
