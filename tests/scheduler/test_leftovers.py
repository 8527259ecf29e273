"""Finding what a killed gateway left: its firewall rules, and whether its namespace lives."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from scheduler import lease
from scheduler.firewall import guard_rules, guarded_interfaces

LISTING = """-P INPUT ACCEPT
-A INPUT -i br-aaa -p tcp -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset
-A INPUT -i br-aaa -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable
-A INPUT -i br-bbb -p tcp -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset
-A INPUT -i br-ccc -p tcp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -s 10.0.0.0/8 -j DROP
"""


def test_guard_rules_are_found_whatever_order_iptables_lists_them_in() -> None:
    assert guarded_interfaces(LISTING) == {"br-aaa": 2, "br-bbb": 1}
    ours = "\n".join("-A " + " ".join(rule) for rule in guard_rules("br-x"))
    assert guarded_interfaces(ours) == {"br-x": 2}


def test_a_held_lease_is_not_abandoned_and_a_released_one_is(tmp_path: Path) -> None:
    held = lease.NamespaceLease("ns1", tmp_path)
    held.hold()
    with lease.abandoned(lease.lock_path("ns1", tmp_path)) as free:
        assert not free
    held.release()
    with lease.abandoned(lease.lock_path("ns1", tmp_path)) as free:
        assert free
    with lease.abandoned(lease.lock_path("never-started", tmp_path)) as free:
        assert free


def _hold_forever(root: str) -> None:
    lease.NamespaceLease("ns2", Path(root)).hold()
    signal.pause()


def test_a_killed_holder_frees_its_lease(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_hold_forever, args=(str(tmp_path),))
    child.start()
    path = lease.lock_path("ns2", tmp_path)
    try:
        for _ in range(200):  # until the child holds it
            with lease.abandoned(path) as free:
                if not free:
                    break
            child.join(0.05)
        with lease.abandoned(path) as free:
            assert not free
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    with lease.abandoned(path) as free:
        assert free


def test_the_last_gateway_of_a_namespace_knows_it(tmp_path: Path) -> None:
    a, b = lease.NamespaceLease("ns3", tmp_path), lease.NamespaceLease("ns3", tmp_path)
    a.hold()
    b.hold()
    assert not a.last()
    b.release()
    assert a.last()
    a.release()
