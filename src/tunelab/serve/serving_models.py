"""GET /health, /v1/models, /v1/models/{id} and /stats: what the server holds and how its engine is doing.

None of these touches the model or queues work, so they answer at once however busy the engine is (/health
is how a client or a supervisor tells a live server from a stuck one).
"""

from __future__ import annotations

from tunelab.serve.serving import OpenAIServing


class OpenAIServingModels(OpenAIServing):

    def health(self) -> dict:
        return {"status": "ok", "model": self.served.name}

    def model_card(self) -> dict:
        served = self.served
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "tunelab",
                "max_model_len": served.context_len}

    def list_models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def show_model(self, model_id: str) -> dict:
        self.check_model(model_id)
        return self.model_card()

    def stats(self) -> dict:
        s = dict(self.engine.stats)
        s["mean_batch"] = s["batch_rows_sum"] / s["steps"] if s["steps"] else 0.0
        s["max_batch_limit"] = self.engine.max_batch
        return s
