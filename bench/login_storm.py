"""Model latency while bad logins hammer the console: `python -m bench.login_storm`.

16 clients send wrong passwords for the real admin account as fast as they can (throttling
raised out of the way, so every attempt costs a full argon2 check); meanwhile one client
times `GET <model>?get_meta=true`, which never leaves the gateway. Before password checks
moved off the event loop this took 1.4-4 s per request; the target is under 50 ms.
Writes bench/results/login_storm.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from bench.overhead import serve_modelhost

STORM_CLIENTS = 16
SECONDS = 8.0


async def _storm(url: str, stop: asyncio.Event, counts: dict[int, int]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            r = await client.post(
                url + "/console/api/auth/",
                json={"email": "admin@modelhost.local", "password": "wrong-password"},
            )
            counts[r.status_code] = counts.get(r.status_code, 0) + 1


async def _probe(api_url: str, token: str, seconds: float) -> list[float]:
    times: list[float] = []
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            r = await client.get(api_url + "?get_meta=true", headers=headers)
            r.raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.02)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def _run(base: str, api_url: str, token: str) -> dict[str, object]:
    quiet = await _probe(api_url, token, 3.0)
    stop = asyncio.Event()
    counts: dict[int, int] = {}
    storm = [asyncio.create_task(_storm(base, stop, counts)) for _ in range(STORM_CLIENTS)]
    await asyncio.sleep(0.5)
    loaded = await _probe(api_url, token, SECONDS)
    stop.set()
    await asyncio.gather(*storm)
    return {"quiet": _summary(quiet), "during_storm": _summary(loaded), "logins": counts}


def main() -> None:
    env = {"MODELHOST_LOGIN_MAX_FAILURES": "1000000"}
    with serve_modelhost(1, extra_env=env) as target:
        base = target.url.split("/bench/")[0]
        assert target.token
        result = asyncio.run(_run(base, target.url, target.token))
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / "login_storm.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
