"""How fast a registry change reaches another gateway: write to apply, through NOTIFY.

    python -m bench.notice_latency [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                   [--count 200]

A fresh schema; one `Registry` writes (as gateway "a": alternately a pin and a replica count,
one at a time) and one `ChangeFeed` listens (as gateway "b", its poll off). Each sample is
from just before the write call to the moment the feed hands the notice to its handler on
the event loop: the commit, PostgreSQL's delivery, the listener thread and the hop onto the
loop. A gateway's reconcile then reads the changed rows (a few ms more). Prints one JSON
line: median, p95 and max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from functools import partial
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from modelhost.gateway.changes import ChangeFeed
from modelhost.registry import Registry
from modelhost.registry.notices import Notice


async def measure(url: str, count: int) -> list[float]:
    registry = Registry(url, sender="a")
    registry.migrate()
    registry.ensure_prefix("p")
    registry.ensure_deployment("d")
    model = registry.get_or_create_model("p", "m", "d")
    registry.create_version(model.id, "k", {}, [])
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def apply(notice: Notice) -> None:
        if notice.kind in ("model", "deployment"):
            arrived.put_nowait(time.perf_counter())

    feed = ChangeFeed(url, "b", 0, apply)
    feed.start()
    await asyncio.to_thread(feed.connected.wait, 30)
    await asyncio.sleep(0.2)
    while not arrived.empty():  # the full reconcile after connecting is not a sample
        arrived.get_nowait()
    samples = []
    for i in range(count):
        write: partial[Any]
        flip = (i // 2) % 2 == 0  # every write changes something (no change: no notice)
        if i % 2:
            write = partial(registry.set_pinned_version, model.id, 1 if flip else None)
        else:
            write = partial(registry.update_deployment, "d", replicas=2 if flip else 3)
        started = time.perf_counter()
        await asyncio.to_thread(write)
        samples.append((await asyncio.wait_for(arrived.get(), 10) - started) * 1000)
    await feed.stop()
    registry.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    schema = f"mh_bench_{secrets.token_hex(4)}"
    admin = create_engine(args.url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        samples = asyncio.run(measure(url.render_as_string(hide_password=False), args.count))
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    ordered = sorted(samples)
    print(
        json.dumps(
            {
                "samples": len(samples),
                "median_ms": round(statistics.median(samples), 2),
                "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
                "max_ms": round(ordered[-1], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
