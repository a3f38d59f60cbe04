"""The repository carries what it reads: a clone with nothing beside it passes the README's commands.

The suite itself runs under :mod:`tests.outside_reads` (installed by ``conftest.py``), so any test that opens a
file beside the checkout fails, naming it; these tests show the guard fires, and scan what runs in subprocesses
(configs, tools) for paths that leave the repository."""

from __future__ import annotations

import gzip
import json
import re

import pytest
import yaml

from tests.conftest import HH_FILE
from tests.outside_reads import REPO, OutsideRepositoryError

SCANNED = ("lit_align", "tests", "tools", "configs")
GUARDS = {"test_self_contained.py", "outside_reads.py"}  # they name the parent folder on purpose
LEAVES_THE_ROOT = re.compile(r"(?<!\.)\.\./|parents\[\d+\]\.parent\b|\b(ROOT|REPO)\.parent\b")


def test_a_read_beside_the_repository_is_refused():
    with pytest.raises(OutsideRepositoryError, match="outside the repository"):
        open(REPO.parent / "a-sibling-project" / "pairs.jsonl", "rb")  # noqa: SIM115 (refused before any read)
    with open(REPO / "pyproject.toml", "rb") as handle:  # inside: fine
        assert handle.read(1)


def test_no_source_names_a_path_outside_the_repository():
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for folder in SCANNED
        for path in sorted((REPO / folder).rglob("*"))
        if path.suffix in {".py", ".yaml", ".yml", ".toml"} and path.name not in GUARDS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if LEAVES_THE_ROOT.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_relative_data_path_in_a_config_is_shipped():
    """A config's data file is in the repository, or made by a documented step under ``.cache/``."""
    for config in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(config.read_text()).get("data") or {}
        path = (data.get("init_args") or {}).get("path")
        if isinstance(path, str) and not path.startswith(".cache/"):
            assert (REPO / path).is_file(), f"{config.name}: data.path {path} is not in the repository"


def test_the_hh_file_ships_with_its_licence():
    assert HH_FILE.is_relative_to(REPO)
    assert "MIT License" in (HH_FILE.parent / "LICENSE-hh-rlhf").read_text()
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 2312 and set(rows[0]) == {"chosen", "rejected"}
