"""dtq's Postman collection as a walkthrough that runs top to bottom (Postman's Runner, newman).

Sign in, create tasks, read and update them, play a worker (heartbeat, lease, extend, complete,
fail, release, ack), look at analytics, administer users, keys and webhooks, check the system
routes, then delete everything the run created. Every object the run creates is named
``postman-<run_id>`` (a fresh `run_id` per run, set by the login step), on a queue of its own,
so a run against a server that has other work on it leases only its own tasks.

`dtq postman` writes `postman_collection()` to postman-collection.json; a test checks that the
committed file is current, and another runs it with newman against a live server.
"""

from __future__ import annotations

from typing import Any

from dtq.net.postman import Stage, Step, Walkthrough, build_postman_collection

__all__ = ["WALKTHROUGH", "postman_collection"]

RUN = "postman-{{run_id}}"  # the name of everything the run creates, and its queue

_TASK = "{{task_id}}"
_LEASE = "{{lease_id}}"
_LEASED = "{{leased_task_id}}"

# A lease of one task from the run's queue; the leased task and its lease id go into variables.
_LEASE_ONE: dict[str, Any] = {
    "worker_id": "{{worker_id}}",
    "queues": [RUN],
    "max_tasks": 1,
    "wait": 0,
    "lease_seconds": 60,
}
_STORE_LEASE = {"leased_task_id": "body.data[0].id", "lease_id": "body.data[0].lease.id"}


def _leased(expected: str) -> dict[str, str]:
    return {
        f"leases {expected}": (
            "pm.expect(body.data).to.have.lengthOf(1);\n"
            f"pm.expect(body.data[0].id).to.eql(pm.collectionVariables.get('{expected}'));\n"
            "pm.expect(body.data[0].status).to.eql('running');"
        )
    }


def _status_is(status: str) -> dict[str, str]:
    return {f"task is {status}": f"pm.expect(body.data.status).to.eql('{status}');"}


SIGN_IN = Stage(
    name="1. Sign in",
    description="Log in with `{{username}}` / `{{password}}`; the token is kept in `{{token}}`.",
    steps=(
        Step(
            operation="login",
            body={"username": "{{username}}", "password": "{{password}}"},
            # A fresh run id names everything this run creates (see the module docstring).
            prerequest=("pm.collectionVariables.set('run_id', Date.now().toString(36));",),
            checks={
                "response has a token": "pm.expect(body.token).to.be.a('string').and.not.empty;"
            },
        ),
    ),
)

TASKS = Stage(
    name="2. Tasks",
    description="Create a task and a batch of two, list, read and update them.",
    steps=(
        Step(
            operation="create_task",
            body={
                "name": "Process Data",
                "description": "Import the February sales export",
                "priority": "medium",
                "payload": {"file_path": "/data/input.csv", "format": "csv"},
                "queue": RUN,
                "retry_count": 3,
                "timeout": 300,
                "tags": ["postman", "import"],
            },
            store={"task_id": "body.data.id"},
            checks=_status_is("pending"),
        ),
        Step(
            operation="create_tasks",
            body={
                "tasks": [
                    {
                        "name": "Send Report",
                        "payload": {"report": "daily-sales", "to": ["ops@example.com"]},
                        "queue": RUN,
                        "tags": ["postman"],
                    },
                    {
                        "name": "Resize Image",
                        "payload": {"image": "/data/photos/cat.jpg", "width": 640},
                        "priority": "low",
                        "queue": RUN,
                        "tags": ["postman"],
                    },
                ]
            },
            store={"report_task_id": "body.data[0].id", "image_task_id": "body.data[1].id"},
        ),
        Step(
            operation="list_tasks",
            query={"status": "pending", "limit": "10"},
            checks={"lists pending tasks": "pm.expect(body.data).to.be.an('array');"},
        ),
        Step(operation="get_task", path={"task_id": _TASK}, checks=_status_is("pending")),
        Step(
            operation="update_task",
            body={"priority": "high", "description": "Import the February sales export (urgent)"},
            path={"task_id": _TASK},
            checks={"priority is high": "pm.expect(body.data.priority).to.eql('high');"},
        ),
    ),
)

WORKER = Stage(
    name="3. Worker",
    description=(
        "Play a worker: heartbeat, then lease the run's tasks one at a time (high priority "
        "first, then in order) and finish each a different way: extend + complete, fail, "
        "release, then lease again and acknowledge in a batch."
    ),
    steps=(
        Step(
            operation="worker_heartbeat",
            body={
                "worker_id": RUN,
                "status": "active",
                "current_load": 0,
                "max_capacity": 4,
                "hostname": "postman-runner",
                "queues": [RUN],
            },
            store={"worker_id": "body.data.worker_id"},
        ),
        Step(operation="list_workers", query={"status": "active"}),
        Step(operation="workers_status"),
        Step(operation="workers_status_alias1"),
        Step(operation="get_worker", path={"worker_id": "{{worker_id}}"}),
        Step(
            operation="lease_tasks",
            name="Lease the high-priority task",
            body=_LEASE_ONE,
            store=_STORE_LEASE,
            checks=_leased("task_id"),
        ),
        Step(
            operation="extend_lease",
            body={"lease_id": _LEASE, "lease_seconds": 120},
            path={"task_id": _LEASED},
        ),
        Step(
            operation="complete_task",
            body={"lease_id": _LEASE, "result": {"rows_imported": 1250, "rejected": 3}},
            path={"task_id": _LEASED},
            checks=_status_is("completed"),
        ),
        Step(
            operation="lease_tasks",
            name="Lease the report task",
            body=_LEASE_ONE,
            store=_STORE_LEASE,
            checks=_leased("report_task_id"),
        ),
        Step(
            operation="fail_task",
            body={
                "lease_id": _LEASE,
                "error": {"message": "Template 'daily-sales' not found", "type": "TemplateError"},
                "retry": False,
            },
            path={"task_id": _LEASED},
            checks=_status_is("failed"),
        ),
        Step(
            operation="lease_tasks",
            name="Lease the image task",
            body=_LEASE_ONE,
            store=_STORE_LEASE,
            checks=_leased("image_task_id"),
        ),
        Step(
            operation="release_task",
            body={"lease_id": _LEASE},
            path={"task_id": _LEASED},
            checks=_status_is("pending"),
        ),
        Step(
            operation="lease_tasks",
            name="Lease the image task again",
            body=_LEASE_ONE,
            store=_STORE_LEASE,
            checks=_leased("image_task_id"),
        ),
        Step(
            operation="ack_tasks",
            body={
                "acks": [
                    {
                        "id": _LEASED,
                        "lease_id": _LEASE,
                        "status": "completed",
                        "result": {"thumbnail": "/data/photos/cat-640.jpg"},
                    }
                ]
            },
            checks={"acknowledged": "pm.expect(body.data.succeeded).to.eql(1);"},
        ),
        Step(operation="get_task", path={"task_id": _LEASED}, checks=_status_is("completed")),
    ),
)

_PURGED = f"{RUN}-purge"  # a queue of its own, so the purge leaves the run's other tasks alone

QUEUES = Stage(
    name="3b. Queues",
    description="List and read queues, set limits, pause, explain a task, resume, purge.",
    steps=(
        Step(operation="list_queues"),
        Step(
            operation="get_queue",
            path={"name": RUN},
            checks={
                "names the queue": "pm.expect(body.data.name).to.eql("
                "'postman-' + pm.collectionVariables.get('run_id'));"
            },
        ),
        Step(
            operation="update_queue",
            path={"name": RUN},
            body={
                "concurrency_limit": 5,
                "concurrency_limit_per_key": 2,
                "rate_limit_per_second": 50,
            },
            checks={"limits set": "pm.expect(body.data.concurrency_limit).to.eql(5);"},
        ),
        Step(
            operation="pause_queue",
            path={"name": RUN},
            checks={"paused": "pm.expect(body.data.paused).to.eql(true);"},
        ),
        Step(
            operation="explain_task",
            path={"task_id": _TASK},
            checks={"has reasons": "pm.expect(body.data.reasons).to.be.an('array');"},
        ),
        Step(
            operation="resume_queue",
            path={"name": RUN},
            checks={"resumed": "pm.expect(body.data.paused).to.eql(false);"},
        ),
        Step(
            operation="create_task",
            name="Create a task to purge",
            body={"name": "Process Data", "queue": _PURGED, "payload": {}},
        ),
        Step(
            operation="purge_queue",
            path={"name": _PURGED},
            checks={"purged one": "pm.expect(body.data.purged).to.eql(1);"},
        ),
    ),
)

OPERATING = Stage(
    name="3b. History, redrive and schedules",
    description=(
        "The failed report task's history, sent back to work; bulk retry and purge with "
        "filters; a paused schedule, changed, run once by hand."
    ),
    steps=(
        Step(
            operation="task_events",
            path={"task_id": "{{report_task_id}}"},
            checks={
                "created first, failed last": (
                    "pm.expect(body.data[0].event).to.eql('created');\n"
                    "pm.expect(body.data[body.data.length - 1].event).to.eql('failed');"
                )
            },
        ),
        Step(
            operation="retry_task",
            path={"task_id": "{{report_task_id}}"},
            checks=_status_is("pending"),
        ),
        Step(operation="retry_tasks", body={"status": "failed", "queue": RUN}),
        Step(operation="purge_tasks", body={"status": "cancelled", "queue": RUN}),
        Step(
            operation="create_schedule",
            body={
                "name": RUN,
                "cron": "0 3 * * *",
                "timezone": "Europe/Berlin",
                "task": {"name": "Send Report", "queue": RUN, "payload": {"report": "nightly"}},
                "paused": True,
            },
            store={"schedule_name": "body.data.name"},
        ),
        Step(operation="list_schedules"),
        Step(operation="get_schedule", path={"name": "{{schedule_name}}"}),
        Step(
            operation="update_schedule",
            path={"name": "{{schedule_name}}"},
            body={"cron": "30 3 * * 1-5"},
        ),
        Step(
            operation="trigger_schedule",
            path={"name": "{{schedule_name}}"},
            store={"scheduled_task_id": "body.data.task.id"},
        ),
    ),
)

ANALYTICS = Stage(
    name="4. Analytics",
    description="The dashboard figures, trends and the export.",
    steps=(
        Step(operation="dashboard"),
        Step(operation="trends", query={"days": "7", "metric": "completion_rate"}),
        Step(operation="export", query={"days": "7"}, media_type="application/json"),
        Step(
            operation="export",
            name="Export analytics as CSV",
            query={"days": "7", "format": "csv"},
            media_type="text/csv",
        ),
    ),
)

ADMIN = Stage(
    name="5. Admin",
    description="Users and API keys (admin only).",
    steps=(
        Step(
            operation="create_user",
            body={"username": RUN, "password": "correct-horse-battery", "role": "viewer"},
            store={"new_username": "body.data.username"},
        ),
        Step(operation="list_users"),
        Step(
            operation="update_user",
            path={"username": "{{new_username}}"},
            body={"password": "correct-horse-battery-2", "role": "operator"},
        ),
        Step(
            operation="create_api_key",
            body={"name": RUN, "role": "worker", "rate_limit_per_minute": 600},
            store={"api_key_id": "body.data.key_id", "new_api_key": "body.data.key"},
        ),
        Step(operation="list_api_keys"),
    ),
)

WEBHOOKS = Stage(
    name="6. Webhooks",
    description=(
        "Register a webhook (for `task.failed` only, so this run's clean-up sends it nothing), "
        "read it and its deliveries."
    ),
    steps=(
        Step(
            operation="create_webhook",
            body={
                "url": "https://93.184.215.14/hooks/dtq",  # a public address: no DNS lookup needed
                "events": ["task.failed"],
                "description": "Postman walkthrough",
            },
            store={"webhook_id": "body.data.id"},
        ),
        Step(operation="list_webhooks"),
        Step(operation="get_webhook", path={"webhook_id": "{{webhook_id}}"}),
        Step(operation="list_webhook_deliveries", path={"webhook_id": "{{webhook_id}}"}),
    ),
)

SYSTEM = Stage(
    name="7. System",
    description="Health, readiness, server information and Prometheus metrics.",
    steps=(
        Step(operation="health"),
        Step(operation="ready"),
        Step(operation="info"),
        Step(operation="metrics"),
    ),
)

CLEAN_UP = Stage(
    name="8. Clean up",
    description=(
        "Delete what the run created: its tasks, API key, user and webhook. (The worker "
        "`postman-<run_id>` has no delete: it turns inactive once its heartbeats stop.)"
    ),
    steps=(
        Step(operation="delete_task", name="Delete the data task", path={"task_id": _TASK}),
        Step(
            operation="delete_task",
            name="Delete the report task",
            path={"task_id": "{{report_task_id}}"},
        ),
        Step(
            operation="delete_task",
            name="Delete the image task",
            path={"task_id": "{{image_task_id}}"},
        ),
        Step(
            operation="delete_task",
            name="Delete the task the schedule submitted",
            path={"task_id": "{{scheduled_task_id}}"},
        ),
        Step(operation="delete_schedule", path={"name": "{{schedule_name}}"}),
        Step(operation="revoke_api_key", path={"key_id": "{{api_key_id}}"}),
        Step(operation="delete_user", path={"username": "{{new_username}}"}),
        Step(operation="delete_webhook", path={"webhook_id": "{{webhook_id}}"}),
    ),
)

WALKTHROUGH = Walkthrough(
    description=(
        "Run the collection top to bottom (Postman's Runner, or `newman run "
        "postman-collection.json --env-var base_url=... --env-var server_url=...`): it signs in "
        "with `username`/`password`, keeps the ids of what it creates in collection variables "
        "for the requests after it, tests the status code of every response, and deletes what "
        "it created at the end."
    ),
    stages=(
        SIGN_IN,
        TASKS,
        WORKER,
        QUEUES,
        OPERATING,
        ANALYTICS,
        ADMIN,
        WEBHOOKS,
        SYSTEM,
        CLEAN_UP,
    ),
    variables=(
        ("username", "admin", "who the login step signs in as"),
        ("password", "password", "that user's password"),
        ("run_id", "", "set by the login step: names what this run creates"),
        ("task_id", "", "the task created by 'Create a task'"),
        ("report_task_id", "", "the first task of the batch"),
        ("image_task_id", "", "the second task of the batch"),
        ("worker_id", "", "the worker registered by the heartbeat"),
        ("leased_task_id", "", "the task of the latest lease"),
        ("lease_id", "", "the latest lease's id (the fencing token)"),
        ("new_username", "", "the user created by the run"),
        ("api_key_id", "", "the API key created by the run"),
        ("new_api_key", "", "that key itself (shown once)"),
        ("webhook_id", "", "the webhook created by the run"),
        ("schedule_name", "", "the schedule created by the run"),
        ("scheduled_task_id", "", "the task its trigger submitted"),
    ),
)


def postman_collection() -> dict[str, Any]:
    """The collection `dtq postman` writes: dtq's OpenAPI document, in walkthrough order."""
    from dtq.net.app import build_openapi  # the whole app: only when a collection is wanted

    return build_postman_collection(build_openapi(), walkthrough=WALKTHROUGH)
