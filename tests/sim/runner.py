"""Run one scenario folder and print its log: ``python -m tests.sim.runner tests/scenarios/<name>``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tests.sim.simulator import run_scenario
from tests.sim.spec import load_scenario


def scenario_log(folder: Path) -> str:
    spec, actions = load_scenario(folder)
    return run_scenario(spec, actions).log_text()


def main(argv: list[str]) -> int:
    """``-v`` also shows cloudd's own log records (on stderr)."""
    logging.basicConfig(level=logging.INFO if "-v" in argv else logging.CRITICAL, format="%(name)s: %(message)s")
    for folder in [a for a in argv if a != "-v"] or sys.exit("usage: python -m tests.sim.runner [-v] <scenario folder>..."):
        sys.stdout.write(scenario_log(Path(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
