"""Residual-stream capture on a tiny Llama: the right tensor, early stopping, gradients, tuple outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.sae import ResidualCapture, SparseAutoencoder, decoder_layers, pooled_features, residual_stream

LAYERS = 3


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 50, (2, 7), generator=generator)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


def capture_hooks(model: nn.Module) -> list:
    hooks = [hook for block in decoder_layers(model) for hook in block._forward_hooks.values()]
    return [hook for hook in hooks if isinstance(getattr(hook, "__self__", None), ResidualCapture)]


def count_calls(modules: list[nn.Module]) -> tuple[list[int], list]:
    calls = [0]
    handles = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in modules]
    return calls, handles


@pytest.mark.parametrize("layer", range(LAYERS))
def test_capture_is_the_block_output(llama, batch, layer):
    input_ids, attention_mask = batch
    with torch.no_grad(), ResidualCapture(llama, layer) as capture:
        out = llama(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    # hidden_states[0] is the embedding, hidden_states[i + 1] the output of layer i (the last one after the norm)
    if layer < LAYERS - 1:
        torch.testing.assert_close(capture.activations, out.hidden_states[layer + 1])
    else:
        assert not torch.allclose(capture.activations, out.hidden_states[-1])
        torch.testing.assert_close(llama.model.norm(capture.activations), out.hidden_states[-1])
    assert not capture_hooks(llama)  # gone after the block (transformers keeps its own hooks)


@pytest.mark.parametrize("layer", range(LAYERS))
def test_residual_stream_stops_early_and_matches_full_forward(llama, batch, layer):
    input_ids, attention_mask = batch
    with torch.no_grad(), ResidualCapture(llama, layer) as full:
        llama(input_ids, attention_mask=attention_mask)
    later = [*decoder_layers(llama)[layer + 1 :], llama.model.norm, llama.lm_head]
    calls, handles = count_calls(later)
    earlier_calls, earlier_handles = count_calls([decoder_layers(llama)[layer]])
    try:
        with torch.no_grad():
            stopped = residual_stream(llama, layer, input_ids, attention_mask)
    finally:
        for handle in handles + earlier_handles:
            handle.remove()
    assert calls[0] == 0 and earlier_calls[0] == 1
    torch.testing.assert_close(stopped, full.activations)
    assert not capture_hooks(llama)
    llama(input_ids, attention_mask=attention_mask)  # the model still runs normally afterwards


def test_stopping_capture_skips_the_rest_of_its_block(llama, batch):
    reached = []
    with torch.no_grad(), ResidualCapture(llama.model, 0, stop=True) as capture:
        llama.model(batch[0])
        reached.append(True)
    assert not reached and capture.activations.shape == (2, 7, 32)


def test_nested_captures_only_swallow_their_own_stop(llama, batch):
    with torch.no_grad(), ResidualCapture(llama, 0, stop=True) as outer:
        with ResidualCapture(llama, 2) as inner:
            llama(batch[0])
    assert outer.activations.shape == (2, 7, 32)
    with pytest.raises(RuntimeError, match="no forward has reached decoder layer 2"):
        _ = inner.activations


def test_other_exceptions_propagate(llama):
    with pytest.raises(IndexError), ResidualCapture(llama, 1, stop=True):
        llama(torch.tensor([[10_000]]))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_capture_is_differentiable_under_gradient_checkpointing(batch, use_reentrant):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    with ResidualCapture(model, 0) as plain:
        model(batch[0], attention_mask=batch[1])
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    model.train()
    assert model.model.layers[0].gradient_checkpointing
    with ResidualCapture(model, 0) as checkpointed:
        model(batch[0], attention_mask=batch[1])
    assert checkpointed.activations.requires_grad
    torch.testing.assert_close(checkpointed.activations, plain.activations)
    sae = SparseAutoencoder(32, 16, "relu")
    pooled_features(sae, checkpointed.activations, batch[1].bool()).sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    assert model.model.layers[1].mlp.down_proj.weight.grad is None  # nothing after layer 0 feeds the loss


class TupleLayer(nn.Module):
    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
        return hidden * 2, None


class TupleDecoder(nn.Module):
    """A decoder whose layers return ``(hidden_states, attention)`` tuples, as transformers < 5 did."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TupleLayer(), TupleLayer()])

    def forward(self, input_ids: torch.Tensor, attention_mask=None, use_cache=False) -> torch.Tensor:
        hidden = input_ids.float()
        for layer in self.layers:
            hidden = layer(hidden)[0]
        return hidden


def test_tuple_outputs_are_unpacked():
    x = torch.ones(1, 3, 4)
    torch.testing.assert_close(residual_stream(TupleDecoder(), 0, x), 2 * x)
    torch.testing.assert_close(residual_stream(TupleDecoder(), 1, x), 4 * x)


def test_peft_wrapped_model(batch):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    base = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        plain = residual_stream(base, 1, batch[0], batch[1])
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert decoder_layers(wrapped) is decoder_layers(base)
    with torch.no_grad():
        adapted = residual_stream(wrapped, 1, batch[0], batch[1])
        with wrapped.disable_adapter():
            disabled = residual_stream(wrapped, 1, batch[0], batch[1])
    assert not torch.allclose(adapted, plain)
    torch.testing.assert_close(disabled, plain)


def test_bad_layer_or_model_is_refused(llama):
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\)"):
        ResidualCapture(llama, 3)
    with pytest.raises(ValueError, match="no decoder layers"):
        ResidualCapture(nn.Linear(2, 2), 0)
