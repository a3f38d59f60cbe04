"""The built-in controlled-generation task as a source of preference pairs (:class:`ControlledTask`)."""

from __future__ import annotations

from pathlib import Path

from lit_align.data.sources import DataSource, PairSource
from lit_align.tasks.pipeline import ControlledTaskSettings, TaskArtifacts, build_controlled_task


class ControlledTask(PairSource):
    """Builds the task (corpus, tokenizer, SFT reference, oracle-labelled pairs; cached) in ``prepare``, then
    serves its train and val pairs and its tokenizer to :class:`~lit_align.data.PreferenceDataModule`::

        data:
          class_path: lit_align.data.PreferenceDataModule
          init_args:
            source:
              class_path: lit_align.tasks.ControlledTask
              init_args: {workdir: .cache/quickstart}
            max_length: 128
            max_prompt_length: 32
            batch_size: 32

    The work directory's layout is fixed (:class:`~lit_align.tasks.pipeline.TaskArtifacts`), so the policy can
    be configured with ``path: <workdir>/sft`` before the task is built: the module loads its policy in
    ``configure_model``, which runs after ``prepare_data``.

    Args:
        workdir: where the task's stages are built and cached.
        task: the task's settings (corpus size, model shape, SFT steps, sampling).
        progress: show progress bars while building the task.
    """

    def __init__(
        self, workdir: str = "runs/controlled_task", task: ControlledTaskSettings | None = None, progress: bool = True
    ) -> None:
        self.artifacts = TaskArtifacts(Path(workdir))
        self.task = task or ControlledTaskSettings()
        self.progress = progress
        self.tokenizer = str(self.artifacts.sft_dir)

    def __repr__(self) -> str:
        return f"ControlledTask({str(self.artifacts.workdir)!r})"

    @property
    def heldout_prompts_path(self) -> Path:
        """Prompts seen neither in SFT nor in the pairs, for the end-of-training report."""
        return self.artifacts.heldout_prompts_path

    def prepare(self) -> None:
        """Build (or reuse) the task's stages."""
        build_controlled_task(self.artifacts.workdir, self.task, self.progress)

    def parts(self) -> list[DataSource]:
        return [DataSource(str(self.artifacts.train_pairs_path), row_format="explicit")]

    def validation(self) -> DataSource:
        return DataSource(str(self.artifacts.val_pairs_path), row_format="explicit")

