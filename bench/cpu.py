"""CPU seconds a system spends over a measured window, per role, read from /proc for its whole process tree.

Why /proc and not the load generator's view: requests/s hides what a request costs; on a shared box (or a
cluster, where ingress CPUs are bought per GPU of model) the cost is CPU time, and most of it is spent in
processes other than the model's: the HTTP proxy, the ingress, Ray's own daemons. Ray names its worker
processes (``ray::ServeReplica:<app>:<deployment>``), so each process's role is read from its command line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("proxy", "ingress", "embedder", "state", "ray", "other")


def role_of(cmdline: str) -> str:
    """The role of one process of the service, from its command line (Ray's process titles)."""
    if "haproxy" in cmdline or "ProxyActor" in cmdline:
        return "proxy"
    if "ServeReplica" in cmdline:
        if "Embedder" in cmdline:
            return "embedder"
        if "Ingress" in cmdline:
            return "ingress"
        return "other"
    if "classifier-shard" in cmdline or "ClassifierShard" in cmdline or "AccountsActor" in cmdline:
        return "state"
    ray_daemons = ("raylet", "gcs_server", "dashboard", "ServeController", "log_monitor", "monitor.py",
                   "runtime_env", "ray::IDLE", "default_worker.py", "ray/_private")
    if any(d in cmdline for d in ray_daemons):
        return "ray"
    return "other"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in clock ticks) of a live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Snapshot:
    """CPU ticks used so far by each process of one tree, and each process's role."""

    ticks: dict[int, int]
    roles: dict[int, str]


def snapshot(root: int) -> Snapshot:
    """Every live process descending from ``root`` (itself included): a process that exits inside the window
    loses its ticks, which is why windows are short and the service's processes are long-lived."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree.append(pid)
            todo.extend(children.get(pid, []))
    return Snapshot({p: stats[p][1] for p in tree}, {p: role_of(_cmdline(p)) for p in tree})


def cpu_by_role(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per role between two snapshots; processes started in between count from zero."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, ticks in after.ticks.items():
        used = ticks - before.ticks.get(pid, 0)
        out[after.roles[pid]] += max(0, used) / CLOCK_TICKS
    return out


def per_request_ms(seconds_by_role: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request, per role and in total."""
    if requests <= 0:
        return {}
    per = {role: 1000 * s / requests for role, s in seconds_by_role.items()}
    per["total"] = sum(per.values())
    return per
