"""A tiny name -> builder registry (after timm's): one decorated function per entry; and the
one registry of models (:data:`MODELS`, :func:`register_model`) that
:func:`skipdsl.create_model` and :func:`skipdsl.list_models` read."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from .errors import SpecError, did_you_mean

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its builder (keyword options -> ``nn.Module``), its task
    (``semantic``: logits per pixel; ``instance``: a feature pyramid or a detector), the
    dimensions it is built in, where it comes from (``zoo``: a DSL spec of the zoo;
    ``baseline``: a maintained library's class, :mod:`skipdsl.baselines`; ``detector``:
    Mask R-CNN over a pyramid spec, :mod:`skipdsl.detection`) and one line about it."""

    name: str
    builder: Callable[..., Any]
    task: str
    dims: tuple[int, ...]
    source: str
    description: str = ""


#: Every model :func:`skipdsl.create_model` builds by name (filled by the modules that define
#: builders: :mod:`skipdsl.models` for the zoo, :mod:`skipdsl.baselines`,
#: :mod:`skipdsl.detection`).
MODELS: Registry[ModelInfo] = Registry("model")


def register_model(name: str, *, task: str = "semantic", dims: Iterable[int] = (2,),
                   source: str = "zoo", description: str = "") -> Callable[[F], F]:
    """Register ``builder(**options) -> nn.Module`` as model ``name`` (timm's
    ``@register_model``)."""
    if task not in ("semantic", "instance"):
        raise ValueError(f"task must be 'semantic' or 'instance', found {task!r}")

    def deco(fn: F) -> F:
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        MODELS.register(name)(ModelInfo(name, fn, task, tuple(int(d) for d in dims), source,
                                        doc))
        return fn

    return deco
