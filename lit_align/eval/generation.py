"""Generation helpers, in one place: seeded sampling of continuations with ``model.generate`` (ancestral
sampling, no top-k/top-p), the one batch builder for scoring ``prompt + response`` texts, and their log-probs
under a model (with, in the same forward pass, its predictive entropy at every response position).

A sample that reached ``max_new_tokens`` without EOS was cut, not ended: its probability under the sampling
process is that of its tokens alone, so it is scored without the EOS term (scoring it as if it ended there adds
``log π(EOS | x, y)`` of each model, a bias that grows as a policy drifts towards long responses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_align.eval.metrics import DistinctN, TokenEntropy
from lit_align.models.logprobs import response_positions, sequence_logps
from lit_align.models.policy import final_hidden, lm_head
from lit_align.online.reward import RewardFn, checked_rewards


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
    batch = tokenizer.pad(tokenizer(list(prompts)), padding_side="left", return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _decode(tokenizer: PreTrainedTokenizerBase, generated: torch.Tensor) -> list[str]:
    texts = []
    for ids in generated.tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        texts.append(" " + text if text else "")
    return texts


def ended_before(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str], max_new_tokens: int
) -> list[bool]:
    """Whether each sampled response ended with EOS, i.e. has fewer than ``max_new_tokens`` tokens (as
    :func:`sample_continuations` cuts them)."""
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
    it).

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
            ids, attention_mask, mask = response_batch(tokenizer, prompts[window], responses[window], ended[window])
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


def response_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch of ``prompt + response`` texts: right-padded ``input_ids``, ``attention_mask`` and
    ``response_mask`` (true on the response's tokens and on its EOS, where it ended)."""
    prompt_lengths = torch.tensor([len(ids) for ids in tokenizer(list(prompts))["input_ids"]])
    full_ids = tokenizer([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"]
    rows = [ids + [tokenizer.eos_token_id] if end else ids for ids, end in zip(full_ids, ended, strict=True)]
    padded = tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
    input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]
    positions = torch.arange(input_ids.shape[1])
    response_mask = (positions >= prompt_lengths[:, None]) & (positions < attention_mask.sum(-1, keepdim=True))
    return input_ids, attention_mask, response_mask


def response_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 256,
) -> Tensor:
    """``log π(y|x)`` summed over the tokens of each response and its EOS, ``(n,)``: :func:`score_responses`
    of responses that all ended."""
    return score_responses(model, tokenizer, prompts, responses, batch_size=batch_size)


@dataclass
class SampleSet:
    """One model's scored samples of some prompts (flattened, ``samples_per_prompt`` per prompt)."""

    prompts: list[str]
    texts: list[str]
    ended: list[bool]
    """Whether each sample ended with EOS (the others were cut at ``max_new_tokens``)."""
    rewards: Tensor
    logps: Tensor
    """Summed log-probs under the model that drew them."""
    entropy: float
    distinct: dict[int, float]


def draw_samples(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                 reward_fn: RewardFn, *, samples_per_prompt: int,
                 max_new_tokens: int, temperature: float, batch_size: int, seed: int, distinct_n: Sequence[int],
                 device: torch.device) -> SampleSet:
    """Sample ``samples_per_prompt`` continuations of each prompt from ``model`` and score them: their log-probs
    and predictive entropy under ``model`` (cut samples without an EOS term), rewards, and distinct-n."""
    samples = sample_continuations(model, tokenizer, prompts, num_samples=samples_per_prompt,
                                   max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                                   seed=seed)
    flat_prompts = [p for p, ys in zip(prompts, samples, strict=True) for _ in ys]
    texts = [y for ys in samples for y in ys]
    ended = ended_before(tokenizer, flat_prompts, texts, max_new_tokens)
    entropy = TokenEntropy().to(device)
    logps = score_responses(model, tokenizer, flat_prompts, texts, ended=ended, batch_size=batch_size,
                            entropy=entropy)
    distinct = {}
    for n in distinct_n:
        metric = DistinctN(n).to(device)
        metric.update(texts)
        distinct[n] = float(metric.compute())
    rewards = checked_rewards(reward_fn(flat_prompts, texts), len(texts), reward_fn).cpu().double()
    return SampleSet(flat_prompts, texts, ended, rewards, logps, float(entropy.compute()), distinct)
