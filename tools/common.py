"""Helpers shared by the tools and the tests: a byte-level BPE tokenizer trained from texts (no hub), and the
peak memory of this process (resident set on the CPU, allocator peak on CUDA). Run tools as modules from the
repository root (``python -m tools.<name>``) so that this module is importable."""

from __future__ import annotations

import resource
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so that a tool can set its threads before torch loads
    from transformers import PreTrainedTokenizerFast

BASE_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int | None = None,
                        extra_special_tokens: Sequence[str] = (), chat_template: str | None = None,
                        ) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as GPT-2's) trained on ``texts``, with ``<pad>``, ``<s>`` and ``</s>`` (then
    ``extra_special_tokens``) as its first ids, and an optional chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*BASE_SPECIAL_TOKENS, *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    lengths = {} if max_length is None else {"model_max_length": max_length}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        **lengths)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new high-water mark: CUDA's allocator peak, or (Linux) the process's peak resident set."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass  # not Linux: the baseline is then the earlier peak, and a growth measured from it a lower bound


def peak_memory_mib(device: str = "cpu") -> float:
    """The high-water mark since :func:`reset_peak_memory`: CUDA's allocator peak, or the peak resident set."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
