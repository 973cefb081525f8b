"""One error for everything wrong with a pairs job, listing the first few problems and how many there are."""

from __future__ import annotations

MAX_LISTED = 10


class PairsError(ValueError):
    """Bad scores, missing images, unreachable pair quotas, leakage: nothing has been written yet."""


def listed(problems: list[str], limit: int = MAX_LISTED) -> str:
    """The first `limit` problems, one per line, and a count of the rest."""
    lines = [f"  {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def raise_if_any(headline: str, problems: list[str]) -> None:
    if problems:
        raise PairsError(f"{headline} ({len(problems)}):\n{listed(problems)}")
