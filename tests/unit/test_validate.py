"""The argument validator used by commands and request bodies."""

from __future__ import annotations

import pytest

from cloudd.errors import CloudError
from cloudd.validate import HOSTNAME_RE, Field, check_args

SPEC = {
    "name": Field("str", pattern=HOSTNAME_RE),
    "count": Field("int", min=1, max=10),
    "ratio": Field("num", required=False),
    "tags": Field("list", required=False, max_len=2, item=Field("str")),
    "inner": Field("obj", required=False, spec={"on": Field("bool")}),
}


def test_valid_args_pass() -> None:
    assert check_args({"name": "web-1", "count": 3, "inner": {"on": True}}, SPEC) == {"name": "web-1", "count": 3, "inner": {"on": True}}


@pytest.mark.parametrize(
    "args, field",
    [
        ({"count": 1}, "name"),
        ({"name": "Web_1", "count": 1}, "name"),
        ({"name": "a", "count": True}, "count"),
        ({"name": "a", "count": 0}, "count"),
        ({"name": "a", "count": 11}, "count"),
        ({"name": "a", "count": 1, "ratio": float("nan")}, "ratio"),
        ({"name": "a", "count": 1, "tags": ["a", "b", "c"]}, "tags"),
        ({"name": "a", "count": 1, "tags": [1]}, "tags[0]"),
        ({"name": "a", "count": 1, "inner": {"on": 1}}, "inner.on"),
        ({"name": "a", "count": 1, "inner": {"on": True, "x": 1}}, None),
    ],
)
def test_invalid_args_name_the_field(args: dict, field: str | None) -> None:
    with pytest.raises(CloudError) as info:
        check_args(args, SPEC)
    assert info.value.code == "invalid"
    if field is not None:
        assert info.value.details["field"] == field


def test_unknown_fields_and_non_objects() -> None:
    with pytest.raises(CloudError, match="unknown field extra"):
        check_args({"name": "a", "count": 1, "extra": 1}, SPEC)
    with pytest.raises(CloudError, match="must be a JSON object"):
        check_args([1], SPEC)
