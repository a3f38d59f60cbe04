"""The policy's peft adapter: the LoRA shorthand (``model.policy.lora``) or any ``PeftConfig`` (``model.policy.peft``,
by ``class_path``: LoRA with DoRA or rsLoRA, PiSSA/OLoRA initialisation, LoRA on the embeddings, IA3, LoHa, LoKr,
OFT, VeRA, ...), and whether disabling it gives back the base model (what ``DisabledAdapter`` needs)."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch
from jsonargparse import ArgumentParser
from peft import AdaLoraConfig, LoraConfig, PeftConfig, get_peft_config, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers import PreTrainedModel

from lit_align.errors import ConfigError

if TYPE_CHECKING:
    from lit_align.models.policy import PolicySpec

# jsonargparse gives a parsed LoraConfig every field, an empty LoftQConfig among them, which peft then says it
# ignores (it reads it only with init_lora_weights: loftq): a warning about a setting the user never made.
warnings.filterwarnings("ignore", message="`loftq_config` specified but will be ignored", category=UserWarning)

BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")
"""LoRA initialisations that move part of each weight out of the base into the adapter: the base left behind,
seen with the adapter disabled, is no longer the model the run started from."""


def adapter_config(spec: PolicySpec) -> PeftConfig | None:
    """The peft config of ``spec``'s adapter (a fresh copy: peft keeps and edits the one it is given), or ``None``."""
    if spec.peft is not None:
        config = copy.deepcopy(spec.peft)
        if config.is_prompt_learning:
            raise ConfigError("model.policy.peft", type(config).__name__,
                              "an adapter method: virtual-token methods (prompt, prefix and p-tuning) lengthen the "
                              "sequences whose log-probs lit-align scores")
        if isinstance(config, AdaLoraConfig):
            raise ConfigError("model.policy.peft", type(config).__name__,
                              "an adapter whose training is its forward: AdaLoRA's rank budget needs "
                              "update_and_allocate after every step and its orthogonal penalty in the loss")
        if config.task_type is None:
            config.task_type = "CAUSAL_LM"
        return config
    if spec.lora is None:
        return None
    lora = spec.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def add_adapter(model: PreTrainedModel, spec: PolicySpec) -> nn.Module:
    """``model`` with ``spec``'s adapter (seeded by ``spec.init_seed``), or ``model`` itself without one."""
    config = adapter_config(spec)
    if config is None:
        return model
    key = "model.policy.peft" if spec.peft is not None else "model.policy.lora.target_modules"
    targets = getattr(config, "target_modules", None)  # as given: peft expands them in place
    check_targets(model, targets, key)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        try:
            return get_peft_model(model, config)
        except (ValueError, TypeError) as error:  # peft refuses the config on this model (e.g. a Mamba out_proj)
            reason = str(error).strip().splitlines()[0]
            raise ConfigError(key, targets if targets is not None else type(config).__name__,
                              f"peft refuses them on this {model.config.model_type} model ({reason}); name the "
                              "modules to adapt") from error


def check_targets(model: nn.Module, targets: list[str] | set[str] | str | None, key: str) -> None:
    """Refuse target names that match no module of ``model`` (as peft matches them: the module's name or its last
    dotted parts), naming the model's linear modules; ``all-linear``, a regex string and peft's defaults pass."""
    if targets is None or isinstance(targets, str):
        return
    names = [name for name, _ in model.named_modules()]
    missing = [target for target in targets if not any(name == target or name.endswith(f".{target}")
                                                       for name in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, nn.Linear)})
        raise ConfigError(key, sorted(targets), f"{missing} match no module of this {model.config.model_type} "
                                                f"model; its linear modules are {linear} (or use all-linear)")


def base_change(policy: nn.Module) -> str | None:
    """Why the adapter-disabled ``policy`` is not its base model as loaded (``None`` when it is): an
    initialisation that moves weight into the adapter, or an adapted output head (lit-align applies the head
    outside ``disable_adapter``)."""
    if (init := base_changing_init(policy.peft_config["default"])) is not None:
        return (f"init_lora_weights={init!r} moves the weights' principal part into the adapter, so the "
                "adapter-disabled model is not the base")
    if isinstance(policy.get_output_embeddings(), BaseTunerLayer | ModulesToSaveWrapper):
        return "the output head is adapted, and lit-align runs the head outside disable_adapter()"
    return None


def base_changing_init(config: PeftConfig | None) -> str | None:
    """The name of ``config``'s initialisation when it moves weight out of the base (PiSSA, OLoRA, ...), else
    ``None``."""
    init = getattr(config, "init_lora_weights", None)
    return init if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS) else None


def peft_config_from_dict(settings: dict[str, Any]) -> PeftConfig:
    """A peft config from a checkpoint's stored settings: the CLI's ``class_path``/``init_args`` form, or peft's own
    ``to_dict()`` form (with ``peft_type``)."""
    if "class_path" not in settings:
        return get_peft_config(settings)
    parser = ArgumentParser(exit_on_error=False)  # as the CLI parsed it: nested settings become their classes
    parser.add_argument("--peft", type=PeftConfig)
    return parser.instantiate_classes(parser.parse_object({"peft": settings})).peft
