"""A word-level tokenizer for the review corpus, trained with ``tokenizers`` and wrapped as a transformers
``PreTrainedTokenizerFast`` (loadable with ``AutoTokenizer.from_pretrained``).

Text is lower-cased and split on whitespace and punctuation; every word of the corpus is one token, unknown
words map to ``<unk>``. Encoding prepends ``<bos>`` and never appends ``<eos>`` (the data pipeline appends it
to responses), so the tokenised prompt is a prefix of the tokenised ``prompt + response`` whenever the
response starts with a space or punctuation. Decoding joins words with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|> ' + message['content'] + ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""``<|user|> text <|assistant|> text ...``: the roles ``user`` and ``assistant`` have their own tokens."""


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
