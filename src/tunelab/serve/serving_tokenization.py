"""POST /tokenize, /detokenize and GET /tokenizer_info, vLLM-style, so lm-evaluation-harness can tokenize remotely.

Tokenising runs on a worker thread and the answer is encoded to JSON there too: a megabyte of text is
hundreds of thousands of tokens, and neither step may hold up the event loop that /health and running streams
share. The long lists are encoded a slice at a time: one `json.dumps` of a million tokens holds the GIL for a
quarter of a second on a fast host, and each slice is short enough to let the loop and the engine run between.
"""

from __future__ import annotations

import json

from fastapi.responses import Response

from tunelab.serve.models import BIG_BYTES, release_heap
from tunelab.serve.protocol import APIError, DetokenizeRequest, TokenizeRequest
from tunelab.serve.serving import OpenAIServing, template_refused


SLICE = 20_000     # list items per json.dumps call: a few milliseconds each


def json_list(items: list) -> list[str]:
    """`json.dumps(items, ensure_ascii=False)` in pieces, one short GIL-holding call per slice."""
    parts = [json.dumps(items[i:i + SLICE], ensure_ascii=False)[1:-1] for i in range(0, len(items), SLICE)]
    return ["[", ", ".join(parts), "]"]


class OpenAIServingTokenization(OpenAIServing):

    async def tokenize(self, req: TokenizeRequest) -> Response:
        served = self.served
        self.check_model(req.model)
        if req.messages is None and req.prompt is None:
            raise APIError(400, "give 'prompt' or 'messages'", param="prompt")

        def run() -> bytes:
            if req.messages is not None:
                text = served.render_chat([{"role": m.role, "content": m.text()} for m in req.messages],
                                          req.add_generation_prompt)
                ids = served.encode(text, add_special_tokens=False)
            else:
                ids = served.encode(req.prompt, add_special_tokens=req.add_special_tokens)
            head = json.dumps({"count": len(ids), "max_model_len": served.context_len})[:-1]
            strs = [served.token_str(i) for i in ids]
            return "".join([head, ', "tokens": ', *json_list(ids), ', "token_strs": ', *json_list(strs),
                            "}"]).encode("utf-8")     # encoded here, not on the event loop

        def run_and_release() -> bytes:
            data = run()
            if len(data) > BIG_BYTES:   # its tokens, strings and encoding are freed by now
                release_heap()
            return data
        try:
            return Response(await served.off_loop(run_and_release), media_type="application/json")
        except Exception as e:  # noqa: BLE001 - a template's raise_exception()
            if req.messages is None:
                raise
            raise template_refused(e) from e

    async def detokenize(self, req: DetokenizeRequest) -> dict:
        self.check_model(req.model)
        self.check_ids(req.tokens)
        return {"prompt": await self.served.off_loop(self.served.decode, req.tokens)}

    def tokenizer_info(self) -> dict:
        tok = self.served.tokenizer
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "unk_token": tok.unk_token, "eos_token_id": tok.eos_token_id,
                "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id,
                "chat_template": tok.chat_template, "model_max_length": self.served.context_len,
                "vocab_size": self.engine.vocab_size}
