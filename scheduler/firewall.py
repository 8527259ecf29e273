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
from collections.abc import Callable
from pathlib import Path

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


def guarded_interfaces(listing: str) -> dict[str, int]:
    """Bridges that have guard rules in `iptables -S INPUT` output, and how many rules."""
    # iptables lists a rule's options in its own order: compare them as sorted words.
    shapes = {tuple(sorted(rule[3:])) for rule in guard_rules("")}
    found: dict[str, int] = {}
    for line in listing.splitlines():
        words = line.split()
        if len(words) < 4 or words[:2] != ["-A", "INPUT"] or words[2] != "-i":
            continue
        if tuple(sorted(words[4:])) in shapes:
            found[words[3]] = found.get(words[3], 0) + 1
    return found


def unguard_missing(exists: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the rules of bridges that are gone (a gateway killed before it cleaned up).

    No live gateway has rules for an interface that does not exist, so any gateway may
    do this. Returns the interfaces cleaned.
    """
    exists = exists or (lambda iface: Path("/sys/class/net", iface).exists())
    listing = _iptables("-S", "INPUT")
    if listing.returncode != 0:
        raise FirewallError(listing.stderr.strip() or "iptables -S failed")
    gone = [iface for iface in guarded_interfaces(listing.stdout) if not exists(iface)]
    for iface in gone:
        unguard(iface)
    if gone:
        log.info("stale host isolation rules removed", extra={"bridges": gone})
    return gone
