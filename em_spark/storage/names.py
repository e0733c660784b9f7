"""Names of stored objects that more than one module writes or reads.

* ``MODEL_FILE`` -- the sealed model a saved model directory (and a registry version) holds.
* ``NumberedNames`` -- ``<prefix><number, ten digits>[suffix]``: checkpoints, leases, registry
  versions, claims and alias entries. Ten zero-padded digits keep name order equal to numeric order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_NUMBER", "MODEL_FILE", "NUMBER_DIGITS", "NumberedNames"]

#: the model object: written by ``EMModel.save`` and the registry, read by ``load_model``
MODEL_FILE = "model.emsp"

NUMBER_DIGITS = 10
#: the largest number a numbered name can hold
MAX_NUMBER = 10**NUMBER_DIGITS - 1


@dataclass(frozen=True)
class NumberedNames:
    """Object names ``prefix + <number:010d> + suffix`` and their parsing.

    >>> NumberedNames("ckpt-", ".emck").name(7)
    'ckpt-0000000007.emck'
    >>> NumberedNames("ckpt-", ".emck").parse("ckpt-0000000007.emck")
    7
    """

    prefix: str = ""
    suffix: str = ""
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(re.escape(self.prefix) + rf"(\d{{{NUMBER_DIGITS}}})" + re.escape(self.suffix))
        object.__setattr__(self, "_pattern", pattern)

    def name(self, number: int) -> str:
        return f"{self.prefix}{number:0{NUMBER_DIGITS}d}{self.suffix}"

    def parse(self, name: str) -> int | None:
        """The number in ``name``, or ``None`` when ``name`` is not one of these names."""
        match = self._pattern.fullmatch(name)
        return int(match.group(1)) if match else None

    def numbers(self, names: Iterable[str]) -> list[int]:
        """The numbers of those ``names`` that are such names, ascending."""
        return sorted(n for n in map(self.parse, names) if n is not None)
