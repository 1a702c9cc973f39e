from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster.harness import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh 3-node cluster for tests that kill or reshape it."""
    c = LocalCluster(tmp_path)
    try:
        yield c.init(3)
    finally:
        c.close()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node cluster shared by the tests of a module that do not break it."""
    c = LocalCluster(tmp_path_factory.mktemp("shared"), first_host=41)
    try:
        yield c.init(3)
    finally:
        c.close()
