"""Jinja test `kit.jobqueue.weak_secret`: true for a missing, empty, short or placeholder secret.

Used by the roles' preflight checks so that a run stops, naming the variable, before it
touches a host with a password such as "changeme" or an example value left in place.
"""

from __future__ import annotations

import re

MIN_LENGTH = 12
_PLACEHOLDER = re.compile(
    r"change[-_ ]?(me|it|this)|placeholder|example|replace[-_ ]?me|not[-_ ]?set|"
    r"^(password|passwd|secret|redis|valkey|admin|default|test|todo|fixme|none|null)\d*$|"
    r"^(x+|\*+|\.+|-+)$|^<.*>$|^\{\{.*\}\}$|^vault_",
    re.IGNORECASE,
)


def weak_secret(value: object, min_length: int = MIN_LENGTH) -> bool:
    if not isinstance(value, str):
        return True
    text = value.strip()
    return len(text) < min_length or bool(_PLACEHOLDER.search(text))


class TestModule:
    def tests(self) -> dict:
        return {"weak_secret": weak_secret}
