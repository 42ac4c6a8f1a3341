"""The one example type every data source is read into."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Example:
    """One instruction-following example.

    task: category (Dolly) or task name (SNI); the unit of the gate's expert assignment.
    instruction: what to do; input: optional context; output: the reference response.
    source: where it came from (``file:line`` or ``file#instance-id``), for error messages and de-duplication audits.
    """

    task: str
    instruction: str
    input: str
    output: str
    source: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity for de-duplication: the same instruction, input and output are one example."""
        return (self.instruction.strip(), self.input.strip(), self.output.strip())
