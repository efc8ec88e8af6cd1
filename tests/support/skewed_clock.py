"""Run a Python module with this process's wall clock off by some seconds, as on a machine whose
clock is wrong: ``python skewed_clock.py SECONDS -m MODULE ARGS...``. Only ``time.time`` and
``time.time_ns`` move (what request signing and its check read); monotonic clocks are untouched."""

from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    offset = float(sys.argv[1])
    if sys.argv[2] != "-m":
        sys.exit("usage: skewed_clock.py SECONDS -m MODULE [ARGS...]")
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + int(offset * 1e9)
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
