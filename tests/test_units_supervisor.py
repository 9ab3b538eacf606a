"""Fast in-process tests of the supervisor's pure logic: restart policy, pools, reconcile."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from ferryman.supervisor.devices import Device
from ferryman.supervisor.policy import RestartPolicy, StartHistory
from ferryman.supervisor.pools import CPU, Pool, Slot, SlotState
from ferryman.supervisor.reconcile import Drain, Start, converged, plan, slot_state
from ferryman.supervisor.registry import Child, ChildState, Role, Stop

GPU0 = Device("cuda:0", "0", "cuda:0")
GPU1 = Device("cuda:1", "1", "cuda:0")


class FakePopen:
    _pids = itertools.count(1000)

    def __init__(self) -> None:
        self.pid = next(self._pids)


def child(
    pool: Pool, slot: Slot, state: ChildState = ChildState.READY, gen: int | None = None
) -> Child:
    popen = FakePopen()
    c = Child(
        pool.role,
        pool.name,
        slot.index,
        slot.generation if gen is None else gen,
        f"{pool.name}.w{slot.index}.{popen.pid}",
        popen,  # type: ignore[arg-type]
        slot.device,
        0,
    )
    c.state = state
    return c


def make_pool(n: int, devices: list[Device] | None = None) -> tuple[Pool, itertools.count[int]]:
    gens = itertools.count(1)
    devs = devices or [CPU]
    pool = Pool(Role.WORKER, "m", RestartPolicy(), devs)
    pool.relayout(devs, n, lambda: next(gens))
    return pool, gens


# -- restart policy ------------------------------------------------------------------------------


def test_a_child_that_served_is_replaced_at_once_every_time() -> None:
    policy = RestartPolicy(max_restarts=3, window=60)
    h = StartHistory()
    for i in range(20):
        assert policy.after_exit(h, now=float(i), ready_for=30.0) == 0.0
    assert not h.failures


def test_deaths_before_ready_back_off_then_fail() -> None:
    policy = RestartPolicy(max_restarts=4, window=60, base=0.1, cap=30)
    h = StartHistory()
    delays = [policy.after_exit(h, now=float(i), ready_for=None) for i in range(3)]
    assert all(d is not None and d > 0 for d in delays)
    assert delays[0] < delays[1] < delays[2]  # exponential (jitter is +-20%)
    assert policy.after_exit(h, now=3.0, ready_for=None) is None  # the 4th within the window


def test_a_death_just_after_ready_counts_as_a_failure_to_start() -> None:
    policy = RestartPolicy(max_restarts=2, window=60, grace=1.0)
    h = StartHistory()
    assert policy.after_exit(h, now=0.0, ready_for=0.2) > 0  # type: ignore[operator]
    assert policy.after_exit(h, now=1.0, ready_for=0.2) is None


def test_a_child_that_answered_requests_is_replaced_at_once_however_soon_it_died() -> None:
    """Killed (OOM, kill -9) half a second after ready, having served: not a failure to start,
    however often (found by tests/test_chaos.py: such a slot used to end up `failed`)."""
    policy = RestartPolicy(max_restarts=2, window=60, grace=1.0)
    h = StartHistory()
    for i in range(10):
        assert policy.after_exit(h, now=float(i), ready_for=0.5, served=True) == 0.0
    assert not h.failures


def test_failures_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_restarts=2, window=10)
    h = StartHistory()
    assert policy.after_exit(h, now=0.0, ready_for=None) is not None
    assert policy.after_exit(h, now=50.0, ready_for=None) is not None


# -- pools -----------------------------------------------------------------------------------------


def test_relayout_spreads_slots_over_devices_and_bumps_every_generation() -> None:
    pool, gens = make_pool(2, [GPU0])
    before = {i: s.generation for i, s in pool.slots.items()}
    pool.relayout([GPU0, GPU1], 4, lambda: next(gens))
    assert [s.device for s in pool.ordered()] == [GPU0, GPU0, GPU1, GPU1]
    assert all(pool.slots[i].generation != g for i, g in before.items())


def test_scale_adds_on_the_least_crowded_device_and_removes_idle_slots_first() -> None:
    pool, gens = make_pool(2, [GPU0, GPU1])
    added, removed = pool.scale_to(3, lambda: next(gens), lambda s: None)
    assert len(added) == 1 and not removed
    counts = pool.device_counts()
    assert sorted(counts.values()) == [1, 2]
    started = {0: 5.0, 1: 9.0}  # slot 2 runs nothing
    _, removed = pool.scale_to(2, lambda: next(gens), lambda s: started.get(s.index))
    assert [s.index for s in removed] == [2]
    _, removed = pool.scale_to(1, lambda: next(gens), lambda s: started.get(s.index))
    assert [s.index for s in removed] == [1]  # the one started last


# -- the reconcile step ---------------------------------------------------------------------------


def test_empty_slots_get_children() -> None:
    pool, _ = make_pool(3)
    actions = plan(pool, [], now=0.0)
    assert sorted(a.slot.index for a in actions if isinstance(a, Start)) == [0, 1, 2]


def test_a_slot_backing_off_waits() -> None:
    pool, _ = make_pool(1)
    pool.slots[0].not_before = 10.0
    assert plan(pool, [], now=5.0) == []
    assert [type(a) for a in plan(pool, [], now=11.0)] == [Start]


def test_a_reload_replaces_one_slot_at_a_time_new_one_ready_first() -> None:
    pool, gens = make_pool(2)
    old = [child(pool, s) for s in pool.ordered()]
    pool.relayout([CPU], 2, lambda: next(gens))
    actions = plan(pool, old, now=0.0)
    assert [(type(a), a.slot.index) for a in actions if isinstance(a, Start)] == [(Start, 0)]
    assert not any(isinstance(a, Drain) for a in actions)  # nothing drains before its successor
    new0 = child(pool, pool.slots[0], ChildState.STARTING)
    assert plan(pool, [*old, new0], now=0.0) == []  # still one at a time
    new0.state = ChildState.READY
    actions = plan(pool, [*old, new0], now=0.0)
    assert Drain(old[0], Stop.REPLACED) in actions
    assert any(isinstance(a, Start) and a.slot.index == 1 for a in actions)


def test_a_scale_during_a_reload_merges() -> None:
    pool, gens = make_pool(2)
    old = [child(pool, s) for s in pool.ordered()]
    pool.relayout([CPU], 2, lambda: next(gens))
    # The operator scales to 1 while slot 0's replacement starts: slot 1 goes (its old child
    # drains), slot 0's reload goes on.
    new0 = child(pool, pool.slots[0], ChildState.STARTING)
    pool.scale_to(1, lambda: next(gens), lambda s: 1.0)
    actions = plan(pool, [*old, new0], now=0.0)
    assert Drain(old[1], Stop.SCALED) in actions
    assert not any(isinstance(a, Start) for a in actions)


def test_children_of_a_removed_model_drain() -> None:
    pool, _ = make_pool(2)
    kids = [child(pool, s) for s in pool.ordered()]
    pool.slots.clear()
    assert plan(pool, kids, now=0.0) == [Drain(kids[0], Stop.SCALED), Drain(kids[1], Stop.SCALED)]


def test_a_stale_child_that_never_got_ready_is_replaced_outright() -> None:
    pool, gens = make_pool(1)
    starting = child(pool, pool.slots[0], ChildState.STARTING)
    pool.bump(0, next(gens))
    actions = plan(pool, [starting], now=0.0)
    assert Drain(starting, Stop.REPLACED) in actions
    assert any(isinstance(a, Start) for a in actions)


def test_converged_and_slot_states() -> None:
    pool, _ = make_pool(2)
    kids = [child(pool, s) for s in pool.ordered()]
    assert converged(pool, kids)
    draining = child(pool, pool.slots[0], ChildState.DRAINING, gen=0)
    assert not converged(pool, [*kids, draining])  # wait until what drains has exited
    assert slot_state(pool.slots[0], [kids[0]], 0.0) == SlotState.READY
    pool.slots[1].failed = True
    assert slot_state(pool.slots[1], [], 0.0) == SlotState.FAILED
    pool.slots[1].failed = False
    pool.slots[1].not_before = 9.0
    assert slot_state(pool.slots[1], [], 0.0) == SlotState.BACKOFF


def test_a_child_process_stands_in_for_popen() -> None:
    # The registry keys children by pid: a real Popen works as the fake does.
    proc = subprocess.Popen(["true"])
    proc.wait()
    c = Child(Role.WORKER, "m", 0, 1, "m.w0.1", proc, CPU, 0)
    assert c.pid == proc.pid and c.alive


@pytest.mark.parametrize("state", [ChildState.DRAINING, ChildState.KILLED])
def test_children_on_their_way_out_are_left_alone(state: ChildState) -> None:
    pool, _ = make_pool(1)
    leaving = child(pool, pool.slots[0], state)
    actions = plan(pool, [leaving], now=0.0)
    assert [type(a) for a in actions] == [Start]
