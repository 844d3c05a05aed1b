"""The pieces of the predict deadline, in-process: abandoned sync threads are counted and
make a runner wedged; the gateway channel's backstop and `forget` end a future and send
CANCEL (tests/faults/test_deadlines_and_cancel.py drives them through real servers)."""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import pytest

from modelhost.errors import PredictTimeout
from modelhost.supervision.channel import WorkerChannel
from modelhost.wire.protocol import Kind, encode
from modelhost.worker.loader import LoadedModel
from modelhost.worker.meta import ModelMeta
from modelhost.worker.runner import PythonModelRunner, WorkRequest

pytestmark = pytest.mark.anyio
META = ModelMeta(1, "m", "models/team", 1, "depl", "/tmp/cache", "/tmp/model", "pod", {})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_abandoned_sync_call_is_counted_until_its_thread_returns() -> None:
    release = threading.Event()
    entered = threading.Event()

    def predict(payload_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return {}

    runner = PythonModelRunner(LoadedModel(types.ModuleType("m"), predict, None, None), META, 1)
    task = asyncio.ensure_future(runner.handle(WorkRequest("POST", "", "", "", b"{}")))
    await asyncio.to_thread(entered.wait, 10)
    assert runner.wedged == ""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.abandoned == 1
    assert "all 1 predict threads" in runner.wedged
    release.set()
    for _ in range(200):
        if runner.abandoned == 0:
            break
        await asyncio.sleep(0.01)
    assert runner.abandoned == 0 and runner.wedged == ""
    await runner.stop()


class _Proto:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.transport = None

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)


def _channel() -> tuple[WorkerChannel, _Proto]:
    channel = WorkerChannel("/nonexistent.sock", lambda _h: None)
    proto = _Proto()
    channel._proto = proto  # type: ignore[assignment]
    channel.connected = True
    return channel, proto


async def test_forget_sends_cancel_and_ends_the_future_with_the_error() -> None:
    channel, proto = _channel()
    fut = channel.request("POST", "", "", "", b"{}")
    gone = RuntimeError("client gone")
    channel.forget(fut, gone)
    assert fut.exception() is gone
    assert proto.sent[-1] == encode(Kind.CANCEL, 1)
    assert channel.inflight == 0


async def test_the_backstop_fails_a_request_the_worker_never_answers() -> None:
    channel, proto = _channel()
    channel._state({"state": "ready", "deadline": 0.1})  # backstop: 0.1 + 1 + 0.01 s
    fut = channel.request("POST", "", "", "", b"{}")
    answered = channel.request("POST", "", "", "", b"{}")
    channel._on_frame(Kind.RESPONSE, 2, {"s": 200, "ct": "application/json"}, b"{}")
    with pytest.raises(PredictTimeout, match="MODELHOST_PREDICT_TIMEOUT_S"):
        await asyncio.wait_for(fut, 30)
    assert answered.result()[1] == b"{}"
    assert proto.sent[-1] == encode(Kind.CANCEL, 1)
