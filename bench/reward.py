"""Judge throughput: 64 judge evaluations (3 tier-1 samples each, 192 requests) against a loopback
chat-completions server that answers after a fixed latency, with RIM's default concurrency vs one request
at a time through the same code path (max_workers=1).

    python bench/reward.py [--items 64] [--latency 0.05] [--repeats 3] [--workers 16]

Each configuration runs `repeats` times on a fresh RIM (so the cache never answers) and reports the
median wall time. The server is the scripted test server (tests/reward/server.py), so run this from a
checkout. What it measures is the client side: thread pool, HTTP round trips, prompt building, parsing.
It says nothing about a real judge model's latency or a provider's rate limits.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the loopback server lives in tests/

from atlas.reward import RIM, RIMConfig  # noqa: E402
from tests.reward.server import Reply, ScriptedServer, evaluation  # noqa: E402


def run(base_url: str, items: int, max_workers: int, repeats: int) -> tuple[float, int]:
    times, escalations = [], 0
    for _ in range(repeats):
        rim = RIM(RIMConfig(base_url=base_url, small_model="small", large_model="large",
                            active_judges=("accuracy",), max_workers=max_workers, cache=False))
        t0 = time.perf_counter()
        rewards = rim([f"question {k}" for k in range(items)], [f"answer {k}" for k in range(items)])
        times.append(time.perf_counter() - t0)
        rim.client.close()
        assert len(rewards) == items and rim.stats["calls"] == items * 3, rim.stats
        escalations += rim.stats["escalations"]
    assert escalations == 0, "the bench measures tier 1 only; no item should escalate"
    return statistics.median(times), items * 3


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[RIMConfig().max_workers, 4, 32],
                        help="max_workers settings to compare against sequential (the first is the default)")
    args = parser.parse_args()

    def script(body, i):
        return Reply(evaluation(0.8, 0.1), delay=args.latency)

    with ScriptedServer(script, lifetime=600) as srv:
        seq, n = run(srv.base_url, args.items, 1, args.repeats)
        print(f"machine: {_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}")
        print(f"{args.items} judge evaluations x 3 samples = {n} requests, server latency {args.latency * 1e3:.0f} ms, "
              f"median of {args.repeats}")
        print(f"{'max_workers':>12} {'wall s':>8} {'req/s':>8} {'vs sequential':>14}")
        print(f"{1:>12} {seq:>8.3f} {n / seq:>8.1f} {1.0:>13.1f}x")
        for w in args.workers:
            t, _ = run(srv.base_url, args.items, w, args.repeats)
            print(f"{w:>12} {t:>8.3f} {n / t:>8.1f} {seq / t:>13.1f}x" + ("  (default)" if w == args.workers[0]
                                                                              else ""))


if __name__ == "__main__":
    main()
