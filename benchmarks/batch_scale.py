"""Many small accounts: what `migrator batch` costs per account, and whether the client stays flat.

    .venv/bin/python benchmarks/batch_scale.py [--accounts 100,1000] [--messages 5] [--jobs 8]
                                               [--modes local,cluster]

Two private Dovecot servers on loopback (IMAPS), as benchmarks/run.py sets them up; the source
gets max(--accounts) users, each holding the same small generated corpus (hard-linked). For each
mode (``local``: the in-process Dask cluster; ``cluster``: ``--cluster`` to a `dask scheduler` and
two `dask worker` processes on 127.0.0.1) and each manifest size N, into fresh target users and a
fresh state directory:

* a first run of the N accounts (``--jobs J --max-per-host J``: both servers are on 127.0.0.1);
* a no-op rerun of the same manifest (every account finished: a ledger row and a journal look
  each).

Each run is timed under ``/usr/bin/time -v`` (wall time, the client's peak RSS; on a cluster the
workers' memory is not the client's). Per-account overhead is the marginal cost of an account:
(wall(N_max) - wall(N_min)) / (N_max - N_min), which leaves out what every run pays once (Python,
Dask, the cluster's start). Every run must report every account done and N x messages copied on
the first run, nothing on the rerun; a sample of targets is counted by doveadm. Results go to
stdout and to benchmarks/results/batch_scale.md and .json. Must run as root, like
benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import deps
from benchmarks.run import PASSWORD, install_corpus, start_servers, target_counts, timed

if TYPE_CHECKING:
    from tests.dovecot import DovecotServer

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/batch_scale.py",
        description="migrator batch on many small accounts: per-account cost, client memory.",
    )
    p.add_argument("--accounts", default="100,1000", help="manifest sizes (default 100,1000)")
    p.add_argument("--messages", type=int, default=5, help="messages per account (default 5)")
    p.add_argument("--jobs", type=int, default=8, help="--jobs and --max-per-host (default 8)")
    p.add_argument("--modes", default="local,cluster", help="local,cluster (default both)")
    p.add_argument("--seed", type=int, default=13, help="corpus seed (default 13)")
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache", help="corpus cache")
    p.add_argument("--timeout", type=float, default=3600, help="per run, seconds (default 3600)")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where results go")
    p.add_argument(
        "--archives",
        default="",
        help="instead: local batches of N mbox -> Maildir accounts (examples/sample.mbox, no "
        "servers), e.g. 200,1000,2000: the client's peak RSS when it also runs the accounts",
    )
    args = p.parse_args(argv)
    args.archive_sizes = sorted({int(x) for x in args.archives.split(",") if x.strip()})
    args.sizes = sorted({int(x) for x in args.accounts.split(",") if x.strip()})
    args.mode_names = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.sizes or min(args.sizes) < 1 or set(args.mode_names) - {"local", "cluster"}:
        p.error("--accounts: positive numbers; --modes: from local,cluster")
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Run:
    mode: str
    accounts: int
    kind: str  # "first" or "no-op rerun"
    seconds: float
    rss_kb: int | None
    exit_code: int | None
    timed_out: bool
    accounts_done: int = 0
    messages_copied: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.problems


# -- the accounts' mail: a few small messages in INBOX --------------------------------------------


@dataclass
class SmallCorpus:
    """What benchmarks.run.install_corpus needs: a Maildir and its folders. The generated corpora
    of benchmarks/corpus.py put a few large messages in even the smallest, which 1,000 accounts
    would make gigabytes of: here, plain ~2 kB messages."""

    maildir: Path
    folders: dict[str, list[int]]
    total_bytes: int

    @property
    def messages(self) -> int:
        return sum(len(v) for v in self.folders.values())


def small_corpus(directory: Path, messages: int, seed: int) -> SmallCorpus:
    from tests.dovecot import DEFAULT_MAIL_GID, DEFAULT_MAIL_UID

    maildir = directory / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(messages):
        body = "".join(f"Line {n} of message {i} (seed {seed}).\r\n" for n in range(50))
        data = (
            f"From: Sender {i} <sender{i}@example.org>\r\nTo: user@example.org\r\n"
            f"Subject: small message {i}\r\nMessage-ID: <small-{seed}-{i}@example.org>\r\n"
            f"Date: Mon, 1 Jan 2024 00:{i % 60:02d}:00 +0000\r\n\r\n{body}"
        ).encode()
        path = maildir / "cur" / f"{1700000000 + i}.M{i}P1.bench:2,S"
        path.write_bytes(data)
        sizes.append(len(data))
    for dirpath, _dirs, files in os.walk(directory):
        os.chown(dirpath, DEFAULT_MAIL_UID, DEFAULT_MAIL_GID)
        for name in files:
            os.chown(os.path.join(dirpath, name), DEFAULT_MAIL_UID, DEFAULT_MAIL_GID)
    return SmallCorpus(maildir, {"INBOX": sizes}, sum(sizes))


# -- a Dask cluster on loopback -----------------------------------------------------------------


class Cluster:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1 (2 threads each)."""

    def __init__(self, directory: Path, env: dict[str, str], threads: int) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        self.address = f"tcp://{HOST}:{port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        directory.mkdir(parents=True, exist_ok=True)

        def spawn(name: str, argv: list[str]) -> None:
            with open(directory / f"{name}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "dask", *argv],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=directory,
                    )
                )

        spawn("scheduler", ["scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"])
        for n in range(2):
            spawn(
                f"worker{n}",
                [
                    "worker",
                    self.address,
                    "--nthreads",
                    str(threads),
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    HOST,
                    "--local-directory",
                    str(directory / f"worker{n}"),
                ],
            )
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=30)
                    return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


# -- one mode, one size ---------------------------------------------------------------------------


def manifest(d: Path, src: DovecotServer, dst: DovecotServer, ca: Path, pairs) -> Path:
    lines = [
        "name,source,target,source_password_env,target_password_env,source_ca_file,target_ca_file"
    ]
    for s, t in pairs:
        lines.append(
            f"{t},imaps://{s}@{HOST}:{src.imaps_port},imaps://{t}@{HOST}:{dst.imaps_port},"
            f"BENCH_PW,BENCH_PW,{ca},{ca}"
        )
    path = d / "accounts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(
    mode: str, kind: str, argv: list[str], env: dict[str, str], d: Path, n: int, timeout: float
) -> Run:
    log = d / f"{kind.split()[0]}.log"
    seconds, rss, code, timed_out = timed([*argv, "--json"], env, log, timeout)
    run = Run(mode, n, kind, round(seconds, 2), rss, code, timed_out)
    text = log.read_text(errors="replace")
    try:
        data = json.loads(text[text.index("{") :].splitlines()[0])
    except ValueError:
        run.problems.append(f"no JSON result: {text[-500:]}")
        return run
    run.accounts_done = data["accounts_done"]
    run.messages_copied = data["messages_copied"]
    if run.accounts_done != n:
        run.problems.append(f"{run.accounts_done}/{n} accounts done")
    return run


def run_size(
    mode: str,
    n: int,
    args: argparse.Namespace,
    src: DovecotServer,
    dst: DovecotServer,
    ca: Path,
    sources: list[str],
    corpus: SmallCorpus,
    workdir: Path,
    cluster: Cluster | None,
) -> list[Run]:
    d = workdir / f"{mode}-{n}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    targets = [f"{mode[0]}{n}t{i:04d}" for i in range(n)]
    for user in targets:
        dst.add_user(user, PASSWORD)
    path = manifest(d, src, dst, ca, list(zip(sources[:n], targets, strict=True)))
    argv = [sys.executable, "-m", "migrator", "batch", str(path), "--state-dir", str(d / "state")]
    argv += ["--jobs", str(args.jobs), "--max-per-host", str(args.jobs)]
    if cluster is not None:
        argv += ["--cluster", cluster.address]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(BENCH_PW=PASSWORD, PYTHONPATH=str(deps.REPO))
    first = run_once(mode, "first", argv, env, d, n, args.timeout)
    want = n * corpus.messages
    if first.messages_copied != want:
        first.problems.append(f"copied {first.messages_copied}, expected {want}")
    counts = {f: len(v) for f, v in corpus.folders.items()}
    for user in targets[:: max(1, n // 20)]:  # a sample of 20 targets, by doveadm
        got = {f: c for f, c in target_counts(dst, user).items() if c or f in counts}
        if got != counts:
            first.problems.append(f"{user}: {got} != {counts}")
    again = run_once(mode, "no-op rerun", argv, env, d, n, args.timeout)
    if again.messages_copied:
        again.problems.append(f"a no-op rerun copied {again.messages_copied}")
    for user in targets:
        shutil.rmtree(dst.home(user), ignore_errors=True)
    return [first, again]


# -- the bookkeeping, piece by piece (no servers) -------------------------------------------------


def bookkeeping(n: int, directory: Path) -> dict[str, float]:
    """Milliseconds an account, measured here over ``n`` accounts of mbox -> Maildir rows: the
    manifest check, the ledger's three writes (started, running on, result), the journal's
    open-note-close before the engine (Journal.begin_attempt) and its count after
    (journal_copied), and the rerun's look at a finished account (ledger row and journal)."""
    from migrator.batch import DONE, AccountResult, Ledger, Selection, journal_copied, plan
    from migrator.batch import load_manifest as load
    from migrator.checkpoint import Journal

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rows = [f"mbox:{directory}/u{i}.mbox,maildir:{directory}/out/u{i}" for i in range(n)]
    path = directory / "m.csv"
    path.write_text("source,target\n" + "\n".join(rows) + "\n")
    out: dict[str, float] = {}

    def timed_ms(name: str, step) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        step()
        out[name] = round(1000 * (time.perf_counter() - started) / n, 3)

    loaded = load(path)
    timed_ms("manifest check", lambda: load(path))
    ledger = Ledger.open(directory / "state")
    try:
        accounts = loaded.accounts

        def writes() -> None:
            for a in accounts:
                ledger.started(a)
                ledger.running_on(a.name, "worker")
                ledger.record(AccountResult(a.name, a.source, a.target, DONE, copied=1))

        def journal_before() -> None:
            for a in accounts:
                journal = Journal.open(ledger.journal_path(a))
                journal.begin_attempt("bench")
                journal.finish_run(journal.start_run(a.source, a.target), "done", 0, 0, 0, 0)
                journal.close()

        def journal_after() -> None:
            for a in accounts:
                journal_copied(ledger.journal_path(a), "bench")

        timed_ms("ledger writes (client)", writes)
        timed_ms("journal open + begin_attempt + close (worker)", journal_before)
        timed_ms("journal count after the run (worker)", journal_after)
        timed_ms(
            "rerun: plan look at a finished account", lambda: plan(accounts, ledger, Selection())
        )
    finally:
        ledger.close()
        shutil.rmtree(directory, ignore_errors=True)
    return out


# -- the table ----------------------------------------------------------------------------------


def table(runs: list[Run], sizes: list[int]) -> str:
    lines = [
        "| mode | accounts | run | wall s | per account, ms | client peak RSS MB | result |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        rss = f"{r.rss_kb / 1024:.0f}" if r.rss_kb else "-"
        result = "ok" if r.ok else "; ".join(r.problems[:2]) or f"exit {r.exit_code}"
        lines.append(
            f"| {r.mode} | {r.accounts} | {r.kind} | {r.seconds:.1f} | "
            f"{1000 * r.seconds / r.accounts:.0f} | {rss} | {result} |"
        )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        lines += [
            "",
            f"Marginal cost of an account, (wall({hi}) - wall({lo})) / {hi - lo}, and the client's "
            f"peak RSS at {hi} accounts over {lo}:",
            "",
            "| mode | run | per account, ms | RSS growth |",
            "|---|---|---:|---:|",
        ]
        by = {(r.mode, r.kind, r.accounts): r for r in runs}
        for mode in dict.fromkeys(r.mode for r in runs):
            for kind in ("first", "no-op rerun"):
                a, b = by.get((mode, kind, lo)), by.get((mode, kind, hi))
                if a is None or b is None:
                    continue
                marginal = 1000 * (b.seconds - a.seconds) / (hi - lo)
                growth = f"{b.rss_kb / a.rss_kb:.2f}x" if a.rss_kb and b.rss_kb else "-"
                lines.append(f"| {mode} | {kind} | {marginal:.1f} | {growth} |")
    return "\n".join(lines)


def archives(args: argparse.Namespace, argv: list[str]) -> int:
    """Local batches of mbox -> Maildir accounts, no servers: wall time and peak RSS of the one
    process that schedules and runs them, as the number of accounts grows."""
    workdir = args.cache_dir / f"batch-archives-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    mbox = workdir / "sample.mbox"
    shutil.copy(deps.REPO / "examples" / "sample.mbox", mbox)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["PYTHONPATH"] = str(deps.REPO)
    lines = [
        "| accounts | wall s | ms an account | peak RSS MB | exit |",
        "|---:|---:|---:|---:|---|",
    ]
    runs = []
    try:
        for n in args.archive_sizes:
            d = workdir / f"n{n}"
            d.mkdir()
            rows = [f"mbox:{mbox},maildir:{d}/out/u{i}" for i in range(n)]
            (d / "m.csv").write_text("source,target\n" + "\n".join(rows) + "\n")
            argv_run = [sys.executable, "-m", "migrator", "batch", str(d / "m.csv"), "--quiet"]
            argv_run += ["--state-dir", str(d / "state"), "--jobs", str(args.jobs)]
            seconds, rss, code, timed_out = timed(argv_run, env, d / "run.log", args.timeout)
            runs.append({"accounts": n, "seconds": round(seconds, 2), "rss_kb": rss, "exit": code})
            say(f"  {n:>5} archive accounts: {seconds:6.1f} s, peak RSS {(rss or 0) / 1024:.0f} MB")
            lines.append(
                f"| {n} | {seconds:.1f} | {1000 * seconds / n:.0f} | {(rss or 0) / 1024:.0f} | "
                f"{'timed out' if timed_out else code} |"
            )
            shutil.rmtree(d, ignore_errors=True)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = f".venv/bin/python benchmarks/batch_scale.py {' '.join(argv)}".strip()
    md = (
        "`migrator batch` without --cluster on manifests of mbox -> Maildir accounts (each "
        f"examples/sample.mbox, 12 messages, into its own Maildir), --jobs {args.jobs}, "
        f"{os.cpu_count()} CPUs: one process schedules and runs every account.\n\n"
        f"Command: `{command}`\n\n" + "\n".join(lines) + "\n"
    )
    say("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "batch_scale_archives.md").write_text(md)
    (args.results / "batch_scale_archives.json").write_text(
        json.dumps({"command": command, "runs": runs}, indent=1) + "\n"
    )
    return 0 if all(r["exit"] == 0 for r in runs) else 1


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.archive_sizes:
        return archives(args, argv)
    started = datetime.now(UTC)
    checks = [deps.check_dovecot(), deps.check_time()]
    missing = [c for c in checks if not c.ok]
    for c in missing:
        say(f"missing {c.name}: {c.detail} -> {c.remedy()}")
    if missing:
        return 2
    import distributed  # noqa: F401  (migrator batch needs it: pip install 'migrator[batch]')

    workdir = args.cache_dir / f"batch-scale-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    corpus = small_corpus(workdir / "corpus", args.messages, args.seed)
    servers: list[DovecotServer] = []
    runs: list[Run] = []
    try:
        src, dst, tls = start_servers(workdir, servers)
        sources = [f"src{i:04d}" for i in range(max(args.sizes))]
        t0 = time.monotonic()
        for user in sources:
            install_corpus(src, user, corpus)  # type: ignore[arg-type]  (duck-typed)
        say(f"{len(sources)} source accounts ready in {time.monotonic() - t0:.0f} s")
        for mode in args.mode_names:
            cluster = None
            if mode == "cluster":
                env = dict(os.environ, BENCH_PW=PASSWORD, PYTHONPATH=str(deps.REPO))
                env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"  # as README says
                cluster = Cluster(workdir / "dask", env, threads=max(1, args.jobs // 2))
            try:
                for n in args.sizes:
                    for r in run_size(
                        mode, n, args, src, dst, tls.ca_file, sources, corpus, workdir, cluster
                    ):
                        runs.append(r)
                        rss = f"{r.rss_kb / 1024:.0f} MB" if r.rss_kb else "-"
                        state = "ok" if r.ok else f"PROBLEMS: {'; '.join(r.problems[:3])}"
                        say(
                            f"  {mode:<7} {n:>5} accounts, {r.kind:<11}: {r.seconds:7.1f} s, "
                            f"client peak RSS {rss}, exit {r.exit_code} {state}"
                        )
            finally:
                if cluster is not None:
                    cluster.close()
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    header = (
        f"`migrator batch` on manifests of {', '.join(map(str, args.sizes))} accounts of "
        f"{corpus.messages} messages ({corpus.total_bytes / 1e3:,.0f} kB) each; two Dovecot "
        f"servers on loopback, IMAPS; --jobs {args.jobs} --max-per-host {args.jobs}; "
        f"{os.cpu_count()} CPUs. local: the in-process Dask cluster (the client's RSS includes "
        "the accounts' work); cluster: a scheduler and two workers on 127.0.0.1 (the client "
        "only schedules)."
    )
    pieces = bookkeeping(max(args.sizes), workdir.with_name(workdir.name + "-bookkeeping"))
    say(f"bookkeeping per account: {pieces}")
    command = f".venv/bin/python benchmarks/batch_scale.py {' '.join(argv)}".strip()
    pieces_md = "\n".join(f"| {k} | {v:.2f} |" for k, v in pieces.items())
    md = (
        f"{header}\n\nCommand: `{command}`\n\n{table(runs, args.sizes)}\n\n"
        f"The batch's own bookkeeping, per account, measured in-process over {max(args.sizes)} "
        "accounts (no servers, no Dask):\n\n| piece | ms an account |\n|---|---:|\n"
        f"{pieces_md}\n"
    )
    say("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "batch_scale.md").write_text(md)
    data = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "corpus": {"messages": corpus.messages, "bytes": corpus.total_bytes},
        "runs": [asdict(r) for r in runs],
        "bookkeeping_ms_per_account": pieces,
    }
    (args.results / "batch_scale.json").write_text(json.dumps(data, indent=1) + "\n")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
