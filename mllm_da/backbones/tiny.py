"""Offline tokenizers for tiny models: a byte-level BPE trained in-process, deterministic for a given corpus.

No hub access is possible here, so every tiny backbone gets a tokenizer trained on a fixed corpus (the toy domain's
texts plus a little general English) with its family's special tokens. Training takes well under a second.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from transformers import PreTrainedTokenizerFast

from mllm_da.toy import sample_texts

GENERAL_TEXT = (
    "Describe the image. What is in the picture? Answer with a precise response. Answer with an informative "
    "response. The answer is yes. The answer is no. Question: Answer: Options: Explanation: Therefore, so, thus, "
    "the final result could be. A photo of food, a plate with rice and vegetables, a chest X-ray, a tissue slide. "
    "Is there an abnormality? How many objects are there? Which option is correct? Please answer briefly. "
    "You are a helpful assistant. Consistent: Yes No Open. Informative Answer: Precise Answer:"
)


def tokenizer_corpus(seed: int = 0, n_scenes: int = 3000) -> list[str]:
    """Texts the tiny tokenizer is trained on: toy-domain captions and tasks, so domain words are single tokens."""
    return [GENERAL_TEXT] * 20 + sample_texts(random.Random(seed), n_scenes)


def train_bpe_tokenizer(
    corpus: Iterable[str],
    special_tokens: Sequence[str],
    *,
    vocab_size: int = 512,
    bos_token: str | None,
    eos_token: str,
    pad_token: str,
    unk_token: str | None = None,
    chat_template: str | None = None,
    extra: dict | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE whose first ids are ``special_tokens`` in order, and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    kwargs = dict(extra or {})
    if bos_token:
        kwargs["bos_token"] = bos_token
    if unk_token:
        kwargs["unk_token"] = unk_token
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token, chat_template=chat_template, **kwargs
    )


def mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (time, height, width) the way Qwen does (1 : 1.5 : 1.5)."""
    half = head_dim // 2
    temporal = max(1, half // 4)
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]
