"""docs/logging.md's logger fragments (issue 26, item 6): each parses after a shipped config with the real CLI, and
the CSV one trains a fit whose ``metrics.csv`` holds the documented tags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lit_align.cli import main
from tests.test_configs import print_config

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "logging.md").read_text(), flags=re.S)


def test_the_page_shows_csv_wandb_mlflow_and_a_list():
    loggers = [yaml.safe_load(block)["trainer"]["logger"] for block in BLOCKS]
    named = [entry["class_path"].rsplit(".", 1)[-1] for logger in loggers
             for entry in (logger if isinstance(logger, list) else [logger])]
    assert {"CSVLogger", "WandbLogger", "MLFlowLogger", "TensorBoardLogger"} <= set(named)


@pytest.mark.parametrize("block", BLOCKS, ids=range(len(BLOCKS)))
def test_each_fragment_parses_after_a_shipped_config(block, tmp_path):
    fragment = tmp_path / "logger.yaml"
    fragment.write_text(block)
    printed = yaml.safe_load(print_config("lit_align", ROOT / "configs" / "quickstart.yaml", fragment))
    given, parsed = yaml.safe_load(block)["trainer"]["logger"], printed["trainer"]["logger"]
    given, parsed = (given, parsed) if isinstance(given, list) else ([given], [parsed])
    for one, resolved in zip(given, parsed, strict=True):  # as written, with the logger's defaults added
        assert resolved["class_path"] == one["class_path"]
        assert one["init_args"].items() <= resolved["init_args"].items()


def test_the_csv_fragment_logs_a_fit(tmp_path, model_dir, tokenizer_dir, explicit_file, monkeypatch):
    [csv] = [block for block in BLOCKS if "CSVLogger" in block and "TensorBoardLogger" not in block]
    (tmp_path / "logger.yaml").write_text(csv)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(tmp_path / "logger.yaml"), "--trainer.accelerator=cpu", "--trainer.max_steps=2",
          "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
          "--trainer.default_root_dir=runs/mine", "--model.objective=lit_align.objectives.DPO",
          f"--model.policy.path={model_dir}", "--data=lit_align.data.PreferenceDataModule",
          f"--data.path={explicit_file}", f"--data.tokenizer={tokenizer_dir}", "--data.batch_size=2",
          "--data.max_length=64", "--data.max_prompt_length=32", "--data.val_fraction=0"])
    [metrics] = (tmp_path / "runs" / "mine" / "lightning_logs").glob("version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "train/rewards/accuracies_step", "train/loss_epoch"} <= set(header)
    assert len(metrics.read_text().splitlines()) >= 3  # a row per logged step
