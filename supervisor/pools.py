"""The supervisor's desired state: pools of slots, each slot a device and a generation.

A pool is the API processes, or one model's workers. A slot is a place for one child; it outlives
its children (a crashed child is replaced in the same slot, on the same device). What an operator
asks for only changes this state, and the reconcile step (reconcile.py) makes the children match:

- scale: slots are added on the least crowded device, or removed (their children drain);
- restart: a slot's generation is bumped, so its child is replaced (the new one ready first);
- reload: every slot's generation is bumped, and the devices and count may change.

Changes merge: a scale during a reload changes the slots the reload is still working through;
the latest word wins, nothing is refused.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ferryman.options import ModelSpec
from ferryman.supervisor.devices import Device
from ferryman.supervisor.policy import RestartPolicy, StartHistory
from ferryman.supervisor.registry import Role


class SlotState(enum.StrEnum):
    """What status and metrics say of a slot."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    BACKOFF = "backoff"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(eq=False)
class Slot:
    index: int
    device: Device
    generation: int
    history: StartHistory = field(default_factory=StartHistory)
    not_before: float = 0.0  # no start before this (backoff, or a failed slot's retry)
    failed: bool = False
    restarts: int = 0  # children replaced after an unexpected exit
    last_exit: str | None = None
    last_error: str | None = None
    ever_ready: bool = False

    def startable(self, now: float) -> bool:
        return now >= self.not_before


CPU = Device("cpu", None, "cpu")


@dataclass(eq=False)
class Pool:
    role: Role
    name: str  # "api", or the model's name
    policy: RestartPolicy
    devices: list[Device]
    model: ModelSpec | None = None
    accelerator: str = "cpu"
    slots: dict[int, Slot] = field(default_factory=dict)
    configured: int = 0  # the count the configuration asks for (an operator may scale away)
    removing: bool = False  # a model being deleted: no slots, gone once its children are
    error: str | None = None  # why the model cannot start (import error, setup raising)
    roll_error: str | None = None  # why the last reload or restart of the pool was given up
    added: float = field(default_factory=time.monotonic)

    def ordered(self) -> list[Slot]:
        return [self.slots[i] for i in sorted(self.slots)]

    def device_counts(self) -> dict[Device, int]:
        counts = dict.fromkeys(self.devices, 0)
        for s in self.slots.values():
            counts[s.device] = counts.get(s.device, 0) + 1
        return counts

    def add_slot(self, generation: int) -> Slot:
        index = next(i for i in range(len(self.slots) + 1) if i not in self.slots)
        counts = self.device_counts()
        device = min(self.devices, key=lambda d: counts.get(d, 0)) if self.devices else CPU
        slot = Slot(index, device, generation)
        self.slots[index] = slot
        return slot

    def scale_to(
        self, count: int, next_gen: Callable[[], int], started: Callable[[Slot], float | None]
    ) -> tuple[list[Slot], list[Slot]]:
        """Add or remove slots until there are `count`; (added, removed).

        Removed first: slots with nothing running, then on the most crowded device the one
        whose child started last (`started(slot)`: its start time, None when none runs)."""
        added: list[Slot] = []
        removed: list[Slot] = []
        while len(self.slots) < count:
            added.append(self.add_slot(next_gen()))
        while len(self.slots) > count:
            counts = self.device_counts()

            def key(s: Slot, counts: dict[Device, int] = counts) -> tuple[int, bool, float, int]:
                t = started(s)
                return (counts[s.device], t is None, t or 0.0, s.index)

            victim = max(self.slots.values(), key=key)
            del self.slots[victim.index]
            removed.append(victim)
        return added, removed

    def relayout(self, devices: list[Device], count: int, next_gen: Callable[[], int]) -> None:
        """A reload: every slot gets a new generation, and the slots are laid out again over
        `devices` (as many per device, in order), keeping indices where they stay."""
        self.devices = devices
        per_device = max(1, count // max(1, len(devices)))
        layout = [d for d in devices for _ in range(per_device)]
        while len(layout) < count:  # an operator's count that does not divide evenly
            layout.append(devices[len(layout) % len(devices)])
        layout = layout[:count]
        for index in [i for i in self.slots if i >= count]:
            del self.slots[index]
        for index, device in enumerate(layout):
            slot = self.slots.get(index)
            if slot is None:
                self.slots[index] = Slot(index, device, next_gen())
            else:
                slot.device = device
                slot.generation = next_gen()
                slot.failed = False
                slot.not_before = 0.0

    def bump(self, index: int, generation: int) -> None:
        slot = self.slots[index]
        slot.generation = generation
        slot.failed = False
        slot.not_before = 0.0


def layout(devices: list[Device], per_device: int) -> list[Device]:
    return [d for d in devices for _ in range(per_device)]
