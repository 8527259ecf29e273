"""Host isolation of function networks: no new connection from a function bridge to the host.

Containers on a Docker bridge reach every service the host binds on 0.0.0.0 (or on the
bridge's address) through the bridge's gateway IP: that traffic is the host's INPUT, which
Docker does not filter. Two rules per bridge reject it; replies to connections the host
opened (the gateway calling its instances) and traffic routed out (FORWARD) are untouched.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger("kapal.scheduler.firewall")


class FirewallError(Exception):
    """iptables is missing, or refused a rule (not root?)."""


def guard_rules(iface: str) -> list[list[str]]:
    """INPUT rules that reject new connections arriving from bridge `iface`, first first."""
    new = ["-i", iface, "-m", "conntrack", "--ctstate", "NEW"]
    return [
        ["INPUT", *new, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["INPUT", *new, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("iptables")
    if exe is None:
        raise FirewallError("iptables is not installed")
    return subprocess.run([exe, "-w", "5", *args], capture_output=True, text=True, check=False)


def guard(iface: str) -> None:
    """Add the rules for `iface` unless they are there (idempotent)."""
    for rule in reversed(guard_rules(iface)):  # each -I goes on top: insert the last first
        if _iptables("-C", *rule).returncode == 0:
            continue
        done = _iptables("-I", *rule)
        if done.returncode != 0:
            raise FirewallError(done.stderr.strip() or f"iptables -I failed ({done.returncode})")
    log.info("host isolated from bridge", extra={"bridge": iface})


def unguard(iface: str) -> None:
    """Remove the rules for `iface` (every copy), ignoring ones that are not there."""
    for rule in guard_rules(iface):
        for _ in range(10):
            if _iptables("-D", *rule).returncode != 0:
                break
