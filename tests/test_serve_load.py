"""The app's queue under load: 8 concurrent gradio_client requests (8 sessions, as 8 people) are all answered with
their own results, at most `concurrency_limit` of them use the model at once, they start in the order they arrived,
and a request that finds the queue full is refused with a message (nothing is dropped silently)."""

import threading
import time

import pytest
from app_server import running_app, tiny_model_folder
from gradio_client import Client
from gradio_client.utils import Status

from training.app import MMARAppEngine

CONCURRENCY_LIMIT, MAX_QUEUE_SIZE = 2, 6  # 2 running + 6 waiting = the 8 concurrent requests


class GatedEngine(MMARAppEngine):
    """The real engine, recording when each request starts and holding it at a gate until the test opens it, so that
    the queue is really full while the test looks at it."""

    def __init__(self, model, processor, scheduler):
        super().__init__(model, processor, scheduler)
        self.gate, self.lock = threading.Event(), threading.Lock()
        self.started, self.active, self.most_active = [], 0, 0

    def generate(self, prompt, settings, **kwargs):
        with self.lock:
            self.started.append(settings.seed)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            assert self.gate.wait(timeout=120), "the test never opened the gate"
            return super().generate(prompt, settings, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_eight_concurrent_requests_are_all_answered_in_order_within_the_limits(tmp_path):
    loaded = MMARAppEngine.from_folder(tiny_model_folder(tmp_path / "tiny"))
    engine = GatedEngine(loaded.model, loaded.processor, loaded.scheduler)
    with running_app(engine=engine, concurrency_limit=CONCURRENCY_LIMIT, max_queue_size=MAX_QUEUE_SIZE) as (url, _):
        clients = [Client(url, verbose=False) for _ in range(9)]
        jobs = []
        for i, client in enumerate(clients[:8]):
            job = client.submit("a handwritten seven", 2, 100 + 2 * i, 3.0, 4, 5, 1.0, api_name="/generate")
            # One at a time into the queue, so that the arrival order is known.
            wait_for(lambda: job.status().code not in (Status.STARTING, Status.JOINING_QUEUE), f"request {i} queued")
            jobs.append(job)
        wait_for(lambda: len(engine.started) == CONCURRENCY_LIMIT, "the first requests to start")
        waiting = jobs[CONCURRENCY_LIMIT:]
        assert [job.status().code for job in waiting] == [Status.IN_QUEUE] * MAX_QUEUE_SIZE
        # The queue's own order, as it reports each waiting request's place: first come, first placed.
        wait_for(lambda: [job.status().rank for job in waiting] == list(range(MAX_QUEUE_SIZE)), "queue places")

        overflow = clients[8].submit("a handwritten three", 1, 999, 3.0, 4, 5, 1.0, api_name="/generate")
        with pytest.raises(Exception, match="(?i)queue is full"):
            overflow.result(timeout=60)

        engine.gate.set()
        results = [job.result(timeout=120) for job in jobs]

    # Every request answered with its own images, none lost, none mixed up.
    assert [seeds for _, seeds in results] == [f"{100 + 2 * i}, {101 + 2 * i}" for i in range(8)]
    assert all(len(gallery) == 2 for gallery, _ in results)
    # Started in arrival order: the queue hands requests out first come, first served; two handed out at the same
    # moment (when both running requests finish together) may enter the model in either order.
    arrival = [100 + 2 * i for i in range(8)]
    assert engine.started[:CONCURRENCY_LIMIT] == arrival[:CONCURRENCY_LIMIT]
    assert all(abs(engine.started.index(seed) - i) < CONCURRENCY_LIMIT for i, seed in enumerate(arrival))
    assert engine.most_active == CONCURRENCY_LIMIT  # the limit was reached and never exceeded
    assert 999 not in engine.started
