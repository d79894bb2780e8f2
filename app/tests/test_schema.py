"""schema.check: the sentence for each JSON Schema keyword the API's schemas use."""

from __future__ import annotations

import pytest
from kitqueue.schema import BadArguments, check

NUMBER = {"type": "number", "minimum": 0, "maximum": 10}
TEXT = {"type": "string", "minLength": 1, "maxLength": 3, "pattern": r"\S", "format": "printable"}
OBJECT = {
    "type": "object",
    "properties": {"n": NUMBER, "t": TEXT, "k": {"enum": ["a", "b"]}},
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("schema", "value", "subject", "sentence"),
    [
        (NUMBER, "1", "n", "'n' must be a number"),
        (NUMBER, True, "n", "'n' must be a number"),
        (NUMBER, 11, "n", "'n' must be between 0 and 10"),
        (TEXT, "", "t", "'t' must not be empty"),
        (TEXT, "  ", "t", "'t' must not be empty"),
        (TEXT, "abcd", "t", "'t' is longer than 3 characters"),
        (TEXT, "a\x01", "t", "'t' contains non-printable characters"),
        (OBJECT, [], "", "the value must be an object"),
        (OBJECT, {}, "", "the object needs n"),
        (OBJECT, {"n": 1, "x": 1, "y": 2}, "", "the object has no field(s) x, y"),
        (OBJECT, {"n": -1}, "", "'n' must be between 0 and 10"),
        (OBJECT, {"n": 1, "k": "c"}, "body", "'body.k' must be one of: a, b"),
        ({"type": "string", "pattern": "^x+$", "description": "only x"}, "y", "id", "'id' must be only x"),
        ({"type": ["array", "object"]}, 1, "args", "'args' must be a list or an object"),
        # A field inside an object, with keywords the sentences above do not word themselves.
        ({"properties": {"m": TEXT}}, {"m": ""}, "", "'m' must not be empty"),
        ({"properties": {"m": {"minLength": 2}}}, {"m": "a"}, "a", "'a.m' is shorter than 2 characters"),
        (
            {"properties": {"l": {"maxItems": 1}}},
            {"l": [1, 2]},
            "",
            "'l' must contain less than or equal to 1 items",
        ),
    ],
)
def test_each_refusal_names_the_field_and_the_rule(schema, value, subject, sentence):
    with pytest.raises(BadArguments) as refused:
        check(schema, value, subject)
    assert str(refused.value) == sentence


def test_a_fitting_value_comes_back_unchanged():
    value = {"n": 2.5, "t": "abc", "k": "a"}
    assert check(OBJECT, value) is value
