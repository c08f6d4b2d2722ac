"""The Postman collection the guide links to is the one `dtq postman` generates today."""

from __future__ import annotations

import json
from pathlib import Path

from dtq.net.app import build_openapi
from dtq.net.postman import build_postman_collection

COLLECTION = Path(__file__).resolve().parents[2] / "postman-collection.json"


def test_committed_collection_matches_the_api() -> None:
    committed = json.loads(COLLECTION.read_text())
    generated = build_postman_collection(build_openapi())
    assert committed == json.loads(json.dumps(generated)), "run `dtq postman` and commit it"
    variables = {v["key"] for v in committed["variable"]}
    assert {"base_url", "token"} <= variables  # as the guide tells users to set
