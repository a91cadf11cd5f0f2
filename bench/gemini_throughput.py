"""Gemini provider throughput against the local REST stub, measured side by side in one run.

N calls at a fixed server latency through GeminiLLM (the real google-genai SDK): wall time against
the ideal N · latency / concurrency, then the same with a share of calls answered 429 (with a retry
hint of one latency), as ratios. "Floor" is the least any client could do with the requests the
server saw: each at one latency, each retry after one hint, spread over the workers. Pacing is set
high enough not to bind, so this measures the concurrency and retry machinery, not the quota.

    python bench/gemini_throughput.py --calls 200 --latency 0.3 --concurrency 8 --fail-share 0.2
"""

from __future__ import annotations

import argparse
import time

from fine_tune_dag_testkit.gemini_stub import GeminiStub, StubReply, failing_share
from results import Row, add_json_argument, report

from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.llm.gemini import GeminiLLM, GeminiSettings
from fine_tune_dag.core.llm.ratelimit import RetryPolicy

KEY = "bench-key-not-real"


def run(calls: int, latency: float, concurrency: int, responder=None) -> tuple[float, int]:
    """Wall seconds for `calls` requests, and how many requests the server saw."""
    with GeminiStub(responder, latency_s=latency) as stub:
        settings = GeminiSettings(
            base_url=stub.base_url,
            max_concurrency=concurrency,
            requests_per_minute=1_000_000,
            tokens_per_minute=1_000_000_000,
            retry=RetryPolicy(max_attempts=8, initial_backoff_s=latency / 2, max_backoff_s=4 * latency),
        )
        gemini = GeminiLLM(KEY, settings)
        requests = [LLMRequest((("user", f"question {i}"),), "bench", "1", 16) for i in range(calls)]
        started = time.perf_counter()
        results = gemini.complete(requests)
        elapsed = time.perf_counter() - started
    if any(r.status != "ok" for r in results):
        raise SystemExit("some calls did not succeed")
    return elapsed, len(stub.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3, help="server latency per call, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fail-share", type=float, default=0.2, help="share of calls answered 429")
    add_json_argument(parser)
    args = parser.parse_args()
    ideal = args.calls * args.latency / args.concurrency
    clean, clean_requests = run(args.calls, args.latency, args.concurrency)
    storm = failing_share(args.fail_share, StubReply(status=429, retry_delay_s=args.latency), seed=0)
    stormy, stormy_requests = run(args.calls, args.latency, args.concurrency, storm)
    print(
        f"Gemini throughput: {args.calls} calls, {args.latency * 1000:.0f} ms latency, "
        f"concurrency {args.concurrency}; ideal {ideal:.2f} s\n"
    )
    print(f"{'':<28}{'wall (s)':>10}{'requests':>10}{'wall / ideal':>14}{'wall / floor':>14}")
    rows = []
    for label, wall, made in (
        ("all answered", clean, clean_requests),
        (f"{args.fail_share:.0%} answered 429 first", stormy, stormy_requests),
    ):
        # the floor: every request made, plus the server's retry hint before each retry, spread over the workers
        floor = (made * args.latency + (made - args.calls) * args.latency) / args.concurrency
        print(f"{label:<28}{wall:>10.2f}{made:>10}{wall / ideal:>13.2f}×{wall / floor:>13.2f}×")
        rows.append(Row("gemini", f"wall, {label} (floor vs ours)", wall, floor, floor / wall, "s"))
    print()
    report(rows, args.json)


if __name__ == "__main__":
    main()
