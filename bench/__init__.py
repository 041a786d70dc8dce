"""Benchmarks of fastapi-busproxy against plain FastAPI/websockets on the same stack.

Run ``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the options. The
benchmarks need Python 3.11 or newer; :mod:`bench.relay`, which the tests share, runs on 3.10.
"""
