"""Fold a LoRA adapter (as written by ``lit_align.callbacks.save_adapter.SaveAdapter``, or any peft adapter) into
its base model and write a plain transformers model that ``AutoModelForCausalLM.from_pretrained`` loads::

    python tools/merge_lora.py --adapter runs/lora/lightning_logs/version_0/adapter --output merged/
    python tools/merge_lora.py --adapter runs/lora/adapter --base /models/llama-3-8b --output merged/

(``SaveAdapter`` writes to ``<log dir>/adapter``, e.g. ``runs/lora/lightning_logs/version_0/adapter``, and logs
the path.) ``--base`` defaults to the base the adapter was trained on (``base_model_name_or_path`` in its
``adapter_config.json``). The merged weights keep the base's dtype and are written as safetensors; the base's
tokenizer is written alongside when the base directory has one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.errors import ConfigError
from lit_align.paths import local_path, resolve_local_or_hub


def merge(adapter: Path, base: str | None, output: Path) -> Path:
    """Load ``base``, apply the adapter at ``adapter``, merge it into the weights (``merge_and_unload``) and
    ``save_pretrained`` the result to ``output``."""
    if base is None:
        config = local_path("--adapter", str(adapter / "adapter_config.json"))
        base = resolve_local_or_hub("base_model_name_or_path (in adapter_config.json; or pass --base)",
                                    json.loads(Path(config).read_text())["base_model_name_or_path"])
    else:
        base = resolve_local_or_hub("--base", base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    if (Path(base) / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(base).save_pretrained(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, required=True, help="the adapter's directory")
    parser.add_argument("--base", help="the base model (default: the one named in adapter_config.json)")
    parser.add_argument("--output", type=Path, required=True, help="where to write the merged model")
    arguments = parser.parse_args()
    try:
        merge(arguments.adapter, arguments.base, arguments.output)
    except ConfigError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
