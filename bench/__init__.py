"""Benchmarks of fastapi-busproxy against plain FastAPI/websockets on the same stack.

Run ``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the options.
"""

import sys

if sys.version_info < (3, 11):  # asyncio.TaskGroup, asyncio.timeout, asyncio.Runner
    raise SystemExit("the benchmarks need Python 3.11 or newer (the library itself runs on 3.10)")
