"""Options apart from state.

Each stateful policy keeps its options in one frozen, validated object (a slotted
dataclass subclassing :class:`Options`) and its state beside it. Building a policy with
keywords, as always, builds its options; :meth:`Reconfigurable.reconfigure` swaps them
atomically for new ones and keeps the state that still fits, which is what a hot reload
of settings needs. A call reads the options once, when it starts, so calls in flight
finish under the options they started with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["Options", "Reconfigurable"]

OptionsT = TypeVar("OptionsT", bound="Options")


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Base of every policy's options: frozen, validated when built, compared by value."""

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    def set(self, name: str, value: object) -> None:
        """For ``__post_init__`` only: store a normalised value on the frozen object."""
        object.__setattr__(self, name, value)


class Reconfigurable(Generic[OptionsT]):
    """What a policy with options offers: :attr:`options` and :meth:`reconfigure`."""

    __slots__ = ()

    options_type: ClassVar[type[Options]]
    _options: OptionsT  # a slot of the policy class

    @property
    def options(self) -> OptionsT:
        """The options in force now (a frozen object)."""
        return self._options

    def reconfigure(self, options: OptionsT) -> None:
        """Swap the options for ``options``, keeping the state that still fits.

        Calls in flight finish under the options they started with; what is kept and
        what is reset is said in each policy's docstring.

        Raises:
            TypeError: ``options`` is not this policy's options type.
        """
        if not isinstance(options, self.options_type):
            raise TypeError(f"{type(self).__name__}.reconfigure needs {self.options_type.__name__}, got {options!r}")
        self._reconfigure(options)

    def _reconfigure(self, options: OptionsT) -> None:
        self._options = options  # type: ignore[misc]
