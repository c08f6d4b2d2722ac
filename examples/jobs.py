"""An example worker with handlers for the task names the API guide uses.

Run it next to a server (README, "Your first finished task"):

    DTQ_URL=http://localhost:5000 DTQ_API_KEY=dtq_... dtq worker examples.jobs:worker

It leases only these names; tasks of other names stay pending for a worker that has them.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from dtq import Worker

worker = Worker()  # DTQ_URL and DTQ_API_KEY (or DTQ_TOKEN) from the environment


@worker.task("Process Data")
def process_data(payload: dict[str, Any]) -> dict[str, Any]:
    """The guide's "Process Data": counts the rows of `file_path` when it is a readable CSV."""
    path = Path(str(payload.get("file_path", "")))
    if path.is_file():
        with path.open(newline="") as fh:
            rows = sum(1 for _ in csv.reader(fh))
        return {"file_path": str(path), "rows": rows}
    return {"file_path": str(path), "rows": 0, "note": "no such file on this worker"}


@worker.task("Data Processing")
def data_processing(payload: dict[str, Any]) -> dict[str, Any]:
    """The guide's "Create and Monitor Task" example: a short piece of work."""
    started = time.monotonic()
    checksum = sum(hash(str(item)) % 997 for item in payload.items())
    return {"processed": True, "checksum": checksum, "took_s": round(time.monotonic() - started, 6)}


@worker.task("New Task")
def new_task(payload: dict[str, Any]) -> dict[str, Any]:
    """The guide's "New Task" (Python example): echoes what it was given."""
    return {"echo": payload}


if __name__ == "__main__":
    worker.run()
