"""Scoring sampled responses under a model: their summed log-probs and, in the same forward pass, the model's
predictive entropy at every response position.

A sample that reached ``max_new_tokens`` without EOS was cut, not ended: its probability under the sampling
process is that of its tokens alone, so it is scored without the EOS term (scoring it as if it ended there adds
``log π(EOS | x, y)`` of each model, a bias that grows as a policy drifts towards long responses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lit_align.eval.metrics import TokenEntropy
from lit_align.logprobs import response_positions, sequence_logps
from lit_align.policy import final_hidden, lm_head


def ended_before(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str], max_new_tokens: int
) -> list[bool]:
    """Whether each sampled response ended with EOS, i.e. has fewer than ``max_new_tokens`` tokens (as
    :func:`lit_align.tasks.sampling.sample_continuations` cuts them)."""
    prompt_lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    full = tokenizer([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"]
    return [len(ids) - n < max_new_tokens for ids, n in zip(full, prompt_lengths, strict=True)]


@torch.no_grad()
def score_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    ended: Sequence[bool] | None = None,
    batch_size: int = 64,
    entropy: TokenEntropy | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """``log π(y|x)`` summed over the tokens of each response (and its EOS, where it ended), ``(n,)`` on the CPU.

    Responses are cut from the tokenisation of ``prompt + response`` (the prompt must tokenise to a prefix of
    it, as for :func:`lit_align.tasks.sampling.response_logps`, which this equals when every response ended).

    Args:
        ended: per response, whether it ended with EOS (see :func:`ended_before`); unset: all did.
        batch_size: responses per forward pass.
        entropy: when given, updated with ``H(π(·|x, y<t))`` at every scored position, ``chunk_size`` positions
            at a time.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    ended = [True] * len(responses) if ended is None else list(ended)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            window = slice(start, start + batch_size)
            ids, attention_mask, mask = _response_batch(tokenizer, prompts[window], responses[window], ended[window])
            ids, attention_mask, mask = ids.to(device), attention_mask.to(device), mask.to(device)
            hidden = final_hidden(model, ids, attention_mask)
            head = lm_head(model)
            out.append(sequence_logps(hidden, head, ids, mask, chunk_size).cpu())
            if entropy is not None:
                selected = hidden[response_positions(mask)]
                for i in range(0, len(selected), chunk_size):
                    entropy.update(head(selected[i : i + chunk_size]))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _response_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` (true on the response's tokens and
    on its EOS, where it ended)."""
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    full_ids = tokenizer([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"]
    rows = [ids + [tokenizer.eos_token_id] if end else ids for ids, end in zip(full_ids, ended, strict=True)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, row) in enumerate(zip(prompt_ids, rows, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        response_mask[i, len(prompt) : len(row)] = True
    return input_ids, attention_mask, response_mask
