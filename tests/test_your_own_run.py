"""The README's "Your own run", command by command, as a user runs it: a TRL-layout jsonl of conversations and
a local model directory with a chat template, in an empty folder; ``configs/dpo_custom.yaml`` as shipped."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

from transformers import AutoTokenizer

from tests.conftest import explicit_rows
from tests.test_distributed import ROOT, TIMEOUT, loopback_env


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- your-own-run[^\n]*-->\n```bash\n(.*?)```", text, re.S)[1]
    return [shlex.split(line) for line in block.strip().splitlines()]


def trl_conversations(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": row["prompt"]}],
             "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": row["rejected"].strip()}]} for row in explicit_rows(n)]


def test_the_readme_run_goes_from_a_jsonl_to_an_exported_model(tmp_path, model_dir, tokenizer_dir):
    shutil.copytree(model_dir, tmp_path / "my-sft")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "my-sft")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in trl_conversations(24)))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # a clone's configs, beside the user's files
    commands = readme_commands()
    assert [command[:2] for command in commands] == [["lit-align", "fit"], ["lit-align", "export"],
                                                     ["python", "-c"]]
    results = []
    for command in commands:
        program = [sys.executable, "-m", "lit_align"] if command[0] == "lit-align" else [sys.executable]
        results.append(subprocess.run([*program, *command[1:]], cwd=tmp_path, env=loopback_env(),
                                      capture_output=True, text=True, timeout=TIMEOUT))
        assert results[-1].returncode == 0, (command, results[-1].stderr[-3000:])
    assert "read as conversational): kept 24 of 24 pairs" in results[0].stderr
    assert results[-1].stdout.strip() == "llama"
    assert {"model.safetensors", "config.json", "tokenizer.json", "lit_align_run.json"} <= {
        path.name for path in (tmp_path / "my-aligned").iterdir()}
