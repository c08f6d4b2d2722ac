"""The Postman collection the guide links to is the one `dtq postman` generates today, and it
walks through every operation of the API with realistic values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dtq.net.app import build_openapi
from dtq.net.postman_walkthrough import WALKTHROUGH, postman_collection

COLLECTION = Path(__file__).resolve().parents[2] / "postman-collection.json"


def requests(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        if "item" in item:
            yield from requests(item["item"])
        else:
            yield item


def test_committed_collection_matches_the_api() -> None:
    committed = json.loads(COLLECTION.read_text())
    assert committed == json.loads(json.dumps(postman_collection())), (
        "run `dtq postman` and commit it"
    )
    variables = {v["key"] for v in committed["variable"]}
    # As the API guide tells users to set, and what the login step reads.
    assert {"base_url", "token", "username", "password"} <= variables


def test_every_operation_is_in_the_walkthrough() -> None:
    operations = {
        op["operationId"]
        for path_item in build_openapi()["paths"].values()
        for op in path_item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    walked = {step.operation for stage in WALKTHROUGH.stages for step in stage.steps}
    assert operations - walked == set(), "add a step for it in dtq/net/postman_walkthrough.py"


def test_login_first_and_clean_up_last() -> None:
    stages = WALKTHROUGH.stages
    assert stages[0].steps[0].operation == "login"
    assert [step.operation for step in stages[-1].steps] == [
        "delete_task",
        "delete_task",
        "delete_task",
        "delete_task",
        "delete_schedule",
        "revoke_api_key",
        "delete_user",
        "delete_webhook",
    ]


def test_no_placeholder_values_and_every_request_tests_its_status() -> None:
    collection = postman_collection()
    for item in requests(collection["item"]):
        request = item["request"]
        assert '"string"' not in request.get("body", {}).get("raw", ""), item["name"]
        enabled = [q for q in request["url"].get("query", []) if not q.get("disabled")]
        assert all(q["value"] != "string" for q in enabled), item["name"]
        assert all(v["value"] for v in request["url"].get("variable", [])), item["name"]
        tests = [e for e in item["event"] if e["listen"] == "test"]
        assert "pm.response.to.have.status(" in tests[0]["script"]["exec"][0], item["name"]
        if "body" in request:  # the stricter input checks want the media type of a body
            assert {"key": "Content-Type", "value": "application/json", "type": "text"} in (
                request["header"]
            )
