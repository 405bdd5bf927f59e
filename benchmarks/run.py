"""``python benchmarks/run.py``: the same as ``python -m benchmarks``, from a checkout."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    """Make the checkout importable when run as a script, then run the benchmark."""
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.harness import main as run

    return run()


if __name__ == "__main__":
    raise SystemExit(main())
