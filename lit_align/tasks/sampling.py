"""Batched, seeded sampling of continuations with ``model.generate`` (ancestral sampling, no top-k/top-p),
and the log-probability of given continuations under a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_align.logprobs import sequence_logps
from lit_align.policy import final_hidden, lm_head


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> list[list[str]]:
    """``num_samples`` sampled continuations of every prompt, each starting with a space (so that
    ``prompt + continuation`` is the whole text), or empty when the model ends at once.

    Sampling stops at EOS or after ``max_new_tokens``. Batch ``b`` (of ``batch_size`` prompt-sample rows) is
    drawn under seed ``seed + b``; the global random state is left untouched. The model's train/eval mode is
    restored afterwards.

    Returns:
        ``samples[i][k]``: the ``k``-th continuation of ``prompts[i]``.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got temperature={temperature}")
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    rows = [prompt for prompt in prompts for _ in range(num_samples)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        starts = range(0, len(rows), batch_size)
        for b, start in enumerate(tqdm(starts, desc="Sampling", disable=not progress)):
            input_ids, attention_mask = _left_padded(tokenizer, rows[start : start + batch_size], device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + b)
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
            texts.extend(_decode(tokenizer, out[:, input_ids.shape[1] :]))
    finally:
        model.train(was_training)
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def _left_padded(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], device: torch.device):
    encoded = tokenizer(list(prompts))["input_ids"]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _decode(tokenizer: PreTrainedTokenizerBase, generated: torch.Tensor) -> list[str]:
    texts = []
    for ids in generated.tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        texts.append(" " + text if text else "")
    return texts


@torch.no_grad()
def response_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """``log π(y|x)`` summed over the tokens of each response and its EOS, shape ``(n,)``.

    Responses are cut from the tokenisation of ``prompt + response`` (the task's tokenizer keeps the prompt a
    prefix). Averaged over samples of the policy, ``log π(y|x) - log π_ref(y|x)`` estimates
    ``KL(π ‖ π_ref)`` per prompt.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = _response_batch(
                tokenizer, prompts[start : start + batch_size], responses[start : start + batch_size], device
            )
            hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])
            out.append(sequence_logps(hidden, lm_head(model), batch["input_ids"], batch["response_mask"]))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0)


def _response_batch(tokenizer, prompts, responses, device: torch.device) -> dict[str, torch.Tensor]:
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    full_ids = tokenizer([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"]
    rows = [full + [tokenizer.eos_token_id] for full in full_ids]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, row) in enumerate(zip(prompt_ids, rows, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        response_mask[i, len(prompt) : len(row)] = True
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "response_mask": response_mask.to(device),
    }
