"""Jinja test `kit.jobqueue.weak_secret`: true for a missing, empty, short or placeholder secret;
`kit.jobqueue.unquotable_secret`: true for a password that Redis and Sentinel cannot write in a
configuration file.

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


# Redis writes masterauth, and Sentinel its auth-pass and sentinel-pass, unquoted in their
# configuration files (also when they rewrite them): a space splits the line there, a quote or
# a backslash starts an escape, and the server no longer starts or reads the value back.
_UNQUOTABLE = re.compile(r"[\s\"'\\]|[^\x21-\x7e]")


def weak_secret(value: object, min_length: int = MIN_LENGTH) -> bool:
    if not isinstance(value, str):
        return True
    text = value.strip()
    return len(text) < min_length or bool(_PLACEHOLDER.search(text))


def unquotable_secret(value: object) -> bool:
    """True for a password Redis or Sentinel cannot keep in a configuration file: one with a
    space, a quote, a backslash or a character outside printable ASCII."""
    return isinstance(value, str) and bool(_UNQUOTABLE.search(value))


class TestModule:
    def tests(self) -> dict:
        return {"weak_secret": weak_secret, "unquotable_secret": unquotable_secret}
