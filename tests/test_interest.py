"""Interest and InterestIndex: who receives a message. Pure: no bus, no event loop."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from fastapi_busproxy.interest import Interest, InterestIndex
from fastapi_busproxy.messages import (
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    BusSystemMessage,
)


@dataclass(kw_only=True)
class Ping(BusDataMessage):
    pass


@dataclass(kw_only=True)
class LoudPing(Ping):
    pass


@dataclass(kw_only=True)
class Alarm(BusSystemMessage):
    pass


def test_nothing_selected_by_default() -> None:
    interest = Interest()
    assert not interest.matches(Ping(source="a"))
    assert not interest.matches(Ping(source="a", target="b"))


def test_worker_interest_is_own_name_and_broadcasts() -> None:
    interest = Interest.worker("me")
    assert interest.matches(Ping(source="a", target="me"))
    assert interest.matches(Ping(source="a"))
    assert not interest.matches(Ping(source="a", target="someone-else"))


def test_each_criterion() -> None:
    to_b = Ping(source="a", target="b")
    broadcast = Ping(source="a")
    from_x = Ping(source="x", target="b")

    assert Interest(targets=frozenset({"b"})).matches(to_b)
    assert not Interest(targets=frozenset({"b"})).matches(broadcast)

    assert Interest(broadcasts=True).matches(broadcast)
    assert not Interest(broadcasts=True).matches(to_b)

    # A source selects its messages whatever their target.
    assert Interest(sources=frozenset({"x"})).matches(from_x)
    assert Interest(sources=frozenset({"x"})).matches(Ping(source="x"))
    assert not Interest(sources=frozenset({"x"})).matches(to_b)

    # A type selects its instances, subclasses included, whatever their target.
    assert Interest(types=(Ping,)).matches(LoudPing(source="a", target="zzz"))
    assert not Interest(types=(LoudPing,)).matches(to_b)
    assert not Interest(types=(Ping,)).matches(Alarm(source="a"))

    everything = Interest(everything=True)
    assert all(everything.matches(m) for m in (to_b, broadcast, from_x, Alarm(source="q")))


def test_union_selects_what_either_selects() -> None:
    union = Interest(targets=frozenset({"a"}), types=(Alarm,)).union(
        Interest(sources=frozenset({"s"}), broadcasts=True, types=(Alarm, Ping))
    )
    assert union.targets == {"a"}
    assert union.sources == {"s"}
    assert union.broadcasts
    assert union.types == (Alarm, Ping)
    assert not union.everything
    assert union.union(Interest(everything=True)).everything


def make_index(**interests: Interest) -> InterestIndex[str]:
    index: InterestIndex[str] = InterestIndex()
    for name, interest in interests.items():
        index.add(name, interest)
    return index


def test_recipients_by_each_criterion() -> None:
    index = make_index(
        b=Interest(targets=frozenset({"b"})),
        listener=Interest(broadcasts=True),
        spy=Interest(sources=frozenset({"x"})),
        pings=Interest(types=(Ping,)),
        monitor=Interest(everything=True),
    )
    assert index.recipients(Alarm(source="a", target="b")) == ["b", "monitor"]
    assert index.recipients(Alarm(source="a")) == ["listener", "monitor"]
    assert index.recipients(Alarm(source="x", target="nobody")) == ["spy", "monitor"]
    assert index.recipients(LoudPing(source="a", target="nobody")) == ["pings", "monitor"]
    assert index.recipients(BusEndMessage(source="a", target="nobody")) == ["monitor"]


def test_a_subscriber_selected_several_ways_receives_once_in_subscription_order() -> None:
    index = make_index(
        first=Interest(types=(BusMessage,)),
        greedy=Interest(
            targets=frozenset({"b"}),
            sources=frozenset({"a"}),
            types=(Ping, LoudPing),
            everything=True,
        ),
        b=Interest.worker("b"),
    )
    assert index.recipients(LoudPing(source="a", target="b")) == ["first", "greedy", "b"]


def test_remove_forgets_the_subscriber_everywhere() -> None:
    index = make_index(
        gone=Interest(
            targets=frozenset({"b"}),
            broadcasts=True,
            sources=frozenset({"a"}),
            types=(Ping,),
            everything=True,
        ),
        kept=Interest.worker("b"),
    )
    assert index.recipients(Ping(source="a")) == ["gone", "kept"]  # fills the type cache
    index.remove("gone")
    index.remove("never-there")  # unknown subscribers are ignored
    assert "gone" not in index
    assert len(index) == 1
    assert index.recipients(Ping(source="a", target="b")) == ["kept"]
    assert index.recipients(Ping(source="a", target="other")) == []
    assert index.targets() == {"b"}
    assert index.sources() == set()
    assert index.types() == set()
    assert not index.wants_everything()


def test_adding_again_replaces_the_interest() -> None:
    index = make_index(w=Interest.worker("old"))
    index.add("w", Interest(targets=frozenset({"new"})))
    assert index.recipients(Ping(source="a", target="old")) == []
    assert index.recipients(Ping(source="a")) == []
    assert index.recipients(Ping(source="a", target="new")) == ["w"]
    assert index.subscribers() == ["w"]


def test_a_type_subscriber_added_after_a_lookup_is_found() -> None:
    index = make_index(pings=Interest(types=(Ping,)))
    assert index.recipients(LoudPing(source="a")) == ["pings"]
    index.add("loud", Interest(types=(LoudPing,)))
    assert index.recipients(LoudPing(source="a")) == ["pings", "loud"]
    assert index.recipients(Ping(source="a")) == ["pings"]
    index.remove("pings")
    assert index.recipients(LoudPing(source="a")) == ["loud"]


def test_a_targeted_message_reaches_only_its_target_among_many() -> None:
    index: InterestIndex[str] = InterestIndex()
    for n in range(10_000):
        index.add(f"w{n}", Interest.worker(f"w{n}"))
    assert index.recipients(Ping(source="w1", target="w4242")) == ["w4242"]
    assert index.recipients(Ping(source="w1", target="nobody")) == []
    assert len(index.recipients(Ping(source="w1"))) == 10_000


def test_recipients_agree_with_matches() -> None:
    """The index finds exactly the subscribers whose Interest.matches() the message."""
    names = ["a", "b", "c"]
    interests = [
        Interest(),
        Interest.worker("a"),
        Interest(targets=frozenset({"b", "c"})),
        Interest(broadcasts=True),
        Interest(sources=frozenset({"c"})),
        Interest(types=(Ping,)),
        Interest(types=(LoudPing, Alarm)),
        Interest(targets=frozenset({"a"}), sources=frozenset({"b"}), types=(Alarm,)),
        Interest(everything=True),
    ]
    index: InterestIndex[int] = InterestIndex()
    for number, interest in enumerate(interests):
        index.add(number, interest)
    kinds: list[type[BusMessage]] = [Ping, LoudPing, Alarm, BusEndMessage]
    for kind, source, target in itertools.product(kinds, names, [None, *names]):
        message = kind(source=source, target=target)
        expected = [n for n, interest in enumerate(interests) if interest.matches(message)]
        assert index.recipients(message) == expected, message
