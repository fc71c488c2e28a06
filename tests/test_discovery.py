"""The discovery seam: Endpoint, delivery rules of BaseDiscovery, loop delivery, close, URIs, registry."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from resilience.discovery import (
    BaseDiscovery,
    Discovery,
    Endpoint,
    LoopCallback,
    StaticDiscovery,
    Subscription,
    discovery_from_uri,
    in_loop,
    known_schemes,
    register_scheme,
    subscribe_in_loop,
    unregister_scheme,
)
from resilience.discovery import registry as registry_module

WAIT = 5.0  # generous bound for things that must happen; never reached when the code is right
GRACE = 0.05  # time given to something that must NOT happen, to show itself if it would


def eps(*ports: int, host: str = "10.0.0.1") -> list[Endpoint]:
    return [Endpoint(f"{host}:{port}") for port in ports]


def ports(endpoints: Sequence[Endpoint]) -> list[int]:
    return [e.port for e in endpoints]


def in_thread(*steps: Callable[[], Any]) -> tuple[threading.Thread, threading.Event, list[Any]]:
    """Run ``steps`` in order in a daemon thread; the event is set when done, the list gets the last result."""
    done = threading.Event()
    result: list[Any] = []

    def run() -> None:
        value = None
        for step in steps:
            value = step()
        result.append(value)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, result


class Recorder:
    """A callback that records the port lists it receives and the thread it ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[list[int]] = []
        self.threads: list[int] = []
        self.got = threading.Event()

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        with self.lock:
            self.calls.append(ports(endpoints))
            self.threads.append(threading.get_ident())
        self.got.set()


# -- Endpoint ------------------------------------------------------------------------------


def test_endpoint_keeps_its_old_constructor_forms() -> None:
    plain = Endpoint("10.0.0.1:80")
    labelled = Endpoint("10.0.0.1:80", {"version": "2"})
    assert (plain.zone, plain.weight, dict(plain.metadata)) == (None, 1, {})
    assert labelled.metadata == {"version": "2"}
    assert (Endpoint("[::1]:50051").host, Endpoint("[::1]:50051").port) == ("::1", 50051)
    assert str(plain) == "10.0.0.1:80"


def test_endpoint_compares_and_hashes_by_address_only() -> None:
    a = Endpoint("h:1", {"k": "v"}, zone="eu-1", weight=5)
    b = Endpoint("h:1")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert not a.same_as(b)
    assert a.same_as(Endpoint("h:1", {"k": "v"}, zone="eu-1", weight=5))
    assert a != Endpoint("h:2", {"k": "v"}, zone="eu-1", weight=5)


@pytest.mark.parametrize("weight", [1, 2, 1_000_000])
def test_endpoint_weight_in_range(weight: int) -> None:
    assert Endpoint("h:1", weight=weight).weight == weight


@pytest.mark.parametrize("weight", [0, -1, 1_000_001, True, 1.5, "3"])
def test_endpoint_weight_out_of_range(weight: Any) -> None:
    with pytest.raises(ValueError, match=r"weight must be an int in \[1, 1000000\], got"):
        Endpoint("h:1", weight=weight)


@pytest.mark.parametrize("zone", ["", 3])
def test_endpoint_bad_zone(zone: Any) -> None:
    with pytest.raises(ValueError, match="zone must be a non-empty string or None"):
        Endpoint("h:1", zone=zone)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("host", "host:port"),
        (":80", "host:port"),
        ("h:0", r"port in \[1, 65535\]"),
        ("h:65536", r"port in \[1, 65535\]"),
        ("h:８０", r"port in \[1, 65535\]"),  # noqa: RUF001 - non-ASCII digits are not a port
        ("h:", r"port in \[1, 65535\]"),
        ("::1:80", "without brackets"),
        ("[::1:80", "malformed bracketed"),
        ("[]:80", "malformed bracketed"),
        ("a b:80", "not allowed"),
        ("a,b:80", "not allowed"),
    ],
)
def test_endpoint_bad_address(address: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Endpoint(address)


def test_endpoint_json_round_trip() -> None:
    endpoint = Endpoint("[::1]:50051", {"version": "1.2"}, zone="eu-west-1a", weight=40)
    data = endpoint.to_dict()
    assert data == {"address": "[::1]:50051", "zone": "eu-west-1a", "weight": 40, "metadata": {"version": "1.2"}}
    back = Endpoint.from_dict(json.loads(json.dumps(data)))
    assert back.same_as(endpoint)
    assert Endpoint.from_dict({"address": "h:1"}).same_as(Endpoint("h:1"))
    assert Endpoint.from_dict({"address": "h:1", "zone": None, "metadata": None}).same_as(Endpoint("h:1"))
    # Keys from a newer registrar are ignored rather than making the instance unusable.
    assert Endpoint.from_dict({"address": "h:1", "priority": 3}).same_as(Endpoint("h:1"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"zone": "a"}, "'address' is missing"),
        ({"address": 80}, "'address' must be a string"),
        ({"address": "h"}, "'address' must be 'host:port'"),
        ({"address": "h:1", "weight": "3"}, r"'weight' must be an int in \[1, 1000000\], got '3'"),
        ({"address": "h:1", "weight": True}, "'weight' must be an int"),
        ({"address": "h:1", "weight": 0}, "'weight' must be an int"),
        ({"address": "h:1", "zone": 5}, "'zone' must be a non-empty string or null"),
        ({"address": "h:1", "metadata": ["a"]}, "'metadata' must be an object of strings"),
        ({"address": "h:1", "metadata": {"a": 1}}, "'metadata' must map strings to strings, got 'a': 1"),
    ],
)
def test_endpoint_from_dict_errors(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint.from_dict(data)


# -- subscribing and publishing -------------------------------------------------------------


def test_static_discovery_keeps_working_as_before() -> None:
    d = StaticDiscovery({"orders": ["10.0.0.1:1", Endpoint("10.0.0.1:2")]})
    assert isinstance(d, Discovery)
    assert ports(d.endpoints("orders")) == [1, 2]
    assert d.endpoints("nobody") == ()
    assert d.services() == ["orders"]
    d.set("users", ["10.0.0.2:3"])
    assert d.services() == ["orders", "users"]
    with pytest.raises(TypeError, match="got the string"):
        StaticDiscovery({"orders": "10.0.0.1:1"})
    with pytest.raises(TypeError, match="got the string"):
        d.set("orders", "10.0.0.1:1")


def test_subscribe_delivers_the_current_list_first_then_changes() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    rec = Recorder()
    d.subscribe("orders", rec)
    assert rec.calls == [[1]]  # before subscribe returned
    d.set("orders", eps(1, 2))
    assert rec.calls == [[1], [1, 2]]
    unknown = Recorder()
    d.subscribe("nobody", unknown)
    assert unknown.calls == [[]]
    quiet = Recorder()
    d.subscribe("orders", quiet, initial=False)
    assert quiet.calls == []
    d.set("orders", eps(3))
    assert quiet.calls == [[3]]


def test_versions_count_changes_and_identical_lists_are_not_changes() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    rec = Recorder()
    d.subscribe("orders", rec, initial=False)
    assert (d.version("orders"), d.version("nobody")) == (1, 0)
    d.set("orders", eps(1))
    assert d.version("orders") == 1 and rec.calls == []
    d.set("orders", [Endpoint("10.0.0.1:1", weight=3)])  # same address, another weight: a change
    assert d.version("orders") == 2 and rec.calls == [[1]]
    d.set("orders", [])
    assert d.version("orders") == 3 and rec.calls == [[1], []]
    d.set("users", eps(9))
    assert (d.version("orders"), d.version("users")) == (3, 1)


def test_changed_returns_at_once_when_newer_and_waits_otherwise() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    assert d.changed("orders", 0, timeout=0) == 1
    assert d.changed("orders", 1, timeout=0) == 1  # timed out: not newer
    thread, done, result = in_thread(lambda: d.changed("orders", 1, timeout=60))
    assert not done.wait(GRACE)
    d.set("users", eps(2))  # another service does not wake it for good
    assert not done.wait(GRACE)
    d.set("orders", eps(3))
    assert done.wait(WAIT) and result == [2]
    thread.join(WAIT)


def test_changed_is_woken_by_close() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    thread, done, result = in_thread(lambda: d.changed("orders", 1, timeout=None))
    assert not done.wait(GRACE)
    d.close()
    assert done.wait(WAIT) and result == [1]
    thread.join(WAIT)


def test_callbacks_run_outside_any_lock() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    other_thread_ok: list[bool] = []

    def callback(endpoints: Sequence[Endpoint]) -> None:
        if ports(endpoints) != [2]:
            return

        # Another thread uses the discovery while this callback runs: it must not block.
        def use() -> None:
            d.set("users", eps(7))
            unsubscribe = d.subscribe("orders", lambda e: None)
            unsubscribe()
            d.endpoints("orders")
            d.changed("users", 0, timeout=0)

        thread, done, _ = in_thread(use)
        other_thread_ok.append(done.wait(WAIT))
        thread.join(WAIT)

    d.subscribe("orders", callback)
    d.set("orders", eps(2))
    assert other_thread_ok == [True]


def test_a_publish_from_inside_a_callback_is_delivered_after_it_in_order() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    first, second = Recorder(), Recorder()
    depth = [0]
    max_depth = [0]

    def chaining(endpoints: Sequence[Endpoint]) -> None:
        depth[0] += 1
        max_depth[0] = max(max_depth[0], depth[0])
        first(endpoints)
        if ports(endpoints) == [2]:
            d.set("orders", eps(3))  # nested publish: delivered once this callback returns
            assert first.calls[-1] == [2]
        depth[0] -= 1

    d.subscribe("orders", chaining)
    d.subscribe("orders", second)
    d.set("orders", eps(2))
    assert first.calls == [[1], [2], [3]]
    assert second.calls == [[1], [3]]  # [2] was replaced by [3] before its turn came
    assert max_depth == [1]  # never re-entered


def test_a_raising_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    d = StaticDiscovery({"orders": eps(1)})

    def broken(endpoints: Sequence[Endpoint]) -> None:
        raise RuntimeError("boom")

    rec = Recorder()
    with caplog.at_level(logging.ERROR, logger="resilience.discovery"):
        d.subscribe("orders", broken)
        d.subscribe("orders", rec)
        d.set("orders", eps(2))
    assert rec.calls == [[1], [2]]
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2  # the initial delivery and the change
    assert failures[0].exc_info is not None and "boom" in str(failures[0].exc_info[1])


def test_unsubscribe_stops_deliveries_and_is_idempotent() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    rec = Recorder()
    unsubscribe = d.subscribe("orders", rec)
    unsubscribe()
    unsubscribe()
    d.set("orders", eps(2))
    assert rec.calls == [[1]]


def test_unsubscribe_waits_for_a_callback_running_in_another_thread() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    entered, release = threading.Event(), threading.Event()
    returned = [False]
    calls = Recorder()

    def slow(endpoints: Sequence[Endpoint]) -> None:
        calls(endpoints)
        if ports(endpoints) == [2]:
            entered.set()
            release.wait(WAIT)
            returned[0] = True

    unsubscribe = d.subscribe("orders", slow)
    _, published, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert entered.wait(WAIT)
    seen_at_return: list[bool] = []
    _, unsubscribed, _ = in_thread(unsubscribe, lambda: seen_at_return.append(returned[0]))
    assert not unsubscribed.wait(GRACE)  # blocked while the callback runs
    release.set()
    assert unsubscribed.wait(WAIT) and published.wait(WAIT)
    assert seen_at_return == [True]
    d.set("orders", eps(3))
    assert calls.calls == [[1], [2]]


def test_unsubscribe_from_inside_the_callback_returns_at_once() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    holder: list[Subscription] = []
    rec = Recorder()

    def once(endpoints: Sequence[Endpoint]) -> None:
        rec(endpoints)
        if ports(endpoints) == [2]:
            holder[0]()

    holder.append(d.subscribe("orders", once))
    _, done, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert done.wait(WAIT)
    d.set("orders", eps(3))
    assert rec.calls == [[1], [2]]


def test_unsubscribed_by_another_callback_of_the_same_publish_is_not_called() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    victim = Recorder()
    holder: list[Subscription] = []

    def killer(endpoints: Sequence[Endpoint]) -> None:
        if ports(endpoints) == [2]:
            holder[0]()

    d.subscribe("orders", killer)
    holder.append(d.subscribe("orders", victim))
    d.set("orders", eps(2))
    assert victim.calls == [[1]]


def test_a_publish_during_the_initial_delivery_waits_its_turn() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    entered, release = threading.Event(), threading.Event()
    rec = Recorder()

    def slow_first(endpoints: Sequence[Endpoint]) -> None:
        rec(endpoints)
        if ports(endpoints) == [1]:
            entered.set()
            release.wait(WAIT)

    subscriber, subscribed, _ = in_thread(lambda: d.subscribe("orders", slow_first))
    assert entered.wait(WAIT)
    _, published, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert published.wait(WAIT)  # the publisher does not wait for a busy subscriber...
    assert rec.calls == [[1]]  # ...nor call it alongside its initial delivery
    release.set()
    assert subscribed.wait(WAIT)
    assert rec.calls == [[1], [2]]  # delivered by the subscribing thread, before subscribe returned
    assert set(rec.threads) == {subscriber.ident}


def test_a_subscriber_added_during_a_publish_sees_the_newest_list_exactly_once() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    entered, release = threading.Event(), threading.Event()

    def blocking(endpoints: Sequence[Endpoint]) -> None:
        if ports(endpoints) == [2]:
            entered.set()
            release.wait(WAIT)

    d.subscribe("orders", blocking)
    _, published, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert entered.wait(WAIT)  # the publish of [2] is running
    late = Recorder()
    d.subscribe("orders", late)
    release.set()
    assert published.wait(WAIT)
    assert late.calls == [[2]]


def test_never_concurrent_per_subscriber_with_many_publishers() -> None:
    d = StaticDiscovery()
    publishers, rounds = 4, 150
    lock = threading.Lock()
    inside = [0]
    overlaps = [0]
    received: list[list[int]] = []

    def callback(endpoints: Sequence[Endpoint]) -> None:
        with lock:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
            received.append(ports(endpoints))
        time.sleep(0)  # let other threads run while inside
        with lock:
            inside[0] -= 1

    d.subscribe("orders", callback, initial=False)
    start = threading.Barrier(publishers)

    def publish(k: int) -> None:
        start.wait(WAIT)
        for i in range(rounds):
            d.set("orders", [Endpoint(f"10.0.{k}.1:{i + 1}")])

    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads)
    assert overlaps == [0]
    assert received[-1] == ports(d.endpoints("orders"))  # the newest list was delivered last


def test_each_publishers_lists_arrive_in_its_order() -> None:
    d = StaticDiscovery()
    publishers, rounds = 3, 150
    received: list[Endpoint] = []
    lock = threading.Lock()

    def callback(endpoints: Sequence[Endpoint]) -> None:
        with lock:
            received.extend(endpoints)
        time.sleep(0)

    d.subscribe("orders", callback, initial=False)
    start = threading.Barrier(publishers)

    def publish(k: int) -> None:
        start.wait(WAIT)
        for i in range(rounds):
            d.set("orders", [Endpoint(f"10.0.{k}.1:{i + 1}")])

    threads = [threading.Thread(target=publish, args=(k,), daemon=True) for k in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads)
    for k in range(publishers):
        mine = [e.port for e in received if e.host == f"10.0.{k}.1"]
        assert mine == sorted(set(mine)), f"publisher {k}: {mine}"
    assert received[-1].same_as(d.endpoints("orders")[0])


def test_subscribers_joining_and_leaving_during_publishes_see_increasing_lists() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    stop = threading.Event()
    last = [1]

    def publish() -> None:
        i = 1
        while not stop.is_set() and i < 65_535:
            i += 1
            d.set("orders", eps(i))
            last[0] = i

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        for _ in range(100):
            rec = Recorder()
            after = [False]
            late = [False]

            def callback(endpoints: Sequence[Endpoint], rec: Recorder = rec, after: list[bool] = after,
                         late: list[bool] = late) -> None:  # fmt: skip
                time.sleep(0)  # widen the windows a race would need
                if after[0]:
                    late[0] = True
                rec(endpoints)

            unsubscribe = d.subscribe("orders", callback)
            assert len(rec.calls) >= 1  # the initial list, before subscribe returned
            time.sleep(0)
            unsubscribe()
            after[0] = True
            seen = [c[0] for c in rec.calls]
            assert seen == sorted(set(seen)), seen  # in order, never twice
            assert not late[0]
    finally:
        stop.set()
        publisher.join(WAIT)
    assert not publisher.is_alive()
    # Once quiet, a new subscriber gets the final list.
    rec = Recorder()
    d.subscribe("orders", rec)
    assert rec.calls == [[last[0]]]


def test_subscribe_during_publishes_ends_on_the_final_list() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    recorders: list[Recorder] = []
    rounds = 300
    go = threading.Barrier(2)

    def publish() -> None:
        go.wait(WAIT)
        for i in range(2, rounds + 1):
            d.set("orders", eps(i))

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    go.wait(WAIT)

    def yielding(rec: Recorder) -> Callable[[Sequence[Endpoint]], None]:
        def callback(endpoints: Sequence[Endpoint]) -> None:
            time.sleep(0)  # widen the windows a race would need
            rec(endpoints)

        return callback

    for _ in range(50):
        rec = Recorder()
        d.subscribe("orders", yielding(rec))
        recorders.append(rec)
        time.sleep(0)
    publisher.join(WAIT * 4)
    assert not publisher.is_alive()
    for rec in recorders:
        seen = [c[0] for c in rec.calls]
        assert seen == sorted(set(seen)), seen
        assert seen[-1] == rounds


# -- delivery into an event loop -------------------------------------------------------------


async def test_loop_delivery_runs_in_the_loop_and_coalesces_bursts() -> None:
    loop = asyncio.get_running_loop()
    d = StaticDiscovery({"orders": eps(1)})
    rec = Recorder()
    d.subscribe("orders", rec, loop=loop)
    assert rec.calls == []  # not in the subscribing call: in the loop
    await asyncio.sleep(0)
    assert rec.calls == [[1]]

    def burst() -> None:
        for i in (2, 3, 4):
            d.set("orders", eps(i))

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join(WAIT)  # the loop is blocked meanwhile: all three arrive before it runs
    for _ in range(3):
        await asyncio.sleep(0)
    assert rec.calls == [[1], [4]]
    assert set(rec.threads) == {threading.get_ident()}


async def test_loop_delivery_stops_at_unsubscribe_even_when_already_scheduled() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    rec = Recorder()
    unsubscribe = d.subscribe("orders", rec, loop=asyncio.get_running_loop())
    await asyncio.sleep(0)
    _, done, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert done.wait(WAIT)  # scheduled in the loop, not run yet
    unsubscribe()
    for _ in range(3):
        await asyncio.sleep(0)
    assert rec.calls == [[1]]


class MinimalDiscovery:
    """A Discovery that is not a BaseDiscovery: calls back on the publishing thread."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Sequence[Endpoint]], None]] = []
        self.current: tuple[Endpoint, ...] = ()

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        return self.current

    def subscribe(self, service: str, callback: Callable[[Sequence[Endpoint]], None]) -> Subscription:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def publish(self, endpoints: list[Endpoint]) -> None:
        self.current = tuple(endpoints)
        for callback in list(self.callbacks):
            callback(self.current)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_subscribe_in_loop_works_with_any_discovery() -> None:
    loop = asyncio.get_running_loop()
    minimal = MinimalDiscovery()
    assert isinstance(minimal, Discovery)
    rec = Recorder()
    unsubscribe = subscribe_in_loop(minimal, "orders", rec, loop)
    _, done, _ = in_thread(lambda: minimal.publish(eps(1)), lambda: minimal.publish(eps(2)))
    assert done.wait(WAIT)
    await asyncio.sleep(0)
    assert rec.calls == [[2]]
    minimal.publish(eps(3))
    unsubscribe()
    await asyncio.sleep(0)
    assert rec.calls == [[2]] and minimal.callbacks == []

    static_rec = Recorder()
    subscribe_in_loop(StaticDiscovery({"orders": eps(5)}), "orders", static_rec, loop)
    await asyncio.sleep(0)
    assert static_rec.calls == [[5]]


class StubLoop:
    """Records what is handed to ``call_soon_threadsafe``; the test runs it."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], None]] = []

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        self.scheduled.append(fn)

    def run(self) -> None:
        scheduled, self.scheduled = self.scheduled, []
        for fn in scheduled:
            fn()


def test_loop_callback_schedules_one_run_per_burst() -> None:
    loop = StubLoop()
    rec = Recorder()
    wrapper = in_loop(loop, rec)  # type: ignore[arg-type]
    for i in (1, 2, 3):
        wrapper(eps(i))
    assert len(loop.scheduled) == 1
    loop.run()
    assert rec.calls == [[3]]
    wrapper(eps(4))
    wrapper.cancel()
    loop.run()
    assert rec.calls == [[3]]
    wrapper(eps(5))
    assert loop.scheduled == []


def test_loop_callback_after_the_loop_closed_drops_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    rec = Recorder()
    wrapper = in_loop(loop, rec)
    with caplog.at_level(logging.WARNING, logger="resilience.discovery"):
        wrapper(eps(1))
    assert rec.calls == []
    assert any("event loop is closed" in r.getMessage() for r in caplog.records)


def test_loop_callback_cancel_waits_for_a_run_in_the_loop_thread() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        entered, release = threading.Event(), threading.Event()
        returned = [False]

        def slow(endpoints: Sequence[Endpoint]) -> None:
            entered.set()
            release.wait(WAIT)
            returned[0] = True

        wrapper = LoopCallback(loop, slow)
        wrapper(eps(1))
        assert entered.wait(WAIT)
        seen: list[bool] = []
        _, cancelled, _ = in_thread(wrapper.cancel, lambda: seen.append(returned[0]))
        assert not cancelled.wait(GRACE)
        release.set()
        assert cancelled.wait(WAIT) and seen == [True]
        wrapper(eps(2))  # after cancel: nothing is scheduled
        assert wrapper.cancelled
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()


def test_loop_callback_logs_a_raising_callback(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:

        def broken(endpoints: Sequence[Endpoint]) -> None:
            raise RuntimeError("boom")

        wrapper = in_loop(loop, broken)
        with caplog.at_level(logging.ERROR, logger="resilience.discovery"):
            wrapper(eps(1))
            loop.run_until_complete(asyncio.sleep(0))
        assert any("failed" in r.getMessage() for r in caplog.records)
    finally:
        loop.close()


# -- closing ---------------------------------------------------------------------------------


def test_after_close_the_last_snapshot_stays_and_publishes_are_ignored() -> None:
    d = StaticDiscovery({"orders": eps(1, 2)})
    rec = Recorder()
    d.subscribe("orders", rec)
    d.close()
    d.close()
    assert d.closed
    assert ports(d.endpoints("orders")) == [1, 2]
    d.set("orders", eps(3))
    assert ports(d.endpoints("orders")) == [1, 2] and d.version("orders") == 1
    assert rec.calls == [[1, 2]]
    assert d.changed("orders", 1, timeout=None) == 1  # does not wait once closed
    # Subscribing after close: the last snapshot once, and an unsubscriber that does nothing.
    late = Recorder()
    unsubscribe = d.subscribe("orders", late)
    assert late.calls == [[1, 2]]
    unsubscribe()
    quiet = Recorder()
    d.subscribe("orders", quiet, initial=False)
    assert quiet.calls == []


def test_close_waits_for_a_callback_running_in_another_thread() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    entered, release = threading.Event(), threading.Event()
    returned = [False]

    def slow(endpoints: Sequence[Endpoint]) -> None:
        if ports(endpoints) == [2]:
            entered.set()
            release.wait(WAIT)
            returned[0] = True

    d.subscribe("orders", slow)
    in_thread(lambda: d.set("orders", eps(2)))
    assert entered.wait(WAIT)
    seen: list[bool] = []
    _, closed, _ = in_thread(d.close, lambda: seen.append(returned[0]))
    assert not closed.wait(GRACE)
    release.set()
    assert closed.wait(WAIT) and seen == [True]


def test_close_from_inside_a_callback_does_not_deadlock() -> None:
    d = StaticDiscovery({"orders": eps(1)})
    d.subscribe("orders", lambda e: d.close() if ports(e) == [2] else None)
    _, done, _ = in_thread(lambda: d.set("orders", eps(2)))
    assert done.wait(WAIT) and d.closed


def test_context_managers_close() -> None:
    with StaticDiscovery({"orders": eps(1)}) as d:
        assert not d.closed
    assert d.closed and ports(d.endpoints("orders")) == [1]


async def test_async_context_manager_calls_aclose() -> None:
    class AsyncBackend(BaseDiscovery):
        def __init__(self) -> None:
            super().__init__()
            self.released = False

        async def aclose(self) -> None:
            await asyncio.sleep(0)  # an async resource
            self.released = True
            self.close()

    async with AsyncBackend() as backend:
        backend._publish("orders", eps(1))
    assert backend.released and backend.closed
    assert ports(backend.endpoints("orders")) == [1]

    async with StaticDiscovery({"orders": eps(1)}) as static:
        pass
    assert static.closed


def test_publish_checks_its_endpoints() -> None:
    class Backend(BaseDiscovery):
        pass

    backend = Backend()
    assert backend._publish("orders", eps(1)) is True
    assert backend._publish("orders", eps(1)) is False
    with pytest.raises(TypeError, match="must be Endpoint objects"):
        backend._publish("orders", ["10.0.0.1:1"])  # type: ignore[list-item]


# -- URIs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "service", "expected"),
    [
        ("static://127.0.0.1:5001,127.0.0.1:5002", "anything", ["127.0.0.1:5001", "127.0.0.1:5002"]),
        ("static://127.0.0.1:5001", "orders", ["127.0.0.1:5001"]),
        ("STATIC://h:1", "orders", ["h:1"]),
        ("static://[::1]:50051, [::1]:50052", "orders", ["[::1]:50051", "[::1]:50052"]),
        ("static:///orders=a:1,b:2;users=[::1]:3", "orders", ["a:1", "b:2"]),
        ("static:///orders=a:1,b:2;users=[::1]:3", "users", ["[::1]:3"]),
        ("static:///orders=a:1,b:2;users=[::1]:3", "billing", []),
        ("static:/// orders = a:1 ; pkg.Users = c:3", "pkg.Users", ["c:3"]),
    ],
)
def test_static_uri(uri: str, service: str, expected: list[str]) -> None:
    d = discovery_from_uri(uri)
    assert isinstance(d, StaticDiscovery)
    assert [e.address for e in d.endpoints(service)] == expected


def test_simple_static_uri_serves_every_name_and_set_overrides_one() -> None:
    d = discovery_from_uri("static://h:1")
    assert isinstance(d, StaticDiscovery)
    assert d.services() == []
    rec = Recorder()
    d.subscribe("orders", rec)
    d.set("orders", [Endpoint("h:2")])
    assert rec.calls == [[1], [2]]
    assert ports(d.endpoints("users")) == [1]
    assert StaticDiscovery.from_uri("static://h:1").endpoints("x") == (Endpoint("h:1"),)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("static://", "has no endpoints"),
        ("static://a:1,,b:2", "empty endpoint in the endpoint list"),
        ("static://a:1,", "empty endpoint"),
        ("static://a", "bad endpoint 'a'"),
        ("static://a:99999", r"bad endpoint 'a:99999'.*port in \[1, 65535\]"),
        ("static://::1:50051", "without brackets"),
        ("static://orders=a:1", "name services after a third slash: 'static:///orders="),
        ("static:///", "'' is not SERVICE=ENDPOINTS"),
        ("static:///orders", "'orders' is not SERVICE=ENDPOINTS"),
        ("static:///=a:1", "'=a:1' is not SERVICE=ENDPOINTS"),
        ("static:///orders=", "empty endpoint in service 'orders'"),
        ("static:///orders=a:1;", "'' is not SERVICE=ENDPOINTS"),
        ("static:///orders=a:1;orders=b:2", "service 'orders' is given twice"),
        ("static:///orders=a:1=b:2", "bad endpoint 'a:1=b:2' in service 'orders'"),
        ("static:///my/orders=a:1", "bad service name 'my/orders'"),
    ],
)
def test_bad_static_uri(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        discovery_from_uri(uri)
    assert repr(uri) in str(info.value)


def test_static_uri_takes_no_options() -> None:
    with pytest.raises(TypeError, match=r"no options, got \['zone'\]"):
        discovery_from_uri("static://h:1", zone="a")


@pytest.mark.parametrize("uri", ["127.0.0.1:5001", "://h:1", "static:h:1"])
def test_uri_without_a_scheme(uri: str) -> None:
    with pytest.raises(ValueError, match=r"must look like 'scheme://\.\.\.'.*known schemes: .*static"):
        discovery_from_uri(uri)


def test_unknown_scheme_names_it_and_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown discovery scheme 'consul' in 'consul://h:8500'; known schemes: .*static"
    ):
        discovery_from_uri("consul://h:8500")
    with pytest.raises(TypeError, match="must be a string"):
        discovery_from_uri(None)  # type: ignore[arg-type]


# -- the scheme registry ---------------------------------------------------------------------


@pytest.fixture
def scheme_cleanup() -> Iterator[list[str]]:
    added: list[str] = []
    yield added
    for scheme in added:
        unregister_scheme(scheme)


def test_subclass_keyword_registers_a_scheme(scheme_cleanup: list[str]) -> None:
    scheme_cleanup.append("memtest")

    class MemDiscovery(BaseDiscovery, scheme="memtest"):
        def __init__(self, uri: str, options: dict[str, Any]) -> None:
            super().__init__()
            self.uri = uri
            self.options = options

        @classmethod
        def from_uri(cls, uri: str, **options: Any) -> MemDiscovery:
            return cls(uri, options)

    assert MemDiscovery.schemes == ("memtest",)
    assert "memtest" in known_schemes()
    d = discovery_from_uri("MemTest://anything/here", prefix="/svc")
    assert isinstance(d, MemDiscovery)
    assert (d.uri, d.options) == ("MemTest://anything/here", {"prefix": "/svc"})

    class Child(MemDiscovery):  # no keyword: registers nothing more
        pass

    assert Child.schemes == ()
    assert isinstance(discovery_from_uri("memtest://x"), MemDiscovery)
    assert type(discovery_from_uri("memtest://x")) is MemDiscovery


def test_subclass_keyword_without_from_uri_is_refused() -> None:
    with pytest.raises(TypeError, match=r"registers scheme\(s\) \['nofactory'\] but does not define from_uri"):

        class NoFactory(BaseDiscovery, scheme="nofactory"):
            pass

    assert "nofactory" not in known_schemes()


def test_register_scheme_with_a_function(scheme_cleanup: list[str]) -> None:
    scheme_cleanup.extend(["fntest", "fntest+tls"])

    def factory(uri: str, **options: Any) -> Discovery:
        return StaticDiscovery(default=[uri.partition("://")[2]])

    register_scheme("fntest", factory)
    register_scheme("fntest", factory)  # the same factory again: fine
    register_scheme("fntest+tls", factory)
    assert ports(discovery_from_uri("fntest://h:7").endpoints("x")) == [7]

    def other(uri: str, **options: Any) -> Discovery:
        return StaticDiscovery()

    with pytest.raises(ValueError, match="'fntest' is already registered"):
        register_scheme("fntest", other)
    register_scheme("fntest", other, replace=True)
    assert discovery_from_uri("fntest://h:7").endpoints("x") == ()
    unregister_scheme("fntest")
    with pytest.raises(ValueError, match="unknown discovery scheme 'fntest'"):
        discovery_from_uri("fntest://h:7")


@pytest.mark.parametrize("scheme", ["", "Upper", "1abc", "a b", "a_b", "a://"])
def test_register_scheme_rejects_bad_names(scheme: str) -> None:
    with pytest.raises(ValueError, match="a discovery scheme must be lowercase letters"):
        register_scheme(scheme, StaticDiscovery.from_uri)


def test_a_factory_must_return_a_discovery(scheme_cleanup: list[str]) -> None:
    scheme_cleanup.append("badtest")
    not_a_discovery: Any = lambda uri, **options: object()  # noqa: E731 - a factory gone wrong
    register_scheme("badtest", not_a_discovery)
    with pytest.raises(TypeError, match=r"returned .* not a Discovery"):
        discovery_from_uri("badtest://x")


def test_lazy_scheme_imports_its_module_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme_cleanup: list[str]
) -> None:
    scheme_cleanup.append("lazytest")
    (tmp_path / "lazy_discovery_plugin.py").write_text(
        "from resilience.discovery import StaticDiscovery, register_scheme\n"
        "register_scheme('lazytest', lambda uri, **options: StaticDiscovery(default=['h:9']))\n"
    )
    (tmp_path / "broken_discovery_plugin.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry_module._LAZY, "lazytest", "lazy_discovery_plugin")
    monkeypatch.setitem(registry_module._LAZY, "brokentest", "broken_discovery_plugin")
    monkeypatch.setitem(registry_module._LAZY, "silenttest", "json")  # imports, registers nothing
    assert {"lazytest", "brokentest"} <= set(known_schemes())
    assert ports(discovery_from_uri("lazytest://").endpoints("x")) == [9]
    with pytest.raises(ValueError, match="'brokentest' needs broken_discovery_plugin, which cannot be imported"):
        discovery_from_uri("brokentest://")
    with pytest.raises(ValueError, match="'silenttest': json did not register it"):
        discovery_from_uri("silenttest://")


def test_discovery_protocol_needs_aclose() -> None:
    class OldStyle:
        def endpoints(self, service: str) -> Sequence[Endpoint]:
            return ()

        def subscribe(self, service: str, callback: Callable[[Sequence[Endpoint]], None]) -> Subscription:
            return lambda: None

        def close(self) -> None:
            pass

    assert not isinstance(OldStyle(), Discovery)
    assert isinstance(StaticDiscovery(), Discovery)
