"""`Record`: what `@dataclass(frozen=True, slots=True)` gives a class, written out once.

A dataclass builds its `__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__` and `__delattr__` by compiling source text when the class is
created: about half a millisecond a class, paid by every worker at start-up
before it can say hello. A `Record` subclass lists its fields in `__slots__`
(in constructor order) and writes its own `__init__` with `object.__setattr__`;
the rest comes from here, behaving as the dataclass methods did: equality
only with the same class, hash and repr from the fields in order, assignment
and deletion refused with `dataclasses.FrozenInstanceError`, `copy` and
`pickle` through the constructor, `__match_args__` for `match`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record:
    __slots__: tuple[str, ...] = ()  # in a subclass: its own fields, in constructor order
    # Every field, the base classes' first (as dataclass orders inherited fields).
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__slots__", ())
        cls._fields = (*cls._fields, *((own,) if isinstance(own, str) else own))
        setattr(cls, "__match_args__", cls._fields)  # noqa: B010  # mypy refuses a plain assignment to it

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        from dataclasses import FrozenInstanceError  # only on this error path

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), self._values()
