"""Tokenizers trained from texts with ``tokenizers`` (nothing from the hub) and wrapped as a transformers
``PreTrainedTokenizerFast`` (loadable with ``AutoTokenizer.from_pretrained``): the review corpus's word-level one
(:func:`train_tokenizer`), and a byte-level BPE one (:func:`train_bpe_tokenizer`) for the tests' tiny models and the
tools' benchmarks.

The word-level tokenizer lower-cases text and splits it on whitespace and punctuation; every word of the corpus is
one token, unknown words map to ``<unk>``. Encoding prepends ``<bos>`` and never appends ``<eos>`` (the data
pipeline appends it to responses), so the tokenised prompt is a prefix of the tokenised ``prompt + response``
whenever the response starts with a space or punctuation. Decoding joins words with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|> ' + message['content'] + ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""``<|user|> text <|assistant|> text ...``: the roles ``user`` and ``assistant`` have their own tokens."""
BPE_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def train_tokenizer(texts: Iterable[str], model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of ``texts`` plus the special tokens."""
    core = Tokenizer(models.WordLevel(unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special, min_frequency=1))
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int | None = None,
                        extra_special_tokens: Sequence[str] = (), chat_template: str | None = None,
                        ) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as GPT-2's) trained on ``texts``, with ``<pad>``, ``<s>`` and ``</s>`` (then
    ``extra_special_tokens``) as its first ids, and an optional chat template."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*BPE_SPECIAL_TOKENS, *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    lengths = {} if max_length is None else {"model_max_length": max_length}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        **lengths)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
