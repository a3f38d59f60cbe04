"""A run's identity: its manifest (:mod:`~lit_align.identity.manifest`), written into each checkpoint with a checksum
of its weights (:mod:`~lit_align.identity.checkpoints`, :class:`RunIdentity`), and checked before a resume
(:mod:`~lit_align.identity.resume`) and across processes."""

from lit_align.identity.callback import ProcessesDisagree, RunIdentity
from lit_align.identity.checkpoints import DamagedCheckpoint, verify
from lit_align.identity.manifest import run_manifest
from lit_align.identity.resume import ResumeRefused, checkpoint_to_resume

__all__ = ["DamagedCheckpoint", "ProcessesDisagree", "ResumeRefused", "RunIdentity", "checkpoint_to_resume",
           "run_manifest", "verify"]
