"""A tiny name -> builder registry (after timm's): one decorated function per entry."""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import SpecError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders. Unknown names raise ``SpecError`` with a did-you-mean answer."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            for k in (key, *aliases):
                if k in self._items:
                    raise ValueError(f"{self.kind} '{k}' is registered twice")
                self._items[k] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SpecError(
                f"unknown {self.kind} '{name}'", hint=did_you_mean(name, self._items)
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
