"""The abuse suite's driver (run by scripts/abuse): runs the selected sections, prints one
markdown table, exits 1 if any pass criterion failed."""

import argparse
import os
import datetime
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import report
from report import Row

SECTIONS = ["fuzz", "schema", "tls", "conn", "overload", "faults"]


def machine():
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / (1 << 20):.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), {mem} RAM"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated sections (default: all)")
    ap.add_argument("--fuzz-targets", default="", help="comma-separated fuzz targets (default all)")
    ap.add_argument("--fuzz-seconds", type=int, default=0)
    ap.add_argument("--fuzz-no-build", action="store_true",
                    help="run the fuzz binaries already in fuzz/target (no cargo fuzz build)")
    ap.add_argument("--command", default="scripts/abuse", help="command line shown in the report")
    ap.add_argument("--out", type=Path, help="also write the report (markdown) here")
    ap.add_argument("--workdir", type=Path, help="keep logs and fuzz artifacts here")
    a = ap.parse_args()
    only = [s for s in a.only.split(",") if s] or SECTIONS
    tmp = a.workdir or Path(tempfile.mkdtemp(prefix="edgeseek-abuse-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.time()
    for section in SECTIONS:
        if section not in only:
            continue
        t0 = time.time()
        print(f"--- {section}", file=sys.stderr, flush=True)
        try:
            if section == "fuzz":
                import fuzz
                targets = [t for t in a.fuzz_targets.split(",") if t] or None
                got = fuzz.run(tmp, a.full, targets, a.fuzz_seconds or None, not a.fuzz_no_build)
            elif section == "schema":
                import schema
                got = schema.run(tmp, a.full)
            elif section == "tls":
                import tlscheck
                got = tlscheck.run(tmp)
            elif section == "conn":
                import conn
                got = conn.run(tmp, a.full)
            elif section == "overload":
                import overload
                got = overload.run(tmp, a.full)
            else:
                import faults
                got = faults.run(tmp, a.full)
        except Exception as e:  # noqa: BLE001 - a broken section is a failed row, not a stop
            traceback.print_exc()
            got = [Row(section, "section failed to run", "", "runs", f"{type(e).__name__}: {e}"[:400], False)]
        for r in got:
            print(f"    {'pass' if r.passed else 'FAIL'}: {r.check}: {r.measured}", file=sys.stderr, flush=True)
        rows += got
        print(f"--- {section}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = (f"Command: `{a.command}` (commit {rev or '?'}), "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{time.time() - started:.0f} s\n\nMachine: {machine()}; load average at the end "
            f"{os.getloadavg()[0]:.1f}\n\n")
    text = head + report.table(rows)
    print(text)
    if a.out:
        a.out.write_text(text)
    failed = [r for r in rows if not r.passed]
    print(f"abuse suite: {len(rows) - len(failed)} passed, {len(failed)} failed (work dir {tmp})",
          file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
