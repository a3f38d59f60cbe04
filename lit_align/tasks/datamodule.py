"""``ControlledTaskDataModule``: the built-in controlled-generation task as a preference data module."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from lit_align.data.datamodule import PreferenceDataModule
from lit_align.data.tokenize import TruncationMode
from lit_align.tasks.pipeline import ControlledTaskSettings, TaskArtifacts, build_controlled_task


class ControlledTaskDataModule(PreferenceDataModule):
    """Builds the task (corpus, tokenizer, SFT reference, oracle-labelled pairs; cached) in ``prepare_data``,
    then serves its train and val pairs like :class:`~lit_align.data.PreferenceDataModule`.

    The work directory's layout is fixed (:class:`~lit_align.tasks.pipeline.TaskArtifacts`), so the policy can
    be configured with ``path: <workdir>/sft`` before the task is built: the module loads its policy in
    ``configure_model``, which runs after ``prepare_data``.

    Args:
        workdir: where the task's stages are built and cached.
        task: the task's settings (corpus size, model shape, SFT steps, sampling).
        max_length, max_prompt_length, truncation_mode, batch_size, eval_batch_size, num_workers: as for
            :class:`~lit_align.data.PreferenceDataModule`.
        progress: show progress bars while building the task.
    """

    def __init__(
        self,
        workdir: str = "runs/controlled_task",
        task: ControlledTaskSettings | None = None,
        max_length: PositiveInt = 128,
        max_prompt_length: PositiveInt = 32,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt | None = None,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        self.artifacts = TaskArtifacts(Path(workdir))
        super().__init__(
            path=str(self.artifacts.train_pairs_path),
            tokenizer=str(self.artifacts.sft_dir),
            row_format="explicit",
            val_path=str(self.artifacts.val_pairs_path),
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation_mode=truncation_mode,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
        )
        self.task = task or ControlledTaskSettings()
        self.progress = progress

    @property
    def heldout_prompts_path(self) -> Path:
        """Prompts seen neither in SFT nor in the pairs, for the end-of-training report."""
        return self.artifacts.heldout_prompts_path

    def prepare_data(self) -> None:
        """Build (or reuse) the task's stages, then tokenise the pairs."""
        build_controlled_task(self.artifacts.workdir, self.task, self.progress)
        super().prepare_data()
