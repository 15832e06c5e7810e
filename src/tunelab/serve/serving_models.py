"""GET /health, /v1/models, /v1/models/{id} and /stats: what the server holds and how its engine is doing.

None of these touches the model or queues work, so they answer at once however busy the engine is (/health
is how a client or a supervisor tells a live server from a stuck one).
"""

from __future__ import annotations

from tunelab.serve.protocol import APIError
from tunelab.serve.serving import OpenAIServing


class OpenAIServingModels(OpenAIServing):
    """`served`: the default model; `models`: every model the server answers for (the default first), when it
    answers for several (a run's base and checkpoints through vLLM)."""

    def __init__(self, served, limits, models=None):
        super().__init__(served, limits)
        self.models = list(models) if models else [served]

    def health(self) -> dict:
        return {"status": "ok", "model": self.served.name}

    @staticmethod
    def model_card(served) -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tunelab",
                "max_model_len": served.context_len}

    def list_models(self) -> dict:
        return {"object": "list", "data": [self.model_card(m) for m in self.models]}

    def show_model(self, model_id: str) -> dict:
        for m in self.models:
            if m.name == model_id:
                return self.model_card(m)
        if len(self.models) > 1:
            raise APIError(404, f"The model '{model_id}' does not exist; this server has "
                                f"{', '.join(repr(m.name) for m in self.models)}.", param="model",
                           code="model_not_found")
        self.check_model(model_id)
        return self.model_card(self.served)

    def stats(self) -> dict:
        s = dict(self.engine.stats)
        s["mean_batch"] = s["batch_rows_sum"] / s["steps"] if s["steps"] else 0.0
        s["max_batch_limit"] = self.engine.max_batch
        return s
