#!/usr/bin/env python3
"""Bursts: N copies of one command started at the same instant, each a
container that prints a line and exits. Reports how many succeeded (exit 0
and the line seen), and when each one's line came, counted from the burst's
start: the first, the median and the last. The last one's is the figure a
user waits for.

usage: bench-burst.py LABEL N EXPECTED COMMAND...
COMMAND's words may hold {i}, replaced by the copy's number (0..N-1)."""
import statistics
import subprocess
import sys
import threading
import time


def main():
    label, n, expected, template = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    seen = [None] * n
    codes = [None] * n
    errors = [""] * n

    def watch(i, proc, t0):
        for line in proc.stdout:
            if seen[i] is None and expected in line:
                seen[i] = time.monotonic() - t0
        errors[i] = proc.stderr.read()
        codes[i] = proc.wait()

    t0 = time.monotonic()
    procs = [subprocess.Popen([w.replace("{i}", str(i)) for w in template], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    threads = [threading.Thread(target=watch, args=(i, p, t0)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = time.monotonic() - t0
    ok = [seen[i] for i in range(n) if codes[i] == 0 and seen[i] is not None]
    line = f"{label}, {n} at once: {len(ok)} of {n} succeeded"
    if ok:
        line += (f"; output after {min(ok):.1f} s (first), {statistics.median(ok):.1f} s (median), "
                 f"{max(ok):.1f} s (last); all exited after {done:.1f} s")
    print(line, flush=True)
    failed = [i for i in range(n) if codes[i] != 0 or seen[i] is None]
    for i in failed[:3]:
        print(f"  copy {i}: exit {codes[i]}: {errors[i].strip()[-300:]}", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
