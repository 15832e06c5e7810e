"""Where a model ends its own answers: the probability it gives each of its end tokens (`stop_token_ids`: the
tokenizer's EOS, the chat template's end of turn) at the point its own greedy answers to a few short questions, in
its own chat template, end.

Why its own answers. Whether a base has learned to emit its end-of-turn token is a question about the base, not
about the data: a pirate's "Arr, ahoy!" is not where SmolLM2-Instruct expects a turn to end (p(<|im_end|>) 0.0003
there), yet it ends every answer of its own with that token (p 0.51-0.77 at their ends). The answer-token check
(`tunelab.model.untrained_tokens.split_learned`) judges a template's end tokens by this, so a fine-tuning set of
short, odd answers does not make a chat model's own end of turn look never-learned.
"""

from __future__ import annotations

import statistics

from tunelab.decoding.batch import DecodeBatch
from tunelab.decoding.embedded import decode_rows
from tunelab.decoding.stops import pad_token_id, stop_token_ids
from tunelab.model.eval_mode import eval_mode

# questions a chat model answers in a few words: SmolLM2-135M-Instruct ends all three within 9 tokens, and the
# decoding stops once every answer has ended: 11 forward passes (a prefill, 9 steps, the ended answers scored)
QUESTIONS = ("What is 2 + 3?", "Name a fruit.", "What is the capital of France?")
MAX_NEW_TOKENS = 16


def own_answer_end_probability(model, tokenizer, token_ids) -> dict[int, float]:
    """{end token id: the median probability `model` gives it where its own greedy answers to `QUESTIONS` end}
    for those of `token_ids` that end answers; {} when none does, or the tokenizer has no chat template to ask in
    (then nothing is generated: this runs before training). An answer still running at `MAX_NEW_TOKENS` has no
    end to measure and is left out; with none ended, every end token gets 0.0 (nothing proven)."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    ends = [t for t in dict.fromkeys(token_ids) if t in stops]
    if not ends or not getattr(tokenizer, "chat_template", None):
        return {}
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                       add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    pad_id = pad_token_id(tokenizer, stops)
    # no dropout: nothing drawn from the run's random state
    with eval_mode(model), torch.inference_mode():
        answers, stopped = decode_rows(model, prompts, MAX_NEW_TOKENS, stops, pad_id, len(prompts))
        ended = [prompt + answer for prompt, answer, done in zip(prompts, answers, stopped) if done]
        # one batched pass over the ended answers (their shared template header once): [end token][answer]
        at_end = (DecodeBatch.prefill(model, ended, pad_id, 0)[1].softmax(-1)[:, ends].T.tolist() if ended
                  else [[0.0]] * len(ends))
    return {t: statistics.median(p) for t, p in zip(ends, at_end)}
