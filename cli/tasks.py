"""Following a long operation's task until it ends, with a progress bar on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cli.client import ApiError, Client, q

POLL_S = 0.5


def wait_for_task(client: Client, task: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll ``task`` until it ends; return it when it succeeded, raise ``ApiError`` otherwise.

    The bar and the task's messages go to stderr, so ``-o json`` output stays parseable.
    """
    deadline = time.monotonic() + timeout
    shown = 0
    label = f"{task.get('op', 'task')} {task.get('vm_name', '')}".strip()
    with click.progressbar(length=100, label=label, file=sys.stderr, show_eta=False) as bar:
        while True:
            progress = int(task.get("progress", 0))
            if progress > shown:
                bar.update(progress - shown)
                shown = progress
            if task["state"] != "running":
                break
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"gave up waiting after {timeout:g}s: task {task['id']} is at {shown}% ({task['message']})")
            time.sleep(POLL_S)
            task = client.request("GET", f"/api/v1/tasks/{q(task['id'])}")
    click.echo(f"{label}: {task['state']} ({task['message']})", err=True)
    if task["state"] != "succeeded":
        raise ApiError(409, f"task_{task['state']}", f"{label} {task['state']}: {task['message']}")
    return task



def finish(client: Client, result: dict[str, Any], wait: bool, timeout: float, collection: str) -> dict[str, Any]:
    """With ``--wait``: follow the answer's task to its end, then show the object
    (``/api/v1/<collection>/<id>``) as it is now, or the task when the object is gone."""
    task = result.get("task")
    if not wait or task is None:
        return result
    task = wait_for_task(client, task, timeout)
    try:
        return client.request("GET", f"/api/v1/{collection}/{q(result['id'])}")
    except ApiError as exc:
        if exc.status == 404:
            return task
        raise
