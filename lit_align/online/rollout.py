"""One on-policy rollout: ``k`` responses per prompt sampled from the policy, kept as token ids, and the pairs built
from their rewards turned into the rows the preference collator batches.

Sampling is ancestral (``temperature``, no top-k/top-p), as :func:`~lit_align.eval.generation.sample_continuations`
samples, under ``no_grad`` with the KV cache, ``batch_size`` prompt-sample rows per ``generate`` call. Each call draws
from torch's generator seeded with :func:`step_seed` of the run's seed, its optimizer step, micro-batch, process and
chunk, inside ``fork_rng`` (the global random state is left as it was), so a rollout depends on nothing a resumed run
could lack.

A response ends at the first stop token (the tokenizer's EOS, or any EOS of the model's generation config, e.g. a
chat template's end of turn), which it keeps: the pair rows carry the generated ids themselves, never re-tokenised
text, and a response that ended is trained through its end of turn as lit-align trains every response
(docs/data.md). A response cut at ``max_new_tokens`` has no end: it is trained on its tokens alone, as the
sampling evaluation scores cut samples (:mod:`lit_align.eval.generation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_align.data.tokenize import example_key
from lit_align.online.pairs import ScoredPairs


def step_seed(*counters: int) -> int:
    """A 63-bit seed mixed from ``counters`` (e.g. seed, step, micro-batch, rank, chunk) by numpy's ``SeedSequence``:
    nearby counters give unrelated streams."""
    return int(np.random.SeedSequence([int(c) % 2**63 for c in counters]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class Rollout:
    """The responses of ``P`` prompts, ``k`` each, prompt-major (response ``j`` of prompt ``p`` is row ``p·k + j``)."""

    responses: list[list[int]]
    """Each response's ids, with its stop token when it ended."""
    ended: Tensor
    """``(P·k,)`` bool: whether each response ended (rather than being cut at ``max_new_tokens``)."""
    texts: list[str]
    """Each response decoded for the reward function (special tokens and the stop token left out)."""

    @property
    def lengths(self) -> Tensor:
        return torch.tensor([len(ids) for ids in self.responses], dtype=torch.float32)


def stop_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> list[int]:
    """The ids that end a response: the tokenizer's EOS and the model's generation config's EOS ids."""
    found = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in found if i is not None))


@torch.no_grad()
def sample_responses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Tensor,
                     attention_mask: Tensor, *, samples_per_prompt: int, max_new_tokens: int, temperature: float,
                     batch_size: int, seed: int, pad_token_id: int) -> Rollout:
    """``samples_per_prompt`` responses to each left-padded prompt of ``input_ids``; chunk ``c`` of ``batch_size``
    rows is drawn under seed :func:`step_seed` ``(seed, c)``. The model's train/eval mode is restored afterwards."""
    stops = stop_ids(tokenizer, model)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_token_id,
                              use_cache=True)
    ids, mask = (rows.repeat_interleave(samples_per_prompt, 0) for rows in (input_ids, attention_mask))
    devices = [ids.device] if ids.device.type == "cuda" else []
    was_training = model.training
    model.eval()
    responses: list[list[int]] = []
    ended: list[bool] = []
    try:
        for chunk, start in enumerate(range(0, len(ids), batch_size)):
            rows = slice(start, start + batch_size)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(step_seed(seed, chunk))
                out = model.generate(input_ids=ids[rows], attention_mask=mask[rows], generation_config=config)
            for generated in out[:, ids.shape[1] :].tolist():
                end = next((i for i, token in enumerate(generated) if token in stops), None)
                responses.append(generated if end is None else generated[: end + 1])
                ended.append(end is not None)
    finally:
        model.train(was_training)
    texts = [decoded(tokenizer, response[:-1] if end else response) for response, end in zip(responses, ended,
                                                                                               strict=True)]
    return Rollout(responses, torch.tensor(ended), texts)


def decoded(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """A response's text as the sampling evaluation decodes it: special tokens skipped, stripped, and led by one
    space when not empty (so that ``prompt + response`` reads as one text)."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return " " + text if text else ""


def token_pairs(prompts: list[list[int]], rollout: Rollout, pairs: ScoredPairs) -> list[dict]:
    """The pairs as tokenised rows (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``example_key``), as
    :class:`~lit_align.data.PairCollator` batches them; ``prompts`` are the prompts' ids without padding."""
    rows = []
    for prompt, chosen, rejected in zip(pairs.prompt.tolist(), pairs.chosen.tolist(), pairs.rejected.tolist(),
                                        strict=True):
        ids = (prompts[prompt], rollout.responses[chosen], rollout.responses[rejected])
        rows.append({"prompt_ids": ids[0], "chosen_ids": ids[1], "rejected_ids": ids[2],
                     "example_key": example_key(*ids)})
    return rows
