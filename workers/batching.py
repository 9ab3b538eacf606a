"""How an inference worker sizes its batches: never wait in vain.

A worker that has requests and room starts on them at once, unless more are known to be coming:
the load board says that API processes have sent it requests it has not received yet (they are
in the sockets, microseconds away). Only then does it wait, until they arrive, the batch is full,
or `batch_timeout` has passed since the batch's first request. Requests that arrive while a
batch runs form the next one. So a lone client never waits for a timer, and under load batches
fill from what piled up during the previous predict.
"""

from __future__ import annotations

# A timer fires to the millisecond at best (libuv): a wait shorter than this is not worth one.
TIMER_SLACK = 0.001


def wait_for_more(
    pending: int, max_batch: int, in_transit: int, waited: float, batch_timeout: float
) -> float:
    """Seconds to wait for more requests before starting a batch of `pending`; 0.0: start now.

    in_transit: requests sent to this worker that it has not received (from the load board);
    waited: seconds since the oldest pending request arrived.
    """
    if pending >= max_batch or in_transit <= 0:
        return 0.0
    left = batch_timeout - waited
    return left if left > TIMER_SLACK else 0.0


# Requests a synchronous worker holds by default, running and waiting at it. More than one batch:
# with only what it runs (or 4), a fast model idled between requests while the next one made its
# way from the API process, and every answer woke it for one request (32 connections on 2 cores:
# 10.4k req/s with 4, 12.6k with 16, no better with 64). More makes a worker's death fail more
# requests, and lets a long request hold up those queued behind it while another worker is free:
# max_ongoing_requests lowers it for long-running models.
DEFAULT_WINDOW = 16


def capacity_and_window(
    max_batch: int, concurrent: bool, async_capacity: int, limit: int | None = None
) -> tuple[int, int]:
    """(capacity, window) a worker announces: requests it works on at once, and requests it
    holds at once (`limit`: the model's max_ongoing_requests), so that the next batch forms, and
    the next request is at hand, while one runs."""
    if concurrent:
        capacity = limit if limit is not None else max(async_capacity, max_batch)
        window = limit if limit is not None else capacity + max(max_batch, 4)
        return capacity, max(window, capacity)
    if limit is not None:
        return max_batch, max(limit, 1)
    return max_batch, max(DEFAULT_WINDOW, 2 * max_batch)
