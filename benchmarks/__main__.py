"""``python -m benchmarks``: the whole benchmark run."""

from benchmarks.harness import main

raise SystemExit(main())
