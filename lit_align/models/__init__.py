"""The model side: a transformers causal LM as lit-align runs it.

- :mod:`~lit_align.models.policy`: the policy's spec (:class:`PolicySpec`, :class:`LoraSettings`) and its building;
- :mod:`~lit_align.models.loading`: weights read once (meta device, whole, unit by unit, or shard by shard);
- :mod:`~lit_align.models.families`: the family registry, one entry per ``model_type`` (what differs, as data);
- :mod:`~lit_align.models.head`: the output head and each family's transform around it;
- :mod:`~lit_align.models.layout`: padded and packed rows, and the attention masks of packed rows;
- :mod:`~lit_align.models.logprobs` and :mod:`~lit_align.models.token_kl`: response log-probs through the chunked
  head, and the sequential token-level KL beside them;
- :mod:`~lit_align.models.sharding`: FSDP1 and FSDP2 wrapping.
"""

from lit_align.models.policy import DType, LoraSettings, PolicySpec, build_policy

__all__ = ["DType", "LoraSettings", "PolicySpec", "build_policy"]
