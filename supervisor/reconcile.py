"""The reconcile step (supervisor): compare a pool's slots with its children, say what to do.

Pure: given the desired state (a pool's slots) and what runs (its children), it returns the
actions that close the gap; the supervisor carries them out. It runs after every event (a child's
exit or message, a signal, an admin call) and on every tick, so an operation never has to be
carried out step by step, and a change that arrives while another is under way just changes what
the next step sees.

- A slot with no child gets one, unless it is backing off or failed.
- A slot whose child is of an older generation (a reload, a restart) or on another device gets a
  replacement; the old child drains only once the new one is ready. One slot of a pool is
  replaced at a time, so that a pool never loses more than one child's capacity to a reload.
- A child whose slot is gone (scaled away, its model removed) drains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ferryman.supervisor.pools import Pool, Slot, SlotState
from ferryman.supervisor.registry import Child, ChildState, Stop


@dataclass(frozen=True)
class Start:
    slot: Slot
    replacing: bool  # an older child of the slot keeps serving until this one is ready


@dataclass(frozen=True)
class Drain:
    child: Child
    why: Stop


Action = Start | Drain


def current(slot: Slot, child: Child) -> bool:
    return child.generation == slot.generation and child.device == slot.device


def plan(pool: Pool, children: Iterable[Child], now: float) -> list[Action]:
    by_slot: dict[int, list[Child]] = {}
    actions: list[Action] = []
    for c in children:
        if not c.alive:
            continue
        if c.slot not in pool.slots:
            actions.append(Drain(c, Stop.SCALED))
        else:
            by_slot.setdefault(c.slot, []).append(c)
    rolling = sum(1 for s in pool.slots.values() if _replacing(s, by_slot.get(s.index, [])))
    for slot in pool.ordered():
        kids = by_slot.get(slot.index, [])
        fresh = [c for c in kids if current(slot, c)]
        stale = [c for c in kids if not current(slot, c)]
        if fresh:
            keep = next((c for c in fresh if c.state == ChildState.READY), fresh[0])
            actions += [Drain(c, Stop.REPLACED) for c in fresh if c is not keep]
            if keep.state == ChildState.READY:
                actions += [Drain(c, Stop.REPLACED) for c in stale]
            continue
        if not slot.startable(now):
            continue
        serving = [c for c in stale if c.state == ChildState.READY]
        if serving:
            if rolling >= 1:
                continue
            rolling += 1
            actions.append(Start(slot, replacing=True))
        else:
            # Older children that never got ready are of no use: replace them outright.
            actions += [Drain(c, Stop.REPLACED) for c in stale]
            actions.append(Start(slot, replacing=False))
    return actions


def _replacing(slot: Slot, kids: list[Child]) -> bool:
    """The slot is being replaced: a new child is starting while an older one serves."""
    starting = any(current(slot, c) and c.state == ChildState.STARTING for c in kids)
    return starting and any(not current(slot, c) and c.state == ChildState.READY for c in kids)


def converged(pool: Pool, children: Iterable[Child]) -> bool:
    """Every slot has one ready child of its generation, and nothing else of the pool runs
    (what was scaled away or replaced has exited)."""
    kids = list(children)
    if len(kids) != len(pool.slots):
        return False
    for c in kids:
        slot = pool.slots.get(c.slot)
        if slot is None or c.state != ChildState.READY or not current(slot, c):
            return False
    return len({c.slot for c in kids}) == len(pool.slots)


def slot_state(slot: Slot, kids: Iterable[Child], now: float) -> SlotState:
    """What status shows for a slot: its current child's state, else why none runs."""
    kids = list(kids)
    fresh = [c for c in kids if c.alive and current(slot, c)]
    serving = [c for c in kids if c.state == ChildState.READY]
    if any(c.state == ChildState.READY for c in fresh):
        return SlotState.READY
    if serving:
        return SlotState.READY  # an older child serves while its replacement starts
    if fresh:
        return SlotState.STARTING
    if slot.failed:
        return SlotState.FAILED
    if any(c.state == ChildState.DRAINING for c in kids):
        return SlotState.DRAINING
    if slot.not_before > now:
        return SlotState.BACKOFF
    return SlotState.STARTING
