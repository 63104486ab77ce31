"""Load check of `reficr serve`: N concurrent clients for T seconds against a running server on this machine.

    reficr serve --dataset redial --port 8000 &            # (tests: the tiny profile's run, --root <its repo>)
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 8 --seconds 30 --out bench/results-serve-load.json

Each client is a thread with its own keep-alive HTTP connection (standard library only) that posts conversations
from a small fixed set to ``/v1/recommend`` (``force_recommend`` on by default: every turn runs the whole
workflow), one request after another, until the time is up; a request already sent when time runs out is waited
for and counted. Reports requests/s, latency p50/p95/max (ms) and errors (any non-200 answer or failed
connection), and writes them as JSON with ``/healthz``'s answer. Only loopback addresses are accepted: the
check never sends traffic off this machine.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import os
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

CONVERSATIONS = [
    [{"speaker": "seeker", "text": "Hi! I loved Superbad and The Hangover. Any other comedies?"}],
    [{"speaker": "seeker", "text": "I'm in the mood for a scary movie tonight."},
     {"speaker": "recommender", "text": "Do you like older horror films like The Shining?"},
     {"speaker": "seeker", "text": "Yes! Something like that, maybe with ghosts."}],
    [{"speaker": "seeker", "text": "Can you suggest an animated film for my kids? They liked Frozen (2013)."}],
    [{"speaker": "seeker", "text": "hello"}, {"speaker": "recommender", "text": "Hi! What kind of movies do you like?"},
     {"speaker": "seeker", "text": "Action movies with car chases, like Drive (2011) or Baby Driver (2017)."}],
]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def loopback_only(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"{url}: expected http://HOST:PORT")
    host, port = parts.hostname, parts.port or 80
    if not all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, port)):
        raise SystemExit(f"{url}: not a loopback address; this check only loads servers on this machine")
    return host, port


def client(host: str, port: int, index: int, stop_at: float, force: bool, timeout: float,
           latencies: list[float], errors: list[str]) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = 0
    while time.monotonic() < stop_at:
        body = json.dumps({"context": CONVERSATIONS[(index + sent) % len(CONVERSATIONS)], "force_recommend": force})
        sent += 1
        start = time.perf_counter()
        try:
            connection.request("POST", "/v1/recommend", body=body, headers={"content-type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200 or "response" not in json.loads(payload):
                errors.append(f"{response.status}: {payload[:200]!r}")
                continue
        except (OSError, http.client.HTTPException, ValueError) as err:
            errors.append(f"{type(err).__name__}: {err}")
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
            continue
        latencies.append((time.perf_counter() - start) * 1000)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-force", action="store_true", help="let dialogue management decide whether to recommend")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    parser.add_argument("--out", type=Path, default=Path("bench/results-serve-load.json"))
    args = parser.parse_args()
    host, port = loopback_only(args.url)
    probe = http.client.HTTPConnection(host, port, timeout=30)
    probe.request("GET", "/healthz")
    health = json.loads(probe.getresponse().read())
    probe.close()

    latencies: list[float] = []
    errors: list[str] = []
    start = time.monotonic()
    stop_at = start + args.seconds
    threads = [threading.Thread(target=client, args=(host, port, i, stop_at, not args.no_force, args.timeout, latencies, errors))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start

    result = {
        "url": args.url, "clients": args.clients, "seconds": args.seconds, "elapsed_s": round(elapsed, 2),
        "force_recommend": not args.no_force, "requests": len(latencies), "errors": len(errors),
        "requests_per_s": round(len(latencies) / elapsed, 3),
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "max": round(max(latencies), 1), "mean": round(statistics.fmean(latencies), 1)} if latencies else None,
        "error_samples": errors[:5],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "server": health,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    latency = result["latency_ms"] or {}
    print(f"{args.clients} clients x {args.seconds:.0f} s: {result['requests']} requests, {result['requests_per_s']} req/s, "
          f"p50 {latency.get('p50')} ms, p95 {latency.get('p95')} ms, {len(errors)} errors -> {args.out}")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
