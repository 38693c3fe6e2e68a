"""`dicom-appliance jobs ...`, `status`, and queueing `send` / `retrieve` through the daemon.

Everything here talks to the running daemon over its control socket; nothing opens the stores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.control import ApiError, control_socket_path
from appliance.control_client import ControlClient, DaemonUnavailable
from appliance.jobs import FINAL_STATES, JobState

COMMANDS = ("jobs", "status")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3
WAIT_POLL_SECONDS = 0.25

ATTEMPT_STARTED = re.compile(r"^attempt \d+ of \d+ started")
JOB_ACTIONS = ("pause", "resume", "cancel", "retry", "reroute", "priority")


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jobs = commands.add_parser("jobs", parents=[common], help="watch and act on the job queue")
    jobs_cmds = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_cmds.add_parser("list", parents=[common], help="the most recent jobs")
    listing.add_argument(
        "--state", action="append", default=[], help="only jobs in this state (repeatable)"
    )
    listing.add_argument("--kind", action="append", default=[], help="only this kind (repeatable)")
    listing.add_argument("--target", help="only jobs for this node")
    listing.add_argument("--limit", type=int, default=50, help="at most N jobs (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = jobs_cmds.add_parser("show", parents=[common], help="one job, per instance, with log")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="print JSON")
    for action, text in (
        ("pause", "hold a job (a running one stops after the current instance)"),
        ("resume", "queue a paused job again"),
        ("cancel", "stop a job for good"),
    ):
        parser = jobs_cmds.add_parser(action, parents=[common], help=text)
        parser.add_argument("id", type=int)
        parser.add_argument("--json", action="store_true", help="print JSON")
    retry = jobs_cmds.add_parser(
        "retry", parents=[common], help="try a waiting or ended job again now"
    )
    retry.add_argument("id", type=int)
    retry.add_argument(
        "--failed-only",
        "--failed",
        dest="failed_only",
        action="store_true",
        help="send only the instances that failed",
    )
    retry.add_argument("--json", action="store_true", help="print JSON")
    reroute = jobs_cmds.add_parser(
        "reroute", parents=[common], help="send a job to another node instead"
    )
    reroute.add_argument("id", type=int)
    reroute.add_argument("node")
    reroute.add_argument("--json", action="store_true", help="print JSON")
    priority = jobs_cmds.add_parser(
        "priority", parents=[common], help="change a job's priority (higher runs first)"
    )
    priority.add_argument("id", type=int)
    priority.add_argument("priority", type=int)
    priority.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser(
        "status", parents=[common], help="services, associations, disk and queue of the daemon"
    )
    status.add_argument("--json", action="store_true", help="print JSON")


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job ends; exit 0 only if it succeeded (3: succeeded with warnings)",
    )
    parser.add_argument("--priority", type=int, default=0, help="job priority, higher first")


def client_for(data_dir: Path) -> ControlClient:
    return ControlClient(control_socket_path(data_dir), role="service")


# --- formatting --------------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _progress(job: dict[str, Any]) -> str:
    counts = job.get("counts", {})
    total = counts.get("total", 0)
    done = counts.get("success", 0) + counts.get("warning", 0)
    failed = counts.get("failed", 0)
    text = f"{done}/{total}"
    return f"{text} ({failed} failed)" if failed else text


def _who(job: dict[str, Any]) -> str:
    summary = job.get("summary") or {}
    parts = [str(summary[k]) for k in ("patient_name", "patient_id") if summary.get(k)]
    if summary.get("study_description"):
        parts.append(str(summary["study_description"]))
    return " / ".join(parts) or "-"


def job_table(jobs: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'ID':>6}  {'KIND':<10} {'STATE':<16} {'TARGET':<14} {'PROGRESS':<16} "
        f"{'TRIES':>5}  {'NEXT RETRY':<19}  PATIENT / STUDY"
    ]
    for job in jobs:
        lines.append(
            f"{job['id']:>6}  {job['kind']:<10} {job['state']:<16} {job['target']:<14} "
            f"{_progress(job):<16} {job['attempts']:>5}  {_when(job.get('next_retry')):<19}  "
            f"{_who(job)}"
        )
    return lines


def instance_line(instance: dict[str, Any]) -> str:
    label = {"success": "success", "warning": "WARNING", "failed": "FAILURE"}.get(
        instance["status"], instance["status"]
    )
    code = instance.get("status_code") or "-"
    text = f"{label:<7}  {code:<6}  {instance['sop_instance_uid'] or '-'}"
    if instance.get("path"):
        text += f"  {instance['path']}"
    if instance.get("error"):
        text += f": {instance['error']}"
    return text


def job_summary(job: dict[str, Any]) -> str:
    counts = job.get("counts", {})
    return (
        f"job {job['id']} {job['state']}: {counts.get('success', 0)} success, "
        f"{counts.get('warning', 0)} warning, {counts.get('failed', 0)} failed, "
        f"{counts.get('pending', 0)} pending of {counts.get('total', 0)}"
        f" after {job['attempts']} attempt(s)"
    )


def job_detail_lines(job: dict[str, Any]) -> list[str]:
    lines = [
        f"job {job['id']}: {job['kind']} to {job['target']}, {job['state']}"
        + (f" ({job['stage']})" if job.get("stage") else ""),
        f"  priority {job['priority']}, attempts {job['attempts']}, "
        f"created {_when(job['created'])}, finished {_when(job.get('finished'))}",
    ]
    if job.get("next_retry") and job["state"] == JobState.WAITING_RETRY:
        lines.append(f"  next retry {_when(job['next_retry'])}")
    if job.get("error"):
        lines.append(f"  last error: {job['error']}")
    if _who(job) != "-":
        lines.append(f"  {_who(job)}")
    lines.append("instances:")
    lines.extend("  " + instance_line(i) for i in job.get("instances", []))
    lines.append("log:")
    lines.extend(f"  {_when(t)}  {text}" for t, text in job.get("log", []))
    lines.append(job_summary(job))
    return lines


def exit_code_for(job: dict[str, Any]) -> int:
    if job["state"] != JobState.SUCCEEDED:
        return EXIT_FAILED
    return EXIT_WARNINGS if job.get("counts", {}).get("warning") else EXIT_OK


# --- commands ----------------------------------------------------------------------------------


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def run(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        with client_for(data_dir) as client:
            if args.command == "status":
                return cmd_status(args, client)
            return cmd_jobs(args, client)
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_jobs(args: argparse.Namespace, client: ControlClient) -> int:
    command = args.jobs_command
    if command == "list":
        states = [s.strip() for item in args.state for s in item.split(",") if s.strip()]
        kinds = [k.strip() for item in args.kind for k in item.split(",") if k.strip()]
        jobs = client.call(
            "jobs.list",
            limit=args.limit,
            states=states or None,
            kinds=kinds or None,
            target=args.target,
        )
        if args.json:
            _print_json(jobs)
        else:
            print("\n".join(job_table(jobs)))
        return EXIT_OK
    if command == "show":
        job = client.call("jobs.show", id=args.id)
        if args.json:
            _print_json(job)
        else:
            print("\n".join(job_detail_lines(job)))
        return EXIT_OK
    extra: dict[str, Any] = {}
    action = command
    if command == "retry" and args.failed_only:
        action = "retry-failed"
    elif command == "reroute":
        extra["target"] = args.node
    elif command == "priority":
        extra["priority"] = args.priority
    job = client.call("jobs.action", id=args.id, action=action, **extra)
    if args.json:
        _print_json(job)
    else:
        print(
            f"job {job['id']}: {job['state']}"
            + (f" ({job['requested']} asked)" if job.get("requested") else "")
        )
    return EXIT_OK


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def cmd_status(args: argparse.Namespace, client: ControlClient) -> int:
    status = client.call("status")
    if args.json:
        _print_json(status)
        return EXIT_OK
    print(f"daemon {status['version']}, up {status['uptime']:.0f} s, data {status['data_dir']}")
    for service in status["services"]:
        print(
            f"service {service['name']}: {service['state']} as {service['ae_title']} on "
            f"{service['bind_address']}:{service['port']}"
        )
    associations = status["associations"]
    print(f"associations: {len(associations)}")
    for assoc in associations:
        print("  " + ", ".join(f"{k}={v}" for k, v in assoc.items()))
    disk = status["disk"]
    print(
        f"disk: {_size(disk['free'])} free of {_size(disk['total'])}, reserve "
        f"{_size(disk['reserve'])}" + (" (BELOW RESERVE)" if disk["low"] else "")
    )
    print(f"archive: {status['archive']['instances']} instances")
    jobs = status["jobs"]
    print("jobs: " + ", ".join(f"{n} {state}" for state, n in jobs.items()))
    return EXIT_OK


# --- send and retrieve through the daemon ------------------------------------------------------


def wait_for(
    client: ControlClient,
    job_id: int,
    *,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Block until the job ends; returns its final detail."""
    last: tuple[Any, ...] = ()
    while True:
        job = client.call("jobs.show", id=job_id)
        key = (job["state"], job.get("stage"), tuple(sorted(job["counts"].items())))
        if key != last and on_change is not None:
            on_change(job)
        last = key
        if job["state"] in FINAL_STATES:
            return job
        time.sleep(WAIT_POLL_SECONDS)


def _say_progress(job: dict[str, Any]) -> None:
    line = f"job {job['id']}: {job['state']}"
    if job.get("stage"):
        line += f" ({job['stage']})"
    line += f", {_progress(job)}"
    if job["state"] == JobState.WAITING_RETRY:
        line += f", next attempt {_when(job.get('next_retry'))}: {job.get('error', '')}"
    print(line, file=sys.stderr, flush=True)


def queue_job(
    data_dir: Path,
    *,
    kind: str,
    target: str,
    params: dict[str, Any],
    priority: int,
    wait: bool,
    as_json: bool,
) -> int | None:
    """Queue a job in the daemon and report it; None when no daemon is running (the caller
    then does the work itself, once, without a job to retry it)."""
    try:
        client = client_for(data_dir)
        client.call("hello")
    except DaemonUnavailable:
        print(
            f"note: the daemon is not running; {kind} runs directly (no job, no retries)",
            file=sys.stderr,
        )
        return None
    with client:
        try:
            job = client.call(
                "jobs.submit", kind=kind, target=target, params=params, priority=priority
            )
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.code in ("invalid", "not-found", "bad-request") else 1
        if not wait:
            if as_json:
                _print_json(job)
            else:
                print(job["id"])
                print(
                    f"queued {kind} job {job['id']} to {target}; follow it with "
                    f"`dicom-appliance jobs show {job['id']}`",
                    file=sys.stderr,
                )
            return EXIT_OK
        print(f"job {job['id']} queued: {kind} to {target}", file=sys.stderr, flush=True)
        final = wait_for(client, job["id"], on_change=None if as_json else _say_progress)
    if as_json:
        _print_json(final)
    else:
        for instance in final.get("instances", []):
            print(instance_line(instance))
        for _when_logged, text in last_attempt_log(final):
            print(f"log: {text}")
        if final.get("error") and final["state"] != JobState.SUCCEEDED:
            print(f"error: {final['error']}")
        print(job_summary(final))
    return exit_code_for(final)


def last_attempt_log(job: dict[str, Any]) -> list[list[Any]]:
    """The log lines of the job's last attempt: what happened, in the runner's own words."""
    log = job.get("log", [])
    starts = [n for n, (_, text) in enumerate(log) if ATTEMPT_STARTED.match(str(text))]
    return log[starts[-1] :] if starts else log
