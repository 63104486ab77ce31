"""Dialogue management's actions: the five the paper's IARD coding maps to, their tags in a DM target
(``<a>Recommend</a>``), and how generated text is parsed back into them."""

from __future__ import annotations

import re

ACTIONS = ("Recommend", "Explain", "Chat", "Respond", "Request")


DM_SEPARATOR = "\n"  # between a DM target's action tags and its explanation (it ends the action sequence)


def action_tags(actions: list[str]) -> str:
    return "".join(f"<a>{a}</a>" for a in actions)


_ACTION = re.compile(r"<a>\s*([A-Za-z]+)\s*</a>")


def parse_actions(text: str, allowed: tuple[str, ...]) -> list[str] | None:
    found = [a for a in _ACTION.findall(text) if a in allowed]
    return list(dict.fromkeys(found)) if found else None
