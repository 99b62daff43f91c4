"""What a `?filter=` selector reaches in an endpoint's JSON items: the shape of those items
(learned from an example item), and the values a selector such as `Service.Meta.env` or
`Checks.Status` finds in one item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Item = Mapping[str, Any]

MAP_FIELDS = frozenset({"Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses",
                        "ServiceTaggedAddresses"})
"""Fields whose keys are user data (any key may be selected), not a fixed structure."""


class FilterError(ValueError):
    """An expression pilotfish cannot evaluate; the message says what and where."""


# The shape a selector walks: "struct" (fixed fields), "map" (user keys), "list", or a scalar.


@dataclass(frozen=True, slots=True)
class Shape:
    """What a selector can reach in an endpoint's JSON items (learned from an example item)."""

    kind: str  # struct | map | list | str | int | bool | float | null
    fields: Mapping[str, Shape] | None = None  # struct fields
    item: Shape | None = None  # map values and list items

    @classmethod
    def of(cls, value: Any, is_map: bool = False) -> Shape:
        """The shape of an example value; dicts named in MAP_FIELDS are maps."""
        if isinstance(value, Mapping):
            if is_map:
                first = next(iter(value.values()), "")
                return cls("map", item=cls.of(first))
            return cls("struct", fields={k: cls.of(v, k in MAP_FIELDS) for k, v in value.items()})
        if isinstance(value, list):
            return cls("list", item=cls.of(value[0] if value else ""))
        if value is None:
            return cls("null")  # an unset list, map or object: only `is empty` applies
        if isinstance(value, bool):
            return cls("bool")
        if isinstance(value, int):
            return cls("int")
        if isinstance(value, float):
            return cls("float")
        return cls("str")


@dataclass(frozen=True, slots=True)
class Selector:
    """A selector resolved against a shape: how to walk each item, and what it reaches."""

    path: tuple[str, ...]
    steps: tuple[str, ...]  # per part: "field" | "key" | "each" (fan out over a list)
    shape: Shape
    fans_out: bool

    @property
    def name(self) -> str:
        """The selector as written, dotted."""
        return ".".join(self.path)

    def values(self, item: Item) -> list[Any]:
        """Every value the selector reaches in one item (empty when a map key is absent)."""
        if not self.fans_out:  # the common case, kept fast: one value or none
            value: Any = item
            for part in self.path:
                # items are JSON objects (dicts); the ABC check costs 3x as much per step
                if not (type(value) is dict or isinstance(value, Mapping)) or part not in value:
                    return []
                value = value[part]
            return [value]
        current: list[Any] = [item]
        for part, step in zip(self.path, self.steps, strict=True):
            following: list[Any] = []
            for value in current:
                if step == "each":
                    for element in value or ():
                        if isinstance(element, Mapping) and part in element:
                            following.append(element[part])
                elif isinstance(value, Mapping) and part in value:
                    following.append(value[part])
            current = following
        return current


def resolve(path: Sequence[str], root: Shape, at: int) -> Selector:
    """The selector `path` (written at position `at`) over items of shape `root`."""
    shape = root
    steps: list[str] = []
    fans_out = False
    for part in path:
        if shape.kind == "list" and shape.item is not None and shape.item.kind == "struct":
            shape, fans_out = shape.item, True
            steps.append("each")
            field = (shape.fields or {}).get(part)
        elif shape.kind == "struct":
            steps.append("field")
            field = (shape.fields or {}).get(part)
        elif shape.kind == "map":
            steps.append("key")
            field = shape.item
        else:
            field = None
        if field is None:
            raise FilterError(f"selector {'.'.join(path)!r} at position {at} is not valid here")
        shape = field
    return Selector(tuple(path), tuple(steps), shape, fans_out)
