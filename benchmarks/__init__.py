"""Benchmarks of ``userplane serve`` on PostgreSQL against a bare stack and pgbench.

Run ``python -m benchmarks`` (or ``python benchmarks/run.py``, or ``tox -e bench``);
``--help`` lists the options. See ``benchmarks/README.md``.
"""
