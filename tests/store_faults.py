"""Faults landed deterministically inside a ``lit-align precompute`` run in a child process (tests/test_artefacts.py).

- :class:`PauseInPredict` (``--trainer.callbacks+=tests.store_faults.PauseInPredict``): after the first predicted
  batch, write ``{folder}/paused`` and wait until ``{folder}/go`` exists, so a second run starts while the first
  one holds its store.
- ``python -m tests.store_faults <lit-align args>``: ``lit-align`` whose process kills itself (SIGKILL) as soon as
  the store's merged file is written under its temporary name, before it is renamed into place.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseInPredict(Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not (self.folder / "paused").exists():
            (self.folder / "paused").touch()
            deadline = time.monotonic() + 120
            while not (self.folder / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def _kill_after_writing_the_merged_store() -> None:
    import lit_align.files

    save_file = lit_align.files.save_file

    def save_then_die(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        if Path(filename).name == ".reference.safetensors.partial":
            os.kill(os.getpid(), signal.SIGKILL)

    lit_align.files.save_file = save_then_die


if __name__ == "__main__":
    _kill_after_writing_the_merged_store()
    from lit_align.cli import main

    main(sys.argv[1:])
