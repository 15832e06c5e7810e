"""Train a byte-level BPE tokenizer for from-scratch models and save it as a Hugging Face tokenizer.

Byte-level BPE covers any UTF-8 text (Chinese included) with no unknown tokens; digits are split one by
one so numbers tokenise uniformly, which arithmetic needs.
"""

from __future__ import annotations

from typing import Iterable

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, chat_template: str | None = None):
    """Return a `PreTrainedTokenizerFast` trained on `texts` (EOS and PAD special tokens, digits split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None,
                                 clean_up_tokenization_spaces=False)
    if chat_template:
        hf.chat_template = chat_template
    return hf
