"""migrator against imapsync, mbsync and doveadm backup, side by side, on two private Dovecots.

    python3 benchmarks/run.py [--messages 20000] [--rounds 3] [--quick] [--peers a,b,...]

See benchmarks/README.md for what is measured and what each column means.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import corpus as corpus_mod
from benchmarks import deps, report
from benchmarks.corpus import Corpus, CorpusSpec
from benchmarks.peers import DEFAULT_PEERS, HOST, PEERS, Job, Peer, Setup, job_env
from benchmarks.report import Run
from benchmarks.verify import Compare, Verdict, verify_imap, verify_mbox

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PASSWORD = "bench-pa55word"
CORE = ("dovecot", "time", "trustme")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Time migrator against imapsync, mbsync and doveadm backup on one corpus.",
    )
    p.add_argument("--messages", type=int, help="corpus size (default 20000; 2000 with --quick)")
    p.add_argument("--rounds", type=int, help="rounds, medians taken (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: 2,000 messages, 1 round")
    p.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help=f"comma-separated, from: {','.join(PEERS)} (default: all)",
    )
    p.add_argument("--workers", type=int, help="migrator --workers (default: migrator's own)")
    p.add_argument("--pop-messages", type=int, help="POP3 corpus size (default messages/4)")
    p.add_argument("--seed", type=int, default=7, help="corpus seed (default 7)")
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache", help="corpus cache")
    p.add_argument("--imapsync", type=Path, default=deps.DEFAULT_IMAPSYNC, help="imapsync script")
    p.add_argument("--timeout", type=float, help="per command, seconds (default 120 + msgs/20)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where latest.json/.md go")
    p.add_argument(
        "--profile",
        type=Path,
        help="record migrator's full copies with py-spy into this directory (slows them down)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: re-derive the table from this latest.json and write --results",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the servers and targets' files afterwards (debugging)",
    )
    args = p.parse_args(argv)
    args.messages = args.messages or (2000 if args.quick else 20000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.pop_messages = args.pop_messages or max(100, args.messages // 4)
    args.timeout = args.timeout or 120 + args.messages / 20
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    args.peer_names = names
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


# -- requirements -------------------------------------------------------------------------------


def check_requirements(args: argparse.Namespace) -> tuple[list[Peer], dict[str, str], dict]:
    """Check everything up front; return the peers that can run and why the others cannot."""
    checks = deps.check_all(args.imapsync)
    say("Requirements (nothing is installed by this script):")
    for check in checks.values():
        state = "ok" if check.ok else "MISSING"
        say(f"  {check.name:<22} {state:<8} {check.detail}")
        if not check.ok and check.remedy():
            for line in check.remedy().splitlines():
                say(f"  {'':<22} -> {line}")
    core = [checks[n] for n in CORE if not checks[n].ok]
    if core:
        say("\nCannot run without the above; install what is listed and run again.")
        sys.exit(2)
    peers, skipped = [], {}
    for name in args.peer_names:
        peer = PEERS[name]
        missing = [checks[n] for n in peer.needs if not checks[n].ok]
        if missing:
            why = "; ".join(f"{c.name}: {c.detail}" for c in missing)
            remedies = " && ".join(c.remedy() for c in missing if c.remedy())
            skipped[name] = why + (f" (to enable: {remedies})" if remedies else "")
            say(f"  skipping {name}: {skipped[name]}")
        else:
            peers.append(peer)
    versions = {name: c.detail for name, c in checks.items() if c.ok}
    return peers, skipped, versions


# -- running one timed command ------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's whole process group, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_servers(workdir: Path, servers: list[Any]) -> tuple[Any, Any, Any]:
    """The benchmarks' two Dovecots on loopback (source separator '/', target '.', each syncing
    to disk as a real server does) and their CA; each is added to ``servers`` before it starts,
    so the caller's cleanup stops whatever did start."""
    from tests.dovecot import DovecotServer, make_ca

    tls = make_ca(workdir / "tls")
    src = DovecotServer(workdir / "src", separator="/", tls=tls, mail_fsync="optimized")
    dst = DovecotServer(workdir / "dst", separator=".", tls=tls, mail_fsync="optimized")
    servers += [src, dst]
    src.start()
    dst.start()
    return src, dst, tls


def timed(
    argv: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[float, int | None, int | None, bool]:
    """Run under ``/usr/bin/time -v``: (wall seconds, peak RSS kB, exit code, timed out)."""
    tfile = log.with_suffix(".time")
    tfile.unlink(missing_ok=True)
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [deps.TIME, "-v", "-o", str(tfile), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=deps.REPO,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            raise
        seconds = time.monotonic() - started
    rss = code = signalled = None
    with contextlib.suppress(OSError):
        for line in tfile.read_text(errors="replace").splitlines():
            key, _, value = line.strip().rpartition(": ")
            if key == "Maximum resident set size (kbytes)":
                rss = int(value)
            elif key == "Exit status":
                code = int(value)
            elif line.startswith("Command terminated by signal "):
                signalled = int(line.rsplit(" ", 1)[1])
    if signalled is not None:  # GNU time then reports "Exit status: 0"
        code = 128 + signalled
    if code is None and not timed_out:
        code = proc.returncode
    return seconds, rss, code, timed_out


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- set-up ----------------------------------------------------------------------------------


def load_corpus(spec: CorpusSpec, args: argparse.Namespace) -> Corpus:
    """From the cache, or generated (and cached) now."""
    from tests.dovecot import DEFAULT_MAIL_GID, DEFAULT_MAIL_UID

    started = time.monotonic()
    key = args.cache_dir / spec.key
    fresh = not (key / "manifest.json").exists()
    if fresh:
        say(f"Generating corpus {spec.key} into {key} ...")
    c = corpus_mod.cached(spec, args.cache_dir, DEFAULT_MAIL_UID, DEFAULT_MAIL_GID)
    how = f"generated in {time.monotonic() - started:.0f} s" if fresh else "from the cache"
    say(
        f"Corpus {spec.key}: {c.messages:,} messages, {c.total_bytes / 1e6:,.0f} MB "
        f"(largest {c.largest / 1e6:.1f} MB) in {len(c.folders)} folder(s), {how}"
    )
    return c


def install_corpus(server, user: str, c: Corpus) -> None:
    """Hard-link the cached Maildir into *user*'s home, then let Dovecot index it."""
    server.add_user(user, PASSWORD)
    home = server.home(user)
    target = home / "Maildir"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-al", str(c.maildir), str(target)], check=True, timeout=600)
    for dirpath, _dirs, _files in os.walk(target):
        os.chown(dirpath, server.mail_uid, server.mail_gid)
    server.doveadm("force-resync", "-u", user, "*", timeout=600)
    folders = [server.mailbox_name(f) for f in c.folders if f != "INBOX"]
    if folders:
        server.doveadm("mailbox", "subscribe", "-u", user, *folders)
    server.doveadm("index", "-u", user, "*", timeout=600)


def target_counts(server, user: str) -> dict[str, int]:
    """Messages per folder of a target user, by doveadm (no IMAP): the cheap check after reruns."""
    out = server.doveadm("-f", "tab", "mailbox", "status", "-u", user, "messages", "*")
    counts = {}
    for line in out.splitlines()[1:]:
        name, _, n = line.rpartition("\t")
        name = "/".join(name.split(server.separator))
        counts["INBOX" if name.upper() == "INBOX" else name] = int(n)
    return counts


def count_problems(expected: Corpus, got: dict[str, int]) -> list[str]:
    problems = []
    for folder in sorted(set(expected.folders) | set(got)):
        want, have = len(expected.folders.get(folder, [])), got.get(folder, 0)
        if want != have:
            problems.append(f"after rerun {folder}: {have} messages, expected {want}")
    return problems


# -- one job ---------------------------------------------------------------------------------


def check_target(peer: Peer, setup: Setup, job: Job, c: Corpus, log: Path) -> Verdict:
    """Does the target now hold exactly the source's messages?"""
    if peer.target == "imap":
        return verify_imap(
            c,
            HOST,
            setup.dst.imaps_port,
            job.user,
            setup.password,
            str(setup.ca_file),
            peer.compare,
        )
    if peer.target == "mbox":
        return verify_mbox(c, job.dir / "mbox", peer.compare)
    # fetch-only prints how many bodies it read
    text = log.read_text(errors="replace").split()
    seen = int(text[0]) if text and text[0].isdigit() else -1
    problems = [] if seen == c.messages else [f"fetched {seen} bodies, expected {c.messages}"]
    return Verdict(not problems, "bodies fetched (count)", problems)


def run_job(
    peer: Peer,
    setup: Setup,
    job: Job,
    c: Corpus,
    timeout: float,
    keep: bool = False,
    profile: Path | None = None,
) -> list[Run]:
    """Full copy into an empty target, check it, then the no-op rerun; remove the target."""
    job.dir.mkdir(parents=True, exist_ok=True)
    if peer.target == "imap":
        setup.dst.add_user(job.user, setup.password)
    runs = []
    try:
        for phase in ("full", "rerun") if peer.rerun else ("full",):
            command = peer.build(setup, job)
            log = job.dir / f"{phase}.log"
            argv = command.argv
            if profile is not None and peer.name.startswith("migrator") and phase == "full":
                profile.mkdir(parents=True, exist_ok=True)
                out = profile / f"{peer.name}-r{job.round}.speedscope.json"
                spy = ["py-spy", "record", "--idle", "--threads", "--format", "speedscope"]
                argv = [*spy, "--rate", "200", "-o", str(out), "--", *argv]
            # Start every command with nothing dirty in the page cache: on ext4 an fsync also
            # writes out what the previous peer left behind, which would bill it to this one.
            os.sync()
            load_before = os.getloadavg()[0]
            seconds, rss, code, timed_out = timed(argv, job_env(command), log, timeout)
            run = Run(peer.name, job.round, phase, round(seconds, 3), rss, code, timed_out)
            run.load_before, run.load_after = load_before, os.getloadavg()[0]
            if not run.ok:
                run.output_tail = _tail(log)
            checking = time.monotonic()
            if phase == "full":
                verdict = check_target(peer, setup, job, c, log)
                run.equal, run.compared, run.problems = (
                    verdict.equal,
                    verdict.compared,
                    verdict.problems,
                )
            elif peer.target == "imap":
                run.problems = count_problems(c, target_counts(setup.dst, job.user))
            elif peer.target == "mbox":
                run.problems = verify_mbox(
                    c, job.dir / "mbox", Compare(False, False, False)
                ).problems
            run.check_seconds = round(time.monotonic() - checking, 2)
            runs.append(run)
            rss_text = f"{rss / 1024:.0f} MB" if rss else "? MB"
            status = "ok" if run.ok else ("TIMED OUT" if timed_out else f"EXIT {code}")
            extra = ""
            if phase == "full":
                extra = ", equal" if run.equal else ", NOT EQUAL: " + "; ".join(run.problems[:3])
            elif run.problems:
                extra = ", " + "; ".join(run.problems[:3])
            check = f"checked in {run.check_seconds:.1f} s, load {run.load_after:.1f}"
            say(f"    {phase:<5} {seconds:8.2f} s  {rss_text:>7}  {status}{extra} ({check})")
            if not run.ok and run.output_tail:
                say("      | " + run.output_tail.replace("\n", "\n      | "))
    finally:
        if not keep:  # 810 MB per target: the disk would fill over the rounds
            if peer.target == "imap":
                shutil.rmtree(setup.dst.home(job.user), ignore_errors=True)
            shutil.rmtree(job.dir, ignore_errors=True)
    return runs


def time_help(timeout: float = 30) -> float | None:
    """Median wall time of ``python3 -m migrator --help`` over five runs (start-up cost)."""
    times = []
    env = {**os.environ, "PYTHONPATH": str(deps.REPO)}
    for _ in range(5):
        started = time.monotonic()
        res = subprocess.run(
            [sys.executable, "-m", "migrator", "--help"],
            capture_output=True,
            env=env,
            cwd=deps.REPO,
            timeout=timeout,
        )
        if res.returncode != 0:
            return None
        times.append(time.monotonic() - started)
    return statistics.median(times)


# -- output ----------------------------------------------------------------------------------


def compile_package() -> None:
    """Byte-compile migrator as ``pip install`` does, so that no timed run compiles its sources
    (a checkout does at every start when PYTHONDONTWRITEBYTECODE is set or its caches are stale)."""
    compileall.compile_dir(deps.REPO / "migrator", quiet=1)


def git_rev() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(
            ["git", "-C", str(deps.REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return res.stdout.strip()
    return "?"


def results_stem(data: dict) -> str:
    """``latest`` for a run that finished; an interrupted run's partial figures go beside it
    (``interrupted``), never over the last complete table."""
    return "interrupted" if data.get("interrupted") else "latest"


def write_results(path: Path, data: dict, markdown: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    stem = results_stem(data)
    (path / f"{stem}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    (path / f"{stem}.md").write_text(markdown)
    return path / stem


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        publish(json.loads(args.from_json.read_text()), args.results)
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    started_at = datetime.now(UTC)
    say(
        f"migrator benchmark: {args.messages:,} messages, {args.rounds} round(s), "
        f"peers {','.join(args.peer_names)}"
    )
    peers, skipped, versions = check_requirements(args)
    if not peers:
        say("No peer can run.")
        return 2
    if args.profile is not None and shutil.which("py-spy") is None:
        say(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
        return 2
    from tests.dovecot import DovecotServer

    main_corpus = load_corpus(CorpusSpec(args.messages, args.seed), args)
    pop_corpus = None
    if any(p.corpus == "pop" for p in peers):
        pop_corpus = load_corpus(CorpusSpec(args.pop_messages, args.seed, "pop"), args)
    corpora = {"imap": main_corpus, "pop": pop_corpus}

    workdir = args.cache_dir / f"run-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    servers: list[DovecotServer] = []
    runs: list[Run] = []
    help_s: float | None = None
    interrupted: str | None = None
    try:
        src, dst, tls = start_servers(workdir, servers)
        setup = Setup(src, dst, tls.ca_file, PASSWORD, args.imapsync, args.workers)
        t0 = time.monotonic()
        install_corpus(src, setup.src_user, main_corpus)
        if pop_corpus is not None:
            install_corpus(src, setup.pop_user, pop_corpus)
        verdict = verify_imap(
            main_corpus, HOST, src.imaps_port, setup.src_user, PASSWORD, str(tls.ca_file), Compare()
        )
        if not verdict.equal:
            say(
                "The source server does not serve the corpus as generated: " + str(verdict.problems)
            )
            return 1
        elapsed = time.monotonic() - t0
        say(f"Source ready and checked in {elapsed:.0f} s (Dovecot {versions['dovecot']})")
        compile_package()
        help_s = time_help() if any(p.name.startswith("migrator") for p in peers) else None
        if help_s is not None:
            say(f"`migrator --help`: {help_s:.2f} s (median of 5)")
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(peers)
            order = peers[shift:] + peers[:shift]
            say(f"\nRound {rnd}/{args.rounds}: {', '.join(p.name for p in order)}")
            for peer in order:
                c = corpora[peer.corpus]
                assert c is not None
                say(f"  {peer.name}")
                job = Job(
                    peer, rnd, f"r{rnd}-{peer.name}", workdir / "jobs" / f"r{rnd}-{peer.name}"
                )
                runs += run_job(peer, setup, job, c, args.timeout, args.keep, args.profile)
    except KeyboardInterrupt as exc:
        interrupted = str(exc) or "SIGINT"
        say(f"\nInterrupted ({interrupted}): stopping the servers, writing what was measured.")
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()
        if args.keep:
            say(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    data = {
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "command": [sys.executable, "benchmarks/run.py", *argv],
        "params": {
            "messages": args.messages,
            "pop_messages": args.pop_messages if pop_corpus else None,
            "rounds": args.rounds,
            "seed": args.seed,
            "workers": args.workers,
            "peers": [p.name for p in peers],
            "timeout": args.timeout,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": versions,
            "git": git_rev(),
        },
        "corpus": {
            name: None
            if c is None
            else {
                "key": c.spec.key,
                "messages": c.messages,
                "bytes": c.total_bytes,
                "largest": c.largest,
                "folders": {f: len(v) for f, v in c.folders.items()},
            }
            for name, c in corpora.items()
        },
        "labels": {p.name: _label(p, versions, args) for p in peers},
        "peer_corpus": {p.name: p.corpus for p in peers},
        "migrator_help_seconds": help_s,
        "runs": [r.as_dict() for r in runs],
        "skipped": skipped,
        "interrupted": interrupted,
    }
    if not runs:
        return 130
    publish(data, args.results)
    return 130 if interrupted else 0


def publish(data: dict[str, Any], results: Path) -> None:
    """Medians, table and ratios from the raw runs in *data*; print them and write both files.

    The same path serves ``--from-json``, so a table can always be re-derived from the raw
    figures (after changing how it is summarised, say).
    """
    runs = [Run(**r) for r in data["runs"]]
    corpus = data["corpus"]
    main_c, pop_c = corpus["imap"], corpus.get("pop")
    labels = data.get("labels") or {s["peer"]: s["label"] for s in data["summary"]}
    kinds = data.get("peer_corpus") or {peer: PEERS[peer].corpus for peer in labels}
    counts = {
        peer: (pop_c if kind == "pop" else main_c)["messages"] for peer, kind in kinds.items()
    }
    rows = report.summarise(runs, labels, counts)
    help_s = data.get("migrator_help_seconds")
    ratios = report.ratios(rows, main_c["largest"] / 1e6, help_s, main_c["messages"])
    machine = data["machine"]
    header = (
        f"Corpus: {main_c['messages']:,} messages / {main_c['bytes'] / 1e6:,.0f} MB in "
        f"{len(main_c['folders'])} folders (largest {main_c['largest'] / 1e6:.1f} MB)"
        + (f"; POP3 corpus {pop_c['messages']:,} messages in INBOX" if pop_c else "")
        + f". Medians of {data['params']['rounds']} round(s) over the runs that exited 0 with "
        f"an equal target; two Dovecot {machine['versions']['dovecot']} servers on loopback, "
        f"IMAPS, mail_fsync=optimized; {machine['cpus']} CPUs; 1-minute load average at the end "
        f"of the timed commands: median {_load(runs)} (much above ~2, the peer and its two "
        f"servers, means other work competed). Run {data['started']}, {data['seconds']:.0f} s, "
        f"git {machine['git']}."
    )
    if data.get("note"):
        header += f" Note: {data['note']}"
    if data.get("interrupted"):
        header = (
            f"**Interrupted ({data['interrupted']}) after {len(runs)} timed commands: partial "
            f"figures.** {header}"
        )
    md = [header, "", report.table(rows), "Issue 7's figures for migrator:", ""]
    md += [r.line() for r in ratios]
    md += ["", 'What "equal" compared, per peer:', ""]
    md += [f"- {r.label}: {r.compared}" for r in rows]
    problems = [r for r in runs if r.problems or not r.ok or r.equal is False]
    if problems:
        md += ["", "Problems (these runs are left out of the medians):", ""]
        for r in problems:
            text = "; ".join(r.problems[:5]) or f"exit {r.exit_code}, timed out {r.timed_out}"
            md.append(f"- {r.peer} round {r.round} {r.phase} ({r.seconds:.0f} s): {text}")
    if data.get("skipped"):
        md += ["", "Skipped:", ""] + [f"- {k}: {v}" for k, v in data["skipped"].items()]
    markdown = "\n".join(md) + "\n"
    say("\n" + markdown)
    data["summary"] = [vars(r) for r in rows]
    data["ratios"] = [vars(r) for r in ratios]
    stem = write_results(results, data, markdown)
    say(f"Raw figures: {stem}.json; table: {stem}.md")


def _load(runs: list[Run]) -> str:
    loads = [r.load_after for r in runs if r.load_after is not None]
    return f"{statistics.median(loads):.1f}" if loads else "?"


def _label(peer: Peer, versions: dict[str, str], args: argparse.Namespace) -> str:
    """The table's name for a peer, with the version that was measured."""
    if peer.name == "migrator":
        workers = f", --workers {args.workers}" if args.workers else ""
        return f"migrator {versions.get('migrator', '')}{workers}".strip()
    if peer.name == "imapsync":
        return f"imapsync {versions.get('imapsync', '')}"
    if peer.name == "mbsync":
        return f"mbsync {versions.get('mbsync', '')} (drops keywords)"
    if peer.name == "migrator-pop3":
        return f"migrator POP3 -> IMAP ({args.pop_messages:,} msgs, INBOX)"
    return peer.label


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
