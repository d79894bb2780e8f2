"""pantry's task. kitqueue's workers run it because the entry point registers it."""

from __future__ import annotations

import itsdangerous
from kitqueue.registry import Task


def stock(item: str) -> dict[str, str]:
    """Put an item on the shelf with a label signed by the app's own itsdangerous."""
    label = itsdangerous.Signer("pantry shelf labels").sign(item).decode()
    return {"item": item, "label": label, "itsdangerous": itsdangerous.__version__}


ITEM = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"\S"}
TASKS = (Task("stock", stock, "pantry", {"item": ITEM}),)
