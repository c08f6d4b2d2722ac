"""The dashboard in a real browser against a real server: what a user sees and what their
clicks do, checked through the API."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import VIEWER_PASSWORD, Page, UiServer, screenshot_dir

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip (or fail under CI) with the reason
    expect = None

LIVE_S = 2.0  # "appears within 2 s without a reload"
SOON_MS = 5000
DASH = "\u2013"  # the en dash of "Showing 1-25 of 30"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def confirm(page: Page) -> None:
    """Confirms the open <dialog> (with the keyboard: focus is inside it)."""
    dialog = page.raw.locator("dialog[open]")
    expect(dialog).to_be_visible()
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_have_count(0)


def test_sign_in_and_out(new_page: Any) -> None:
    tab = new_page()
    tab.goto("/")
    tab.raw.wait_for_url(re.compile(r".*/ui/login.*"))
    tab.raw.fill("#username", "admin")
    tab.raw.fill("#password", "wrong")
    tab.raw.click("#login-submit")
    expect(tab.raw.locator("#login-error")).to_have_text("Wrong username or password")
    tab.problems.clear()  # the browser logs the 401 of the wrong password as a console error
    tab.raw.fill("#password", "password-for-the-tests")
    tab.raw.press("#password", "Enter")  # the keyboard signs in too
    tab.raw.wait_for_url(f"{tab.url}/ui/")
    expect(tab.raw.locator("#whoami")).to_have_text("admin (admin)")
    token = tab.raw.evaluate("JSON.parse(sessionStorage.getItem('dtq.session')).token")
    assert token.count(".") == 2  # a JWT, kept for this tab only
    tab.raw.click("#signout")
    tab.raw.wait_for_url(re.compile(r".*/ui/login.*"))
    assert tab.raw.evaluate("sessionStorage.getItem('dtq.session')") is None
    tab.goto("/ui/tasks")  # signed out: every page sends you to sign in, and back after
    tab.raw.wait_for_url(re.compile(r".*/ui/login\?next=%2Fui%2Ftasks"))


def test_overview_counters_follow_the_api(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    total = page.raw.locator('[data-metric="total_tasks"]')
    expect(total).not_to_have_text(DASH)  # the placeholder until the figures come
    before = api.call("GET", "/analytics/dashboard")["data"]["total_tasks"]
    for _ in range(3):
        api.create(name=unique("counted"), queue=unique("overview"))
    after = api.call("GET", "/analytics/dashboard")["data"]["total_tasks"]
    assert after >= before + 3
    # Live from /ws/metrics: no reload.
    expect(total).to_have_text(f"{after:,}", timeout=SOON_MS)
    expect(page.raw.locator("#live-state")).to_have_text("live")
    for chart in ("#chart-throughput", "#chart-completion", "#chart-errors", "#chart-duration"):
        expect(page.raw.locator(f"{chart} svg")).to_have_count(1)


def test_the_charts_plot_the_trends(page: Page, ui_server: UiServer) -> None:
    """From /analytics/trends (not the export): one point a day, the days nothing finished
    left out of the rate lines, each point's hover text the day's value."""
    api = ui_server.api
    queue = unique("trend")
    done, bad = api.create(name="ok", queue=queue), api.create(name="bad", queue=queue)
    for t in api.lease(queue, worker_id="trend-worker"):
        if t["id"] == done["id"]:
            api.as_worker("POST", f"/tasks/{t['id']}/complete", {"lease_id": t["lease"]["id"]})
        else:
            assert t["id"] == bad["id"]
            api.as_worker("POST", f"/tasks/{t['id']}/fail", {"lease_id": t["lease"]["id"],
                          "error": "boom", "retry": False})  # fmt: skip
    asked: list[str] = []
    page.raw.on("request", lambda r: asked.append(r.url) if "/api/v1/analytics/" in r.url else None)
    with page.raw.expect_response(lambda r: "/analytics/trends?days=30" in r.url) as got:
        page.raw.select_option("#days", "30")
    assert got.value.ok
    series = api.call("GET", "/analytics/trends?days=30")["data"]["series"]
    expect(page.raw.locator("#chart-duration svg rect.bar")).to_have_count(30)
    finished = [p for p in series if p["completion_rate"] + p["error_rate"] > 0]
    assert finished, "today has finished tasks"

    def percent(v: float) -> str:
        return f"{v * 100:.{1 if 0 < v < 0.1 else 0}f}%"

    errors = page.raw.locator("#chart-errors circle.dot title")
    expect(errors).to_have_count(len(finished))
    assert errors.all_text_contents() == [
        f"{p['date'][5:]}: {percent(p['error_rate'])}" for p in finished
    ]
    completion = page.raw.locator("#chart-completion circle.dot title")
    assert completion.last.text_content() == (
        f"{finished[-1]['date'][5:]}: {percent(finished[-1]['completion_rate'])}"
    )
    throughput = page.raw.locator("#chart-throughput rect.bar title")
    expect(throughput).to_have_count(30)
    assert throughput.last.text_content() == (
        f"{series[-1]['date'][5:]}: {series[-1]['completed'] + series[-1]['failed']:,}"
    )
    assert not [u for u in asked if "/analytics/export" in u]  # the charts need no export


def test_export_downloads_json_and_csv(page: Page) -> None:
    with page.raw.expect_download() as got:
        page.raw.click("#export-csv")
    download = got.value
    assert download.suggested_filename == "dtq-analytics-7d.csv"
    text = Path(download.path()).read_text()
    assert text.startswith("date,created,completed,failed")
    assert len(text.strip().splitlines()) == 1 + 7
    with page.raw.expect_download() as got:
        page.raw.click("#export-json")
    assert '"daily"' in Path(got.value.path()).read_text()


def test_a_new_task_appears_in_the_list_without_a_reload(page: Page, ui_server: UiServer) -> None:
    page.goto("/ui/tasks")
    expect(page.raw.locator("#tasks-summary")).not_to_have_text("Loading…")
    page.raw.evaluate("window.__same_document = true")
    name = unique("live")
    task = ui_server.api.create(name=name)
    row = page.raw.locator(f'#tasks-body tr[data-id="{task["id"]}"]')
    expect(row).to_be_visible(timeout=LIVE_S * 1000)
    expect(row).to_contain_text(name)
    expect(row.locator(".badge")).to_have_text("pending")
    # and it changes live: leased by a worker, it shows as running
    queue = unique("live")
    other = ui_server.api.create(name=name, queue=queue)
    expect(page.raw.locator(f'#tasks-body tr[data-id="{other["id"]}"]')).to_be_visible()
    assert [t["id"] for t in ui_server.api.lease(queue)] == [other["id"]]
    running = page.raw.locator(f'#tasks-body tr[data-id="{other["id"]}"] .badge')
    expect(running).to_have_text("running", timeout=LIVE_S * 1000)
    assert page.raw.evaluate("window.__same_document") is True


def test_filters_pagination_and_search(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    queue = unique("paged")
    tasks = api.call("POST", "/tasks/batch", {"tasks": [
        {"name": "paged job", "queue": queue, "priority": "high" if i % 3 == 0 else "low",
         "payload": {"i": i}, "tags": ["even"] if i % 2 == 0 else []}
        for i in range(30)
    ]}, status=201)["data"]  # fmt: skip
    page.goto("/ui/tasks")
    page.raw.fill("#f-queue", queue)
    page.raw.select_option("#f-limit", "25")  # applies the form at once
    expect(page.raw.locator("#tasks-summary")).to_have_text(f"Showing 1{DASH}25 of 30 tasks")
    expect(page.raw.locator("#tasks-body tr")).to_have_count(25)
    expect(page.raw.locator("#page-info")).to_have_text("Page 1 of 2")
    assert "queue=" in page.raw.url  # the filters are in the URL: a reload keeps them
    page.raw.click("#next")
    expect(page.raw.locator("#tasks-summary")).to_have_text(f"Showing 26{DASH}30 of 30 tasks")
    expect(page.raw.locator("#next")).to_be_disabled()
    # newest first by default, so the last page holds the first five created
    first_five = {t["id"] for t in tasks[:5]}
    shown = set(
        page.raw.locator("#tasks-body tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    )
    assert shown == first_five
    page.raw.select_option("#f-priority", "high")
    expect(page.raw.locator("#tasks-summary")).to_have_text(f"Showing 1{DASH}10 of 10 tasks")
    page.raw.select_option("#f-order", "asc")
    expect(page.raw.locator("#tasks-body tr").first).to_have_attribute("data-id", tasks[0]["id"])
    page.raw.reload()
    expect(page.raw.locator("#tasks-summary")).to_have_text(f"Showing 1{DASH}10 of 10 tasks")
    expect(page.raw.locator("#f-priority")).to_have_value("high")
    # tag and time filters (issue 12's list filters)
    page.raw.select_option("#f-priority", "")
    page.raw.fill("#f-tag", "even")
    page.raw.click("#filters button[type=submit]")
    expect(page.raw.locator("#tasks-summary")).to_have_text(f"Showing 1{DASH}15 of 15 tasks")
    page.raw.fill("#f-before", "2000-01-01T00:00")
    page.raw.click("#filters button[type=submit]")
    expect(page.raw.locator("#tasks-summary")).to_have_text("No tasks match")
    page.raw.click("#f-clear")
    expect(page.raw.locator("#f-queue")).to_have_value("")
    # a task id typed in the search box opens that task
    page.raw.fill("#search", tasks[7]["id"])
    page.raw.press("#search", "Enter")
    page.raw.wait_for_url(f"{page.url}/ui/tasks/{tasks[7]['id']}")
    expect(page.raw.locator("#task-fields")).to_contain_text(tasks[7]["id"])


def test_cancel_and_delete_from_the_task_page(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    task = api.create(name=unique("to-cancel"), queue=unique("cancel"), payload={"n": 1})
    page.goto(f"/ui/tasks/{task['id']}")
    expect(page.raw.locator("#task-title .badge")).to_have_text("pending")
    page.raw.click('#task-actions [data-action="cancel"]')
    confirm(page)
    expect(page.raw.locator("#task-title .badge")).to_have_text("cancelled")
    assert api.task(task["id"])["status"] == "cancelled"  # checked through the API
    expect(page.raw.locator('#task-actions [data-action="cancel"]')).to_have_count(0)
    # a dismissed confirmation changes nothing
    page.raw.click('#task-actions [data-action="delete"]')
    page.raw.keyboard.press("Escape")
    expect(page.raw.locator("dialog[open]")).to_have_count(0)
    assert api.task(task["id"])["status"] == "cancelled"
    page.raw.click('#task-actions [data-action="delete"]')
    confirm(page)
    page.raw.wait_for_url(f"{page.url}/ui/tasks")
    api.call("GET", f"/tasks/{task['id']}", status=404)


def test_a_failed_task_shows_its_error_and_timeline_and_retries(
    page: Page, ui_server: UiServer
) -> None:
    api = ui_server.api
    queue = unique("retry")
    task = api.create(name=unique("flaky"), queue=queue, retry_count=0)
    (leased,) = api.lease(queue)
    api.as_worker("POST", f"/tasks/{task['id']}/fail", {
        "lease_id": leased["lease"]["id"],
        "error": {"message": "disk on fire", "type": "OSError",
                  "traceback": "Traceback (most recent call last):\n  boom\nOSError: disk on fire"},
    })  # fmt: skip
    assert api.task(task["id"])["status"] == "failed"
    page.goto(f"/ui/tasks/{task['id']}")
    expect(page.raw.locator("#task-title .badge")).to_have_text("failed")
    data = page.raw.locator("#task-data")
    expect(data).to_contain_text("disk on fire")
    expect(data.locator('pre[aria-label="Traceback"]')).to_contain_text("OSError: disk on fire")
    timeline = page.raw.locator("#timeline")
    expect(timeline).to_contain_text("created")
    expect(timeline).to_contain_text("leased")
    expect(timeline).to_contain_text("failed")
    page.raw.click('#task-actions [data-action="retry"]')
    confirm(page)
    expect(page.raw.locator("#task-title .badge")).to_have_text("pending")
    assert api.task(task["id"])["status"] == "pending"  # checked through the API
    expect(timeline.locator("li").last).to_contain_text("retried", timeout=SOON_MS)
    # pending again, in a paused queue: the page says why it is not running
    api.call("POST", f"/queues/{queue}/pause")
    page.raw.reload()
    expect(page.raw.locator('#explain-list li[data-code="queue_paused"]')).to_be_visible()
    api.call("POST", f"/queues/{queue}/resume")


def test_pausing_a_queue_from_the_ui_stops_leasing(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    queue = unique("pausable")
    api.create(name="paused job", queue=queue)
    page.goto("/ui/queues")
    row = page.raw.locator(f'#queues-body tr[data-queue="{queue}"]')
    expect(row).to_be_visible()
    row.locator('[data-action="pause"]').click()
    expect(row.locator(".badge")).to_have_text("paused")
    assert api.call("GET", f"/queues/{queue}")["data"]["paused"] is True
    assert api.lease(queue) == []  # a paused queue grants no lease
    page.raw.locator(f'#queues-body tr[data-queue="{queue}"] [data-action="resume"]').click()
    expect(row.locator(".badge")).to_have_text("active")
    assert len(api.lease(queue)) == 1


def test_a_viewer_sees_no_actions(new_page: Any, ui_server: UiServer) -> None:
    api = ui_server.api
    task = api.create(name=unique("viewed"), queue=unique("viewer"))
    tab: Page = new_page()
    tab.sign_in("viewer", VIEWER_PASSWORD)
    tab.goto(f"/ui/tasks/{task['id']}")
    expect(tab.raw.locator("#task-fields")).to_contain_text(task["id"])
    expect(tab.raw.locator("#task-actions button")).to_have_count(0)
    for path in ("/ui/queues", "/ui/failed", "/ui/schedules"):
        tab.goto(path)
        expect(tab.raw.locator("[id$=summary]")).not_to_have_text("Loading…")
        expect(tab.raw.locator("main [data-action]")).to_have_count(0)
    # and the API refuses the viewer anyway
    token = tab.raw.evaluate("JSON.parse(sessionStorage.getItem('dtq.session')).token")
    import httpx

    refused = httpx.put(f"{ui_server.url}/api/v1/tasks/{task['id']}", json={"status": "cancelled"},
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert refused.status_code == 403


def test_a_hostile_task_name_shows_as_text(page: Page, ui_server: UiServer) -> None:
    name = "<img src=x onerror=alert(1)>"
    queue = unique("xss")
    task = ui_server.api.create(
        name=name, queue=queue, description="<script>alert(2)</script>", tags=["<b>t</b>"],
        payload={"html": "<svg onload=alert(3)>"},
    )  # fmt: skip
    page.goto(f"/ui/tasks?queue={queue}")
    link = page.raw.locator("#tasks-body a.task-name")
    expect(link).to_have_text(name)
    page.goto(f"/ui/tasks/{task['id']}")
    expect(page.raw.locator("#task-title")).to_contain_text(name)
    expect(page.raw.locator("#task-fields")).to_contain_text("<script>alert(2)</script>")
    expect(page.raw.locator("#task-data")).to_contain_text("<svg onload=alert(3)>")
    assert page.raw.locator("main img, main script, main svg[onload], main b").count() == 0
    # (an alert would have been recorded as a problem by the page fixture)


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_loads_cleanly_at_desktop_and_phone_width(new_page: Any, ui_server: UiServer,
                                                             width: int) -> None:  # fmt: skip
    task = ui_server.api.create(name=unique("looked-at"))
    tab: Page = new_page(width=width, height=844 if width < 500 else 900)
    tab.sign_in()
    for path in ("/ui/", "/ui/tasks", f"/ui/tasks/{task['id']}", "/ui/queues", "/ui/failed",
                 "/ui/workers", "/ui/schedules"):  # fmt: skip
        tab.goto(path)
        tab.raw.wait_for_load_state("networkidle")
        expect(tab.raw.locator("main .error:visible")).to_have_count(0)
        # Nothing wider than the screen: tables scroll inside their own box.
        overflow = tab.raw.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 1, (path, width, overflow)
    # Every control has a label the browser can name.
    tab.goto("/ui/tasks")
    unnamed = tab.raw.evaluate(
        """[...document.querySelectorAll('input, select')].filter(el =>
             !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).length"""
    )
    assert unnamed == 0


def test_screenshots_for_the_readme(page: Page, ui_server: UiServer, tmp_path: Path) -> None:
    """Overview, tasks and task pages with some finished work (docs/img with
    DTQ_UPDATE_SCREENSHOTS=1)."""
    api = ui_server.api
    queue = unique("shots")
    names = ["Process Data", "Send Email", "Resize Image", "Build Report"]
    made = api.call("POST", "/tasks/batch", {"tasks": [
        {"name": names[i % 4], "queue": queue, "priority": ["high", "medium", "low"][i % 3],
         "payload": {"file_path": f"/data/input-{i}.csv"}, "tags": ["import"]}
        for i in range(16)
    ]}, status=201)["data"]  # fmt: skip
    beat = {"worker_id": "worker-01", "status": "active", "current_load": 2, "max_capacity": 8}
    api.as_worker("POST", "/workers/heartbeat", beat)
    leased = api.lease(queue, worker_id="worker-01")
    for i, t in enumerate(leased[:8]):
        if i % 4 == 3:
            api.as_worker("POST", f"/tasks/{t['id']}/fail", {"lease_id": t["lease"]["id"],
                          "error": {"message": "timeout talking to smtp", "type": "TimeoutError"},
                          "retry": False})  # fmt: skip
        else:
            api.as_worker(
                "POST",
                f"/tasks/{t['id']}/complete",
                {"lease_id": t["lease"]["id"], "result": {"rows": 100 + i}},
            )
    target = screenshot_dir(tmp_path)
    page.goto("/ui/")
    expect(page.raw.locator("#chart-duration rect.bar").last).to_be_visible()
    page.raw.wait_for_load_state("networkidle")
    page.raw.screenshot(path=str(target / "overview.png"), full_page=True)
    page.goto("/ui/tasks")
    expect(page.raw.locator("#tasks-body tr").first).to_be_visible()
    page.raw.screenshot(path=str(target / "tasks.png"))
    page.goto(f"/ui/tasks/{made[0]['id']}")
    expect(page.raw.locator("#task-data")).to_contain_text("Result")
    page.raw.wait_for_load_state("networkidle")
    page.raw.screenshot(path=str(target / "task.png"), full_page=True)
    for name in ("overview.png", "tasks.png", "task.png"):
        assert (target / name).stat().st_size > 10_000


def test_failed_work_is_grouped_and_retried_in_bulk(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    queue = unique("redrive")
    for name, kind in (("import", "ValueError"), ("import", "ValueError"), ("mail", "SMTPError")):
        task = api.create(name=name, queue=queue, retry_count=0)
        (leased,) = api.lease(queue)
        api.as_worker("POST", f"/tasks/{task['id']}/fail",
                      {"lease_id": leased["lease"]["id"],
                       "error": {"message": f"{kind} happened", "type": kind}})  # fmt: skip
    page.goto(f"/ui/failed?queue={queue}")
    rows = page.raw.locator("#groups-body tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("import")
    expect(rows.first).to_contain_text("ValueError")
    expect(rows.first.locator("td.num")).to_have_text("2")
    page.raw.click('#bulk-actions [data-action="retry"]')
    confirm(page)
    expect(page.raw.locator("#toasts")).to_contain_text("3 of 3 matching tasks retried")
    listed = api.call("GET", f"/tasks?queue={queue}&status=pending")
    assert listed["pagination"]["total"] == 3  # checked through the API
    expect(page.raw.locator("#failed-summary")).to_have_text(f"No failed tasks in queue “{queue}”")


def test_schedules_pause_run_now_and_delete(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    name = unique("nightly")
    queue = unique("scheduled")
    api.call("POST", "/schedules", {"name": name, "cron": "0 3 * * *",
                                    "task": {"name": "report", "queue": queue}},
             status=201)  # fmt: skip
    page.goto("/ui/schedules")
    row = page.raw.locator(f'#schedules-body tr[data-schedule="{name}"]')
    expect(row).to_contain_text("0 3 * * *")
    expect(row.locator("time").first).to_have_attribute("title", re.compile(r"\d"))
    row.locator('[data-action="pause"]').click()
    expect(row.locator(".badge")).to_have_text("paused")
    assert api.call("GET", f"/schedules/{name}")["data"]["paused"] is True
    row.locator('[data-action="trigger"]').click()
    expect(row.locator("a")).to_have_text("task")  # the last run's task, linked
    assert api.call("GET", f"/tasks?queue={queue}")["pagination"]["total"] == 1
    row.locator('[data-action="delete"]').click()
    confirm(page)
    expect(row).to_have_count(0)
    api.call("GET", f"/schedules/{name}", status=404)


def test_keyboard_only(page: Page, ui_server: UiServer) -> None:
    task = ui_server.api.create(name=unique("keyboard"), queue=unique("keys"))
    page.goto(f"/ui/tasks?queue={task['queue']}")
    expect(page.raw.locator("#tasks-body tr")).to_have_count(1)
    page.raw.keyboard.press("Tab")
    assert page.raw.evaluate("document.activeElement.textContent") == "Skip to content"
    page.raw.keyboard.press("Enter")
    assert page.raw.evaluate("document.activeElement.id") == "main"
    # Tab order reaches the task's link; Enter opens it.
    for _ in range(40):
        page.raw.keyboard.press("Tab")
        if page.raw.evaluate("document.activeElement.classList.contains('task-name')"):
            break
    else:
        raise AssertionError("Tab never reached the task link")
    page.raw.keyboard.press("Enter")
    page.raw.wait_for_url(f"{page.url}/ui/tasks/{task['id']}")
    # Times are relative, with the exact time on hover.
    created = page.raw.locator("#task-fields time").first
    expect(created).to_have_text(re.compile(r"just now|\d+ s ago"))
    expect(created).to_have_attribute("title", re.compile(task["created_at"][:16]))
    # The confirmation takes the keyboard: Escape cancels, focus starts inside the dialog.
    page.raw.locator('#task-actions [data-action="cancel"]').focus()
    page.raw.keyboard.press("Enter")
    expect(page.raw.locator("dialog[open]")).to_have_count(1)
    assert page.raw.evaluate("document.activeElement.closest('dialog') !== null")
    page.raw.keyboard.press("Escape")
    expect(page.raw.locator("dialog[open]")).to_have_count(0)
    assert ui_server.api.task(task["id"])["status"] == "pending"


def test_workers_show_load_heartbeat_and_running_tasks_live(
    page: Page, ui_server: UiServer
) -> None:
    api = ui_server.api
    worker = unique("w")
    queue = unique("busy")
    beat = {"worker_id": worker, "status": "active", "current_load": 1, "max_capacity": 4}
    api.as_worker("POST", "/workers/heartbeat", beat)
    task = api.create(name=unique("crunch"), queue=queue)
    page.goto("/ui/workers")
    row = page.raw.locator(f'#workers-body tr[data-worker="{worker}"]')
    expect(row).to_contain_text("1 / 4")
    expect(row.locator(".badge")).to_have_text("active")
    expect(row.locator("time")).to_have_attribute("title", re.compile(r"\d"))
    assert [t["id"] for t in api.lease(queue, worker_id=worker)] == [task["id"]]
    expect(row).to_contain_text(task["name"], timeout=LIVE_S * 1000)  # live: no reload
    api.as_worker("POST", "/workers/heartbeat", {**beat, "current_load": 3})
    expect(row).to_contain_text("3 / 4", timeout=LIVE_S * 1000)


def test_each_worker_shows_its_running_tasks_however_many_run(
    page: Page, ui_server: UiServer
) -> None:
    """A worker's tasks come from the list's worker_id filter, not from a sample of the running
    tasks: here 120 newer tasks run on another worker, and each row is still right."""
    api = ui_server.api
    mine, busy = unique("w"), unique("busy-w")
    for w in (mine, busy):
        api.as_worker("POST", "/workers/heartbeat",
                      {"worker_id": w, "status": "active", "current_load": 1, "max_capacity": 200})  # fmt: skip
    old = api.create(name=unique("old-one"), queue=unique("q"))
    assert [t["id"] for t in api.lease(old["queue"], worker_id=mine)] == [old["id"]]
    crowd = unique("crowd")
    api.call("POST", "/tasks/batch", {"tasks": [{"name": "crowd-task", "queue": crowd}
                                                for _ in range(120)]}, status=201)  # fmt: skip
    leased = 0
    while leased < 120:
        got = api.lease(crowd, worker_id=busy)
        assert got, "all 120 are pending"
        leased += len(got)
    page.goto("/ui/workers")
    expect(page.raw.locator(f'#workers-body tr[data-worker="{mine}"]')).to_contain_text(old["name"])
    busy_row = page.raw.locator(f'#workers-body tr[data-worker="{busy}"]')
    expect(busy_row.locator("li")).to_have_count(6)  # 5 tasks, then how many more
    expect(busy_row).to_contain_text("+115 more")


def test_a_long_history_comes_a_page_at_a_time(page: Page, ui_server: UiServer) -> None:
    api = ui_server.api
    task = api.create(name=unique("long"), queue=unique("hist"))
    (got,) = api.lease(task["queue"], worker_id="hist-worker")
    for _ in range(60):  # created, leased, 60 extensions: 62 events
        api.as_worker("POST", f"/tasks/{task['id']}/extend", {"lease_id": got["lease"]["id"]})
    page.goto(f"/ui/tasks/{task['id']}")
    timeline = page.raw.locator("#timeline > li")
    expect(timeline).to_have_count(50)
    expect(page.raw.locator("#events-info")).to_have_text(f"Events 1{DASH}50 of 62")
    expect(timeline.first).to_contain_text("created")
    expect(page.raw.locator("#events-prev")).to_be_disabled()
    page.raw.click("#events-next")
    expect(timeline).to_have_count(12)
    expect(page.raw.locator("#events-info")).to_have_text(f"Events 51{DASH}62 of 62")
    expect(page.raw.locator("#events-next")).to_be_disabled()
    page.raw.click("#events-prev")
    expect(timeline.first).to_contain_text("created")
