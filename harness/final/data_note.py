"""The result's note of data changes: when the study's data changed after it was created and
the change was accepted (`--allow-data-change`), the final result says so, with what changed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.final.result import FinalResult, Line, Section


@dataclass(frozen=True)
class DataChanges(Section):
    """The data changes the study accepted, each with when and what."""

    KEY: ClassVar[str] = "data_changes"
    ORDER: ClassVar[int] = 30
    FIELDS: ClassVar[Mapping[str, Any]] = {"data_changes": ()}

    data_changes: tuple[dict[str, Any], ...]

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> DataChanges | None:
        changes = d.get("data_changes")
        return cls(tuple(changes)) if changes else None

    def to_record(self) -> dict[str, Any]:
        return {"data_changes": list(self.data_changes)}

    def lines(self, r: FinalResult) -> list[Line]:
        return [("data:", "changed after the study was created, accepted with "
                          f"--allow-data-change: {'; '.join(c['changes'])}")
                for c in self.data_changes]

    def registry_tags(self) -> dict[str, str]:
        return {"data_changed": "true"}
