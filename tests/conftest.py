import sys
from pathlib import Path

# Test modules import their shared helpers as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture(autouse=True)
def _data_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trichat serve` keeps its store in the user's data directory unless
    told otherwise: in the tests (and the servers they start), a temporary
    one, never the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "data"))
