"""Bounded HTTP load on a cdkd-ray endpoint: N concurrent clients, capped in requests and in time."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import Counter
from typing import Callable
from urllib.parse import urlparse

import numpy as np

from cdkd_ray.core.errors import CdkdError


def check_loopback(url: str) -> None:
    """Load generators here only aim at this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise CdkdError(f"refusing to send load to {url}: only loopback endpoints (127.0.0.1, localhost) are allowed")


def latency_stats(latencies: list[float], seconds: float) -> dict:
    if not latencies:
        return {"n": 0, "seconds": round(seconds, 3), "rps": 0.0, "p50_ms": None, "p99_ms": None}
    lat = np.asarray(latencies) * 1000
    return {"n": len(latencies), "seconds": round(seconds, 3), "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


async def drive_load(url: str, body: bytes, boxes: list[list[float]], concurrency: int, max_requests: int,
                     max_seconds: float, stop: Callable[[], bool] | None = None,
                     on_response: Callable[[], None] | None = None, content_type: str = "image/jpeg") -> dict:
    """POST /v1/keypoints from `concurrency` clients until max_requests, max_seconds or stop() is true."""
    import httpx

    check_loopback(url)
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise CdkdError("load needs concurrency >= 1, max_requests >= 1 and max_seconds > 0")
    latencies: list[float] = []
    statuses: Counter = Counter()
    issued = 0
    started = time.perf_counter()
    params = {"boxes": json.dumps(boxes)} if boxes else {}

    def more() -> bool:
        return issued < max_requests and time.perf_counter() - started < max_seconds and not (stop and stop())

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while more():
            issued += 1
            t = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/keypoints", content=body, params=params,
                                      headers={"content-type": content_type})
                statuses[r.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - t)
            if on_response:
                on_response()

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])
    seconds = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {**latency_stats(latencies, seconds), "sent": issued, "ok": ok, "failed": issued - ok,
            "statuses": {str(k): v for k, v in statuses.items()}}
