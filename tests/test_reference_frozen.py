"""FrozenCopy(path=...) loads its model as the policy is loaded: dtype, trust_remote_code and extra, unless set."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.models.layout import attention_backend
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import FrozenCopy

REMOTE_CONFIG = (
    "from transformers import LlamaConfig\n\n\nclass TinyRemoteConfig(LlamaConfig):\n    model_type = 'tiny_remote'\n"
)
REMOTE_MODEL = (
    "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny_remote import TinyRemoteConfig\n\n\n"
    "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n"
)


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory) -> str:
    """A tiny Llama saved as a model with its own code (``auto_map``), loadable only with trust_remote_code."""
    target = tmp_path_factory.mktemp("remote")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(target)
    (target / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (target / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    saved = json.loads((target / "config.json").read_text())
    saved.update(model_type="tiny_remote", architectures=["TinyRemoteForCausalLM"], auto_map={
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM",
    })
    (target / "config.json").write_text(json.dumps(saved))
    return str(target)


def reference_of(policy: PolicySpec, reference: FrozenCopy) -> torch.nn.Module:
    module = AlignmentModule(FDPO(), policy, reference=reference)
    module.configure_model()
    return module.reference.model


def test_the_reference_takes_the_policys_dtype_and_extra(model_dir):
    policy = PolicySpec(path=model_dir, dtype="bfloat16", extra={"attn_implementation": "eager"})
    model = reference_of(policy, FrozenCopy(path=model_dir))
    assert model.dtype == torch.bfloat16
    assert attention_backend(model.config) == "eager"


def test_the_references_own_settings_win(model_dir):
    policy = PolicySpec(path=model_dir, dtype="bfloat16", extra={"attn_implementation": "eager"})
    model = reference_of(policy, FrozenCopy(path=model_dir, dtype="float32", extra={"attn_implementation": "sdpa"}))
    assert model.dtype == torch.float32
    assert attention_backend(model.config) == "sdpa"


def test_the_reference_takes_the_policys_trust_remote_code(model_dir, remote_dir):
    trusted = PolicySpec(path=model_dir, trust_remote_code=True)
    assert type(reference_of(trusted, FrozenCopy(path=remote_dir))).__name__ == "TinyRemoteForCausalLM"
    with pytest.raises(ValueError, match="custom code"):
        reference_of(PolicySpec(path=model_dir), FrozenCopy(path=remote_dir))
    with pytest.raises(ValueError, match="custom code"):
        reference_of(trusted, FrozenCopy(path=remote_dir, trust_remote_code=False))


def test_spec_without_a_module_loads_as_the_defaults(model_dir):
    spec = FrozenCopy(path=model_dir).spec()
    assert (spec.path, spec.dtype, spec.trust_remote_code, spec.extra, spec.lora) == (
        model_dir, "float32", False, {}, None)
