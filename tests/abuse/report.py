"""One result row of the abuse suite and the markdown table they make."""

from dataclasses import dataclass


@dataclass
class Row:
    area: str
    check: str
    scale: str
    criterion: str
    measured: str
    passed: bool


def cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(rows) -> str:
    out = ["| area | check | scale | pass criterion | measured | result |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(cell(x) for x in (
            r.area, r.check, r.scale, r.criterion, r.measured, "pass" if r.passed else "**FAIL**")) + " |")
    return "\n".join(out) + "\n"
