"""TLS configuration against Mozilla's "intermediate" profile, checked by sslyze."""

import subprocess
import sys
from pathlib import Path

from daemon import Daemon
from report import Row


def run(tmp: Path):
    d = Daemon(tmp / "tls")
    try:
        d.wait_ready()
        p = subprocess.run([sys.executable, "-m", "sslyze", "--mozilla_config=intermediate",
                            # Trust the daemon's own CA (the dev CA is in no public store).
                            f"--certinfo_ca_file={d.ca}", f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=300)
    finally:
        d.stop()
    out = p.stdout
    (tmp / "sslyze.log").write_text(out + p.stderr)
    # sslyze ends with a compliance section: "...is compliant" or a list of what is not.
    tail = out[out.find("COMPLIANCE AGAINST"):] if "COMPLIANCE AGAINST" in out else out[-1500:]
    lines = [l.strip() for l in tail.splitlines()[1:] if l.strip() and not set(l.strip()) <= set("-=")
             and not l.strip().startswith("Checking results")]
    compliant = p.returncode == 0 and any("compliant" in l.lower() and "not compliant" not in l.lower() for l in lines)
    detail = "; ".join(lines)[:900] or (p.stderr.strip()[-400:] or f"sslyze exit {p.returncode}")
    return [Row("tls", "sslyze --mozilla_config=intermediate", "one server, default config, sslyze trusting the daemon's CA",
                "compliant", detail, compliant)]
