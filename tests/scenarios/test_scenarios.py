"""Every folder here is a scenario: ``README`` (what it shows), ``cluster.json``,
``cmdlist.json`` and ``log.expect``, the log the simulator must produce (tests.sim).

The run is diffed with ``log.expect``; ``REGENERATE=1`` rewrites the files instead (read
the new log before committing it: the point is to review behaviour). A folder with a
``KNOWN_BUG`` file shows a bug in cloudd: it has no ``log.expect`` (a wrong log is not
frozen) and is an expected failure while the bug shows: an ``INVARIANT`` line, a line
matching one of its ``never: <regex>`` lines, or no line matching one of its
``must: <regex>`` lines. Once none of these shows, the test fails so that someone
reviews the log, writes ``log.expect`` and removes ``KNOWN_BUG``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

from tests.sim.simulator import run_scenario
from tests.sim.spec import load_scenario

HERE = Path(__file__).parent
SCENARIOS = sorted(p.name for p in HERE.iterdir() if (p / "cluster.json").exists())


def test_there_are_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 25


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name: str) -> None:
    folder = HERE / name
    assert (folder / "README").exists(), f"{name}: say in README what the scenario shows"
    spec, actions = load_scenario(folder)
    sim = run_scenario(spec, actions)
    log = sim.log_text()
    if (folder / "KNOWN_BUG").exists():
        assert not (folder / "log.expect").exists(), f"{name}: a known-bug scenario freezes no log"
        symptoms = bug_symptoms((folder / "KNOWN_BUG").read_text(), log)
        if not symptoms:
            pytest.fail(f"{name}: the known bug no longer shows: review the log, write log.expect, drop KNOWN_BUG\n{log}")
        pytest.xfail(f"known bug: {'; '.join(symptoms)}")
    assert not sim.violations, f"{name}: a VM ran on two nodes at once\n{log}"
    expect = folder / "log.expect"
    if os.environ.get("REGENERATE") == "1" or not expect.exists():
        expect.write_text(log)
        if os.environ.get("REGENERATE") != "1":
            pytest.fail(f"{name}: no log.expect yet: wrote it; review it")
        return
    wanted = expect.read_text()
    if log != wanted:
        diff = "".join(difflib.unified_diff(wanted.splitlines(True), log.splitlines(True), f"{name}/log.expect", f"{name}/log (this run)"))
        pytest.fail(f"{name}: the log differs from log.expect (REGENERATE=1 rewrites it after review)\n{diff}", pytrace=False)


def bug_symptoms(known_bug: str, log: str) -> list[str]:
    """What in ``log`` shows the bug that ``known_bug`` (a KNOWN_BUG file) describes."""
    lines = log.splitlines()
    symptoms = [line for line in lines if " INVARIANT: " in line]
    for rule in known_bug.splitlines():
        kind, _, pattern = rule.partition(": ")
        if kind == "never":
            symptoms += [line for line in lines if re.search(pattern, line)]
        elif kind == "must" and not any(re.search(pattern, line) for line in lines):
            symptoms.append(f"no line matches {pattern!r}")
    return symptoms
