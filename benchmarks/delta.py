"""A delta pass after a migration (issue 17): migrator `sync` beside imapsync `--delete2`.

    python3 benchmarks/delta.py [--messages 20000] [--quick]

Both tools first copy the same source account (the benchmark corpus) into a target user each.
Then the source changes as a mailbox does between two passes: flags changed on 1 % of the
messages, 0.5 % moved to another folder, 0.5 % deleted. Each tool then runs its delta pass
(migrator: `sync`; imapsync: its usual command with `--delete2`), timed; both targets are
compared with the source (per folder: every Message-ID with its flags); then migrator's pass runs
again unchanged (the no-op rerun). Writes benchmarks/results/delta.json and delta.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import ssl
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imapclient import IMAPClient

from benchmarks import deps
from benchmarks.corpus import CorpusSpec
from benchmarks.peers import (
    HOST,
    Job,
    Peer,
    Setup,
    _imap_source,
    _imap_target,
    _imapsync,
    _migrator,
    job_env,
)
from benchmarks.run import (
    BENCH,
    PASSWORD,
    git_rev,
    install_corpus,
    load_corpus,
    say,
    start_servers,
    timed,
)

RESULTS = BENCH / "results"
#: The change set, as fractions of the messages.
FLAGGED, MOVED, DELETED = 0.01, 0.005, 0.005


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="2,000 messages")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache")
    p.add_argument("--imapsync", type=Path, default=deps.DEFAULT_IMAPSYNC)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--timeout", type=float, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.messages = 2_000
    if args.timeout is None:
        args.timeout = 120 + args.messages / 20
    return args


def _client(setup: Setup, port: int, user: str) -> IMAPClient:
    context = ssl.create_default_context(cafile=str(setup.ca_file))
    client = IMAPClient(HOST, port=port, ssl=True, ssl_context=context, timeout=120)
    client.login(user, setup.password)
    return client


def change_source(setup: Setup, seed: int) -> dict[str, int]:
    """Flags on 1 %, moves of 0.5 %, deletions of 0.5 % of the source's messages."""
    rng = random.Random(f"delta-{seed}")
    client = _client(setup, setup.src.imaps_port, setup.src_user)
    folders = [
        name
        for flags, _, name in client.list_folders()
        if b"\\Noselect" not in flags and b"\\NoSelect" not in flags
    ]
    everything = []
    for folder in folders:
        client.select_folder(folder)
        everything += [(folder, uid) for uid in client.search("ALL")]
    total = len(everything)
    rng.shuffle(everything)
    n_flag, n_move, n_del = (max(1, round(total * f)) for f in (FLAGGED, MOVED, DELETED))
    flag, move = everything[:n_flag], everything[n_flag : n_flag + n_move]
    delete = everything[n_flag + n_move : n_flag + n_move + n_del]
    by_folder: dict[str, dict[str, list[int]]] = {}
    for kind, picked in (("flag", flag), ("move", move), ("delete", delete)):
        for folder, uid in picked:
            by_folder.setdefault(folder, {}).setdefault(kind, []).append(uid)
    for folder, kinds in by_folder.items():
        client.select_folder(folder)
        for i, uid in enumerate(kinds.get("flag", [])):
            # Alternately: read and flagged with a keyword; all flags taken away.
            if i % 2:
                client.add_flags([uid], [b"\\Seen", b"\\Flagged", b"$delta"])
            else:
                client.set_flags([uid], [])
        if kinds.get("move"):
            others = [f for f in folders if f != folder]
            for uid in kinds["move"]:
                client.move([uid], rng.choice(others))
        if kinds.get("delete"):
            client.delete_messages(kinds["delete"])
            client.expunge()
    client.logout()
    return {"messages": total, "flagged": n_flag, "moved": n_move, "deleted": n_del}


def contents(setup: Setup, port: int, user: str, separator: str) -> dict[str, Counter[Any]]:
    """Folder ('/'-separated) -> multiset of (Message-ID, flags) of the account's messages."""
    client = _client(setup, port, user)
    found: dict[str, Counter[Any]] = {}
    for flags, _, name in client.list_folders():
        if b"\\Noselect" in flags or b"\\NoSelect" in flags:
            continue
        client.select_folder(name, readonly=True)
        uids = client.search("ALL")
        items = (
            client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
        )
        seen: Counter[Any] = Counter()
        for item in items.values():
            header = item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b":", 1)[-1].strip()
            kept = frozenset(f for f in item[b"FLAGS"] if f not in (b"\\Recent",))
            seen[(header, kept)] += 1
        found["/".join(name.split(separator))] = seen
    client.logout()
    return {f: c for f, c in found.items() if c}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from tests.dovecot import DovecotServer

    started_at = datetime.now(UTC)
    started_load = os.getloadavg()[0]
    corpus = load_corpus(CorpusSpec(args.messages, args.seed), args)
    workdir = args.cache_dir / f"delta-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    servers: list[DovecotServer] = []
    figures: dict[str, Any] = {}
    try:
        src, dst, tls = start_servers(workdir, servers)
        setup = Setup(src, dst, tls.ca_file, PASSWORD, args.imapsync, None)
        install_corpus(src, setup.src_user, corpus)
        migrator_peer = Peer("migrator", "migrator", (), _migrator(_imap_source, _imap_target))
        imapsync_peer = Peer("imapsync", "imapsync", ("imapsync",), _imapsync)
        jobs = {
            peer.name: Job(peer, 1, f"delta-{peer.name}", workdir / "jobs" / peer.name)
            for peer in (migrator_peer, imapsync_peer)
        }
        for name, job in jobs.items():
            job.dir.mkdir(parents=True, exist_ok=True)
            dst.add_user(job.user, PASSWORD)
            command = job.peer.build(setup, job)
            seconds, rss, code, _ = timed(
                command.argv, job_env(command), job.dir / "first.log", args.timeout * 4
            )
            say(f"{name}: first copy {seconds:.1f} s, exit {code}")
            figures[f"{name}_first_seconds"] = round(seconds, 2)
        os.sync()
        figures["changes"] = change_source(setup, args.seed)
        say(f"source changed: {figures['changes']}")
        for name, job in jobs.items():
            command = job.peer.build(setup, job)
            argv = list(command.argv)
            if name == "migrator":
                argv[argv.index("copy")] = "sync"
            else:
                argv.append("--delete2")
            os.sync()
            seconds, rss, code, timed_out = timed(
                argv, job_env(command), job.dir / "delta.log", args.timeout
            )
            figures[f"{name}_delta_timed_out"] = timed_out
            say(f"{name}: delta pass {seconds:.2f} s, exit {code}, peak {rss or 0} kB")
            figures[f"{name}_delta_seconds"] = round(seconds, 3)
            figures[f"{name}_delta_exit"] = code
            figures[f"{name}_delta_rss_kb"] = rss
            if name == "migrator":
                rerun, _, rcode, _ = timed(
                    argv, job_env(command), job.dir / "rerun.log", args.timeout
                )
                say(f"{name}: no-op rerun {rerun:.2f} s, exit {rcode}")
                figures["migrator_rerun_seconds"] = round(rerun, 3)
        source = contents(setup, src.imaps_port, setup.src_user, "/")
        for name, job in jobs.items():
            target = contents(setup, dst.imaps_port, job.user, ".")
            equal = target == source
            figures[f"{name}_equal"] = equal
            if not equal:
                differ = sorted(
                    f for f in set(source) | set(target) if source.get(f) != target.get(f)
                )
                figures[f"{name}_differs_in"] = differ
            say(f"{name}: target equal to the source: {equal}")
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = None
    if figures.get("migrator_delta_seconds"):
        ratio = round(figures["imapsync_delta_seconds"] / figures["migrator_delta_seconds"], 1)
    data = {
        "started": started_at.isoformat(timespec="seconds"),
        "command": [sys.executable, "benchmarks/delta.py", *argv],
        "messages": args.messages,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "git": git_rev(),
            "load_before": started_load,
        },
        "figures": figures,
        "imapsync_over_migrator": ratio,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "delta.json").write_text(json.dumps(data, indent=2) + "\n")
    changes = figures.get("changes", {})
    table = "\n".join(
        [
            f"Delta pass over {args.messages:,} copied messages after {changes.get('flagged')} "
            f"flag changes, {changes.get('moved')} moves and {changes.get('deleted')} deletions "
            "at the source (benchmarks/delta.py):",
            "",
            "| tool | delta pass | converged and equal | no-op rerun |",
            "| --- | ---: | --- | ---: |",
            f"| migrator sync | {figures.get('migrator_delta_seconds')} s | "
            f"{figures.get('migrator_equal')} | {figures.get('migrator_rerun_seconds')} s |",
            f"| imapsync --delete2 | {figures.get('imapsync_delta_seconds')} s | "
            f"{figures.get('imapsync_equal')} | |",
            "",
            f"imapsync / migrator: {ratio}x",
            "",
        ]
    )
    (args.results / "delta.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
