"""Who may open one more connection, and which idle one makes room (pure)."""

from __future__ import annotations

from gateway.connections import ConnectionLimits, ConnectionTable, Verdict


def table(total: int, per_address: int = 0) -> ConnectionTable[str]:
    return ConnectionTable(ConnectionLimits(max_connections=total, max_per_address=per_address))


def test_the_longest_idle_connection_makes_room() -> None:
    t = table(16)
    for i in range(16):
        assert t.admit(f"c{i}", b"a").verdict is Verdict.SERVE
    t.busy("c0")
    t.busy("c1")
    t.idle("c1")  # idle again, and now the most recently idle
    got = t.admit("new", b"a")
    assert (got.verdict, got.evict) == (Verdict.SERVE, "c2")
    assert t.count == 16 and not t.is_idle("c2")


def test_with_nothing_idle_newcomers_get_the_reserve_then_nothing() -> None:
    t = table(16)
    for i in range(16):
        t.admit(f"c{i}", b"a")
        t.busy(f"c{i}")
    verdicts = []
    for i in range(70):
        verdicts.append(t.admit(f"x{i}", b"b").verdict)
        t.busy(f"x{i}")  # each asks for something at once: none is idle
    assert verdicts[:64] == [Verdict.NO_FUNCTIONS] * 64
    assert set(verdicts[64:]) == {Verdict.FULL}
    assert t.count == 16 + 64


def test_an_address_over_its_cap_gives_up_its_own_idle_one_or_is_refused() -> None:
    t = table(100, per_address=2)
    t.admit("a1", b"a")
    t.admit("a2", b"a")
    t.admit("b1", b"b")
    got = t.admit("a3", b"a")
    assert (got.verdict, got.evict) == (Verdict.SERVE, "a1")
    t.busy("a2")
    t.busy("a3")
    assert t.admit("a4", b"a").verdict is Verdict.TOO_MANY_FROM_ADDRESS
    assert t.admit("b2", b"b").verdict is Verdict.SERVE


def test_removed_connections_free_their_place() -> None:
    t = table(16, per_address=1)
    t.admit("a1", b"a")
    t.busy("a1")
    t.remove("a1")
    t.remove("a1")  # twice is harmless (an evicted connection closes later)
    assert t.count == 0
    assert t.admit("a2", b"a").verdict is Verdict.SERVE
