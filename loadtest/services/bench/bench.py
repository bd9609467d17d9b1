"""Benchmark functions for the load-test scenarios (served by lightnode).

add    trivial work: measures the node's own overhead per request
spin   about 1 ms of pure-Python CPU work (holds the GIL, like real model code)
sleep  waits `ms` milliseconds without using CPU (an I/O-bound call)
"""

import time

# Loop iterations for ~1 ms of CPython 3.11 work on a typical x86-64 core.
SPIN_ITERATIONS = 20_000


def add(a: float = 0, b: float = 0) -> dict[str, float]:
    return {"sum": a + b}


def spin(iterations: int = SPIN_ITERATIONS) -> dict[str, int]:
    total = 0
    for i in range(iterations):
        total += i * i
    return {"iterations": iterations, "total": total}


def sleep(ms: float = 10) -> dict[str, float]:
    time.sleep(ms / 1000.0)
    return {"slept_ms": ms}
