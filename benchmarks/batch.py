"""Many accounts at once: `migrator batch --jobs N` beside imapsync run by `xargs -P N`.

    python3 benchmarks/batch.py [--accounts 20] [--messages 300] [--jobs 1,2,4,8]

Two private Dovecot servers on loopback (IMAPS, mail_fsync=optimized), as benchmarks/run.py sets
them up. The source server gets ``--accounts`` users, each holding the same generated corpus
(benchmarks/corpus.py, hard-linked, so 20 accounts cost one corpus on disk). For each parallelism
N, each tool copies every account into its own fresh, empty target users:

* migrator: one manifest, ``migrator batch MANIFEST --jobs N --max-per-host N`` (its in-process
  Dask cluster, a fresh state directory);
* imapsync: ``xargs -P N`` running one imapsync per account, with the invocation of
  ../shared/tools/README.md.

Aggregate throughput is the bytes of all source accounts over the wall time of the whole run. Every
target is checked afterwards (message count per folder, by doveadm), and one account per tool and
level byte for byte (benchmarks/verify.py). The table goes to stdout and, with the raw figures, to
benchmarks/results/batch.md and batch.json. Must run as root, like benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import deps
from benchmarks.corpus import Corpus, CorpusSpec
from benchmarks.run import (
    PASSWORD,
    install_corpus,
    load_corpus,
    start_servers,
    target_counts,
    timed,
)
from benchmarks.verify import Compare, verify_imap

if TYPE_CHECKING:
    from tests.dovecot import DovecotServer

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/batch.py",
        description="migrator batch --jobs N beside imapsync under xargs -P N, on many accounts.",
    )
    p.add_argument("--accounts", type=int, default=20, help="accounts (default 20)")
    p.add_argument("--messages", type=int, default=300, help="messages per account (default 300)")
    p.add_argument("--jobs", default="1,2,4,8", help="parallelism levels (default 1,2,4,8)")
    p.add_argument("--tools", default="migrator,imapsync", help="migrator,imapsync (default both)")
    p.add_argument("--seed", type=int, default=11, help="corpus seed (default 11)")
    p.add_argument("--cache-dir", type=Path, default=BENCH / ".cache", help="corpus cache")
    p.add_argument("--imapsync", type=Path, default=deps.DEFAULT_IMAPSYNC, help="imapsync script")
    p.add_argument("--timeout", type=float, default=3600, help="per run, seconds (default 3600)")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where batch.md goes")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.jobs.split(",") if x.strip()]
    args.tool_names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tool_names) - {"migrator", "imapsync"}
    if unknown or not args.levels or min(args.levels) < 1:
        p.error(f"--tools from migrator,imapsync; --jobs positive numbers ({unknown or ''})")
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Result:
    tool: str
    jobs: int
    seconds: float
    exit_code: int | None
    timed_out: bool
    rss_kb: int | None
    bytes: int
    accounts_ok: int
    accounts: int
    problems: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.accounts_ok == self.accounts


# -- one level, one tool -------------------------------------------------------------------------


@dataclass
class Level:
    """The servers, the corpus and the source users every run copies from."""

    src: DovecotServer
    dst: DovecotServer
    ca_file: Path
    corpus: Corpus
    sources: list[str]
    workdir: Path
    timeout: float
    imapsync: Path


def _targets(level: Level, tool: str, jobs: int) -> list[str]:
    users = [f"{tool[0]}{jobs}x{i:02d}" for i in range(len(level.sources))]
    for user in users:
        level.dst.add_user(user, PASSWORD)
    return users


def _migrator(level: Level, jobs: int, targets: list[str], d: Path) -> tuple[list[str], dict]:
    src, dst = level.src, level.dst
    lines = [
        "name,source,target,source_password_env,target_password_env,source_ca_file,target_ca_file"
    ]
    for s, t in zip(level.sources, targets, strict=True):
        lines.append(
            f"{s},imaps://{s}@{HOST}:{src.imaps_port},imaps://{t}@{HOST}:{dst.imaps_port},"
            f"BENCH_PW,BENCH_PW,{level.ca_file},{level.ca_file}"
        )
    manifest = d / "accounts.csv"
    manifest.write_text("\n".join(lines) + "\n")
    argv = [sys.executable, "-m", "migrator", "batch", str(manifest), "--jobs", str(jobs)]
    argv += ["--max-per-host", str(jobs), "--state-dir", str(d / "state"), "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(BENCH_PW=PASSWORD, PYTHONPATH=str(deps.REPO))
    return argv, env


def _imapsync(level: Level, jobs: int, targets: list[str], d: Path) -> tuple[list[str], dict]:
    """xargs -P N, one imapsync per line of pairs.txt (SOURCE_USER TARGET_USER)."""
    src, dst = level.src, level.dst
    passfile = d / "imapsync.pass"
    passfile.write_text(PASSWORD + "\n")
    passfile.chmod(0o600)
    (d / "pairs.txt").write_text(
        "".join(f"{s} {t}\n" for s, t in zip(level.sources, targets, strict=True))
    )
    one = d / "one.sh"
    ssl = (
        f"--sslargs1 SSL_verify_mode=1 --sslargs1 SSL_ca_file={level.ca_file} "
        f"--sslargs2 SSL_verify_mode=1 --sslargs2 SSL_ca_file={level.ca_file}"
    )
    one.write_text(
        "#!/bin/sh\n"
        'tmp="$(dirname "$0")/tmp-$1"; mkdir -p "$tmp"\n'
        f"exec perl {level.imapsync} --nodockercontext --nolog "
        f'--host1 {HOST} --port1 {src.imaps_port} --ssl1 --user1 "$1" --passfile1 {passfile} '
        f'--host2 {HOST} --port2 {dst.imaps_port} --ssl2 --user2 "$2" --passfile2 {passfile} '
        f"{ssl} --addheader --syncduplicates --nofoldersizes --nofoldersizesatend "
        '--noreleasecheck --tmpdir "$tmp" > "$tmp.log" 2>&1\n'
    )
    one.chmod(0o755)
    argv = ["xargs", "-P", str(jobs), "-L", "1", "-a", str(d / "pairs.txt"), str(one)]
    return argv, dict(os.environ)


BUILD = {"migrator": _migrator, "imapsync": _imapsync}


def run_level(level: Level, tool: str, jobs: int) -> Result:
    d = level.workdir / f"{tool}-j{jobs}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    targets = _targets(level, tool, jobs)
    argv, env = BUILD[tool](level, jobs, targets, d)
    seconds, rss, code, timed_out = timed(argv, env, d / "run.log", level.timeout)
    want = {f: len(v) for f, v in level.corpus.folders.items()}
    problems = []
    ok = 0
    for user in targets:
        got = {f: n for f, n in target_counts(level.dst, user).items() if n or f in want}
        if got == want:
            ok += 1
        else:
            problems.append(f"{user}: {got} != {want}")
    verdict = verify_imap(
        level.corpus,
        HOST,
        level.dst.imaps_port,
        targets[0],
        PASSWORD,
        str(level.ca_file),
        Compare(),
    )
    if not verdict.equal:
        problems += [f"{targets[0]}: {p}" for p in verdict.problems[:3]]
    for user in targets:  # targets add up to GBs over the levels
        shutil.rmtree(level.dst.home(user), ignore_errors=True)
    total = level.corpus.total_bytes * len(level.sources)
    return Result(
        tool, jobs, round(seconds, 2), code, timed_out, rss, total, ok, len(targets), problems
    )


# -- the table -----------------------------------------------------------------------------------


def table(results: list[Result], levels: list[int]) -> str:
    by = {(r.tool, r.jobs): r for r in results}
    head = "| jobs | migrator s | migrator MB/s | imapsync s | imapsync MB/s | ratio |"
    lines = [head, "|---:|---:|---:|---:|---:|---:|"]
    for jobs in levels:
        m, i = by.get(("migrator", jobs)), by.get(("imapsync", jobs))

        def cell(r: Result | None) -> tuple[str, str]:
            if r is None:
                return "-", "-"
            flag = "" if r.ok else " (!)"
            return f"{r.seconds:.1f}{flag}", f"{r.mb_per_s:.1f}"

        ratio = f"{m.mb_per_s / i.mb_per_s:.1f}x" if m and i and i.mb_per_s else "-"
        lines.append(f"| {jobs} | {' | '.join(cell(m))} | {' | '.join(cell(i))} | {ratio} |")
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.now(UTC)
    checks = {"dovecot": deps.check_dovecot(), "time": deps.check_time()}
    if "imapsync" in args.tool_names:
        checks["imapsync"] = deps.check_imapsync(args.imapsync)
    missing = [c for c in checks.values() if not c.ok]
    for c in missing:
        say(f"missing {c.name}: {c.detail} -> {c.remedy()}")
    if missing:
        return 2
    import distributed  # noqa: F401  (migrator batch needs it: pip install 'mailbox-migrator[batch]')

    corpus = load_corpus(CorpusSpec(args.messages, args.seed), args)
    workdir = args.cache_dir / f"batch-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    servers: list[Any] = []
    results: list[Result] = []
    try:
        src, dst, tls = start_servers(workdir, servers)
        sources = [f"src{i:02d}" for i in range(args.accounts)]
        t0 = time.monotonic()
        for user in sources:
            install_corpus(src, user, corpus)
        say(f"{args.accounts} source accounts ready in {time.monotonic() - t0:.0f} s")
        level = Level(src, dst, tls.ca_file, corpus, sources, workdir, args.timeout, args.imapsync)
        for jobs in args.levels:
            for tool in args.tool_names:
                r = run_level(level, tool, jobs)
                results.append(r)
                state = "ok" if r.ok else f"PROBLEMS: {'; '.join(r.problems[:3])}"
                say(
                    f"  {tool:<8} --jobs {jobs}: {r.seconds:7.1f} s, {r.mb_per_s:6.1f} MB/s, "
                    f"{r.accounts_ok}/{r.accounts} accounts complete, exit {r.exit_code} {state}"
                )
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    header = (
        f"{args.accounts} accounts of {corpus.messages:,} messages / "
        f"{corpus.total_bytes / 1e6:,.1f} MB each ({args.accounts * corpus.total_bytes / 1e6:,.0f}"
        f" MB in all; largest message {corpus.largest / 1e6:.1f} MB); two Dovecot servers on "
        f"loopback, IMAPS; {os.cpu_count()} CPUs. Aggregate throughput = all accounts' bytes / "
        "wall time of the whole run; ratio = migrator's throughput / imapsync's."
    )
    md = f"{header}\n\n{table(results, args.levels)}\n"
    say("\n" + md)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "batch.md").write_text(md)
    data = {
        "started": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "benchmarks/batch.py", *argv],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "corpus": {"messages": corpus.messages, "bytes": corpus.total_bytes},
        "accounts": args.accounts,
        "results": [{**asdict(r), "mb_per_s": round(r.mb_per_s, 2)} for r in results],
    }
    (args.results / "batch.json").write_text(json.dumps(data, indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
