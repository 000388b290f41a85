"""Audit requirements.lock against the known-vulnerability databases, when one can be reached.

pip-audit (installed by .ci/run into a venv of its own) asks each advisory service in turn about
every pinned release. A service that cannot be reached (no network, no name resolution) or that
answers about none of the packages (every one skipped as "not found") does not count: when no
service answers, one line says the audit was skipped and the exit status is 0, so a closed
network never fails CI. When one answers, a known vulnerability fails the run (exit 1) with its
package, version, advisory id and fixed versions.

Usage: python .ci/audit_lock.py PIP_AUDIT_EXECUTABLE [LOCK_FILE]
"""
from __future__ import annotations

import json
import subprocess
import sys

SERVICES = ("osv", "pypi")
TIMEOUT = 15  # seconds per request of pip-audit; the whole run of one service gets 10x that


def audit(pip_audit: str, lock: str, service: str) -> dict | None:
    """pip-audit's JSON report from `service`, or None when the service gave no answer."""
    command = [pip_audit, "-r", lock, "--require-hashes", "--disable-pip", "--vulnerability-service", service,
               "--progress-spinner", "off", "--timeout", str(TIMEOUT), "--format", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT * 10)
    except subprocess.TimeoutExpired:
        return None
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return None  # a traceback (ConnectionError...): nothing was audited
    dependencies = report.get("dependencies", [])
    if not dependencies or all("skip_reason" in d for d in dependencies):
        return None
    return report


def main(argv: list[str]) -> int:
    pip_audit = argv[1]
    lock = argv[2] if len(argv) > 2 else "requirements.lock"
    for service in SERVICES:
        report = audit(pip_audit, lock, service)
        if report is None:
            continue
        dependencies = report["dependencies"]
        audited = [d for d in dependencies if "skip_reason" not in d]
        found = [(d, v) for d in audited for v in d.get("vulns", [])]
        for dep, vuln in found:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            print(f"dependency audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
        skipped = len(dependencies) - len(audited)
        note = f", {skipped} not known to the service" if skipped else ""
        print(f"dependency audit ({service}): {len(audited)} pinned releases of {lock}{note}, "
              f"{len(found)} known vulnerabilities")
        return 1 if found else 0
    print(f"dependency audit skipped: no advisory database reachable (tried {', '.join(SERVICES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
