"""The view as it travels to workers: a full state once, then diffs keyed by instance id.

Why diffs: a change costs the pipe (and every worker's unpickling) in proportion to what
changed, not to the catalog's size; one registration in a 10,000-instance catalog ships one
instance to each worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance


@dataclass(frozen=True, slots=True)
class ViewState:
    """What a view says besides its instances: the freshness every reader reports."""

    ready: bool
    stale: bool
    stale_since: float | None
    changed_at: float | None


@dataclass(frozen=True, slots=True)
class ViewDiff:
    """From one shipped snapshot to the next (`full`: replaces whatever the worker had)."""

    index: int
    upsert: tuple[Instance, ...]
    remove: tuple[str, ...]
    state: ViewState
    full: bool = False

    @property
    def moves(self) -> bool:
        """Whether the instances or the index change (else only the freshness does)."""
        return self.full or bool(self.upsert or self.remove)


def full(snapshot: Snapshot, state: ViewState) -> ViewDiff:
    """Everything, for a worker that (re)starts."""
    return ViewDiff(snapshot.index, tuple(snapshot.instances.values()), (), state, full=True)


def between(old: Snapshot, new: Snapshot, state: ViewState) -> ViewDiff:
    """The instances added or changed in `new`, and the ids gone since `old`."""
    before = old.instances
    upsert = tuple(instance for key, instance in new.instances.items()
                   if (was := before.get(key)) is not instance and was != instance)
    after = new.instances
    remove = tuple(key for key in before if key not in after)
    return ViewDiff(new.index, upsert, remove, state)


def apply(snapshot: Snapshot, diff: ViewDiff) -> Snapshot:
    """The snapshot a diff leads to from `snapshot` (the one it was computed against)."""
    if diff.full:
        return Snapshot(diff.index, diff.upsert)
    if not diff.moves and diff.index == snapshot.index:
        return snapshot
    instances = dict(snapshot.instances)
    for key in diff.remove:
        instances.pop(key, None)
    for instance in diff.upsert:
        instances[instance.id] = instance
    return Snapshot(diff.index, instances)
