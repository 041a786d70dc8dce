"""ForwardingRules: what crosses to the peer and what is let in. Pure: no bus, no socket.

Each rule is one row. ``LOCAL`` is the worker on this side, ``REMOTE`` the one on the peer's
side, ``OTHER`` any third worker; ``Transcript`` is the forwarded type of these rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from fastapi_busproxy.messages import (
    BusAddWorkerMessage,
    BusCancelMessage,
    BusCancelWorkerMessage,
    BusDataMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusJobCancelMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    BusWorkerRegistryMessage,
    FrameDirection,
    JobStatus,
    WorkerRegistryEntry,
)
from fastapi_busproxy.proxy.forwarding import (
    ForwardingRules,
    Refusal,
    SessionControl,
    session_control,
)

LOCAL = "worker"
REMOTE = "voice"
OTHER = "other"


@dataclass(kw_only=True)
class Transcript(BusDataMessage):
    text: str = ""


@dataclass(kw_only=True)
class LoudTranscript(Transcript):
    pass


@dataclass(kw_only=True)
class Secret(BusDataMessage, BusLocalMessage):
    """A user's own local-only message."""


@dataclass(kw_only=True)
class LocalTranscript(Transcript, BusLocalMessage):
    """Local-only even though its base type is forwarded."""


def client_rules(forward_sources: Iterable[str] | None = None) -> ForwardingRules:
    return ForwardingRules.build(
        local_worker=LOCAL,
        remote_worker=REMOTE,
        forward_types=(Transcript,),
        outbound_needs_local_source=False,
        forward_sources=forward_sources,
    )


def server_rules(forward_sources: Iterable[str] | None = None) -> ForwardingRules:
    return ForwardingRules.build(
        local_worker=LOCAL,
        remote_worker=REMOTE,
        forward_types=(Transcript,),
        outbound_needs_local_source=True,
        forward_sources=forward_sources,
    )


def data(source: str, target: str | None) -> BusDataMessage:
    return BusDataMessage(source=source, target=target)


def add_worker(source: str, target: str | None) -> BusAddWorkerMessage:
    return BusAddWorkerMessage(source=source, target=target, worker=object())


def registry(*names: str, target: str | None = None) -> BusWorkerRegistryMessage:
    return BusWorkerRegistryMessage(
        source="gateway",
        target=target,
        runner="runner-1",
        workers=[WorkerRegistryEntry(name=name) for name in names],
    )


def ready(source: str, target: str | None = None) -> BusWorkerReadyMessage:
    return BusWorkerReadyMessage(source=source, target=target, runner="runner-1")


# --- build -----------------------------------------------------------------------------------


def test_build_defaults() -> None:
    rules = ForwardingRules.build(local_worker=LOCAL, remote_worker=REMOTE)
    assert rules.forward_types == ()
    assert rules.outbound_needs_local_source is False
    assert rules.forward_sources == frozenset({REMOTE})


def test_build_takes_any_iterables() -> None:
    rules = ForwardingRules.build(
        local_worker=LOCAL,
        remote_worker=REMOTE,
        forward_types=[Transcript, BusFrameMessage],
        forward_sources=iter(["tts", REMOTE]),
    )
    assert rules.forward_types == (Transcript, BusFrameMessage)
    assert rules.forward_sources == frozenset({"tts", REMOTE})


# --- outbound --------------------------------------------------------------------------------

OUTBOUND_BOTH = [
    # (message, crosses)
    pytest.param(data(LOCAL, REMOTE), True, id="targeted-remote-from-local"),
    pytest.param(
        BusJobRequestMessage(source=LOCAL, target=REMOTE, job_id="j"), True, id="job-to-remote"
    ),
    pytest.param(data(LOCAL, OTHER), False, id="targeted-other-from-local"),
    pytest.param(data(LOCAL, LOCAL), False, id="targeted-local-from-local"),
    pytest.param(data(OTHER, LOCAL), False, id="targeted-local-from-other"),
    pytest.param(data(LOCAL, None), False, id="broadcast-from-local-stays"),
    pytest.param(BusEndMessage(source=LOCAL), False, id="end-broadcast-stays"),
    pytest.param(Transcript(source=LOCAL), True, id="forward-type-broadcast-from-local"),
    pytest.param(Transcript(source=LOCAL, target=OTHER), True, id="forward-type-to-other"),
    pytest.param(Transcript(source=LOCAL, target=LOCAL), True, id="forward-type-to-local"),
    pytest.param(LoudTranscript(source=LOCAL), True, id="forward-subtype-from-local"),
    pytest.param(Transcript(source=OTHER), False, id="forward-type-broadcast-from-other"),
    pytest.param(Transcript(source=REMOTE), False, id="forward-type-from-remote-not-echoed"),
    pytest.param(Transcript(source=OTHER, target=OTHER), False, id="forward-type-other-other"),
    pytest.param(add_worker(LOCAL, REMOTE), False, id="add-worker-targeted-remote"),
    pytest.param(add_worker(LOCAL, None), False, id="add-worker-broadcast"),
    pytest.param(Secret(source=LOCAL, target=REMOTE), False, id="local-only-targeted-remote"),
    pytest.param(LocalTranscript(source=LOCAL), False, id="local-only-forward-subtype"),
    pytest.param(
        LocalTranscript(source=LOCAL, target=REMOTE), False, id="local-only-forward-to-remote"
    ),
]

OUTBOUND_CLIENT = [
    pytest.param(data(OTHER, REMOTE), True, id="targeted-remote-from-other"),
    pytest.param(data(REMOTE, REMOTE), True, id="targeted-remote-from-remote-name"),
    pytest.param(Transcript(source=OTHER, target=REMOTE), True, id="forward-type-other-to-remote"),
]

OUTBOUND_SERVER = [
    pytest.param(data(OTHER, REMOTE), False, id="targeted-remote-from-other"),
    pytest.param(data(REMOTE, REMOTE), False, id="targeted-remote-from-remote-name"),
    pytest.param(Transcript(source=OTHER, target=REMOTE), False, id="forward-type-other-to-remote"),
]


@pytest.mark.parametrize(("message", "crosses"), OUTBOUND_BOTH + OUTBOUND_CLIENT)
def test_client_should_send(message: BusMessage, crosses: bool) -> None:
    assert client_rules().should_send(message) is crosses


@pytest.mark.parametrize(("message", "crosses"), OUTBOUND_BOTH + OUTBOUND_SERVER)
def test_server_should_send(message: BusMessage, crosses: bool) -> None:
    assert server_rules().should_send(message) is crosses


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(Transcript(source=LOCAL), id="transcript"),
        pytest.param(
            BusFrameMessage(source=LOCAL, frame={}, direction=FrameDirection.DOWNSTREAM),
            id="frame",
        ),
        pytest.param(data(LOCAL, None), id="data"),
    ],
)
def test_without_forward_types_broadcasts_stay(message: BusMessage) -> None:
    for outbound_needs_local_source in (False, True):
        rules = ForwardingRules.build(
            local_worker=LOCAL,
            remote_worker=REMOTE,
            outbound_needs_local_source=outbound_needs_local_source,
        )
        assert rules.should_send(message) is False


# --- inbound ---------------------------------------------------------------------------------

INBOUND = [
    # (message, refusal or None when accepted)
    pytest.param(data(REMOTE, LOCAL), None, id="remote-to-local"),
    pytest.param(
        BusJobResponseMessage(source=REMOTE, target=LOCAL, job_id="j", status=JobStatus.COMPLETED),
        None,
        id="job-response-remote-to-local",
    ),
    pytest.param(data(OTHER, LOCAL), Refusal.FORGED_SOURCE, id="forged-source"),
    pytest.param(data(LOCAL, LOCAL), Refusal.FORGED_SOURCE, id="claims-local-source"),
    pytest.param(data(REMOTE, OTHER), Refusal.WRONG_TARGET, id="remote-to-other"),
    pytest.param(data(REMOTE, REMOTE), Refusal.WRONG_TARGET, id="remote-to-itself"),
    pytest.param(data(REMOTE, None), Refusal.WRONG_TARGET, id="remote-broadcast"),
    pytest.param(data(OTHER, OTHER), Refusal.FORGED_SOURCE, id="neither-matches"),
    # forwarded types: by source, to the local worker or to nobody
    pytest.param(Transcript(source=REMOTE), None, id="forward-type-broadcast"),
    pytest.param(Transcript(source=REMOTE, target=LOCAL), None, id="forward-type-to-local"),
    pytest.param(LoudTranscript(source=REMOTE), None, id="forward-subtype-broadcast"),
    pytest.param(
        Transcript(source=REMOTE, target=OTHER), Refusal.WRONG_TARGET, id="forward-type-to-other"
    ),
    pytest.param(Transcript(source=OTHER), Refusal.FORGED_SOURCE, id="forward-type-forged"),
    pytest.param(
        Transcript(source=LOCAL, target=LOCAL), Refusal.FORGED_SOURCE, id="forward-type-as-local"
    ),
    # registry: only about the remote worker
    pytest.param(registry(REMOTE), None, id="registry-remote"),
    pytest.param(registry(REMOTE, target=LOCAL), None, id="registry-remote-to-local"),
    pytest.param(registry("phantom"), Refusal.FOREIGN_REGISTRY, id="registry-phantom"),
    pytest.param(registry(LOCAL), Refusal.FOREIGN_REGISTRY, id="registry-claims-local"),
    pytest.param(
        registry(REMOTE, "phantom"), Refusal.FOREIGN_REGISTRY, id="registry-mixed-phantom-last"
    ),
    pytest.param(
        registry("phantom", REMOTE), Refusal.FOREIGN_REGISTRY, id="registry-mixed-phantom-first"
    ),
    pytest.param(registry(REMOTE, target=OTHER), Refusal.FOREIGN_REGISTRY, id="registry-to-other"),
    # worker ready: only the remote worker, about itself
    pytest.param(ready(REMOTE), None, id="ready-remote-broadcast"),
    pytest.param(ready(REMOTE, LOCAL), None, id="ready-remote-to-local"),
    pytest.param(ready(OTHER), Refusal.FORGED_SOURCE, id="ready-from-other"),
    pytest.param(ready(LOCAL), Refusal.FORGED_SOURCE, id="ready-claims-local"),
    pytest.param(ready(REMOTE, OTHER), Refusal.WRONG_TARGET, id="ready-to-other"),
    # end and cancel: from the remote worker, untargeted or to the local worker; the proxy
    # turns them into the end of its own session (see session_control)
    pytest.param(BusEndMessage(source=REMOTE), None, id="end-untargeted"),
    pytest.param(BusCancelMessage(source=REMOTE), None, id="cancel-untargeted"),
    pytest.param(BusEndWorkerMessage(source=REMOTE), None, id="end-worker-untargeted"),
    pytest.param(BusCancelWorkerMessage(source=REMOTE), None, id="cancel-worker-untargeted"),
    pytest.param(BusEndMessage(source=OTHER), Refusal.FORGED_SOURCE, id="end-untargeted-forged"),
    pytest.param(BusEndMessage(source=REMOTE, target=LOCAL), None, id="end-local"),
    pytest.param(BusCancelMessage(source=REMOTE, target=LOCAL), None, id="cancel-local"),
    pytest.param(BusEndWorkerMessage(source=REMOTE, target=LOCAL), None, id="end-worker-local"),
    pytest.param(
        BusCancelWorkerMessage(source=REMOTE, target=LOCAL), None, id="cancel-worker-local"
    ),
    pytest.param(
        BusEndMessage(source=OTHER, target=LOCAL), Refusal.FORGED_SOURCE, id="end-local-forged"
    ),
    pytest.param(
        BusCancelMessage(source=REMOTE, target=OTHER), Refusal.WRONG_TARGET, id="cancel-other"
    ),
    # local-only: never from a peer
    pytest.param(add_worker(REMOTE, LOCAL), Refusal.LOCAL_ONLY, id="add-worker"),
    pytest.param(Secret(source=REMOTE, target=LOCAL), Refusal.LOCAL_ONLY, id="user-local-only"),
    pytest.param(LocalTranscript(source=REMOTE), Refusal.LOCAL_ONLY, id="local-only-forward"),
]


@pytest.mark.parametrize(
    "rules",
    [pytest.param(client_rules(), id="client"), pytest.param(server_rules(), id="server")],
)
@pytest.mark.parametrize(("message", "refusal"), INBOUND)
def test_check_inbound(
    rules: ForwardingRules, message: BusMessage, refusal: Refusal | None
) -> None:
    assert rules.check_inbound(message) is refusal


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        pytest.param(Transcript(source="tts"), None, id="forward-type-from-extra-source"),
        pytest.param(Transcript(source=REMOTE), None, id="forward-type-from-remote"),
        pytest.param(
            Transcript(source="tts", target=LOCAL), None, id="forward-type-extra-to-local"
        ),
        pytest.param(Transcript(source=OTHER), Refusal.FORGED_SOURCE, id="forward-type-unlisted"),
        pytest.param(
            Transcript(source="tts", target=OTHER), Refusal.WRONG_TARGET, id="forward-extra-other"
        ),
        # forward_sources widens forwarded types only, not ordinary targeted messages
        pytest.param(data("tts", LOCAL), Refusal.FORGED_SOURCE, id="plain-data-from-extra"),
        pytest.param(data(REMOTE, LOCAL), None, id="plain-data-from-remote"),
    ],
)
def test_check_inbound_with_forward_sources(message: BusMessage, refusal: Refusal | None) -> None:
    rules = client_rules(forward_sources=["tts", REMOTE])
    assert rules.check_inbound(message) is refusal


def test_forward_sources_replace_the_remote_default() -> None:
    rules = client_rules(forward_sources=["tts"])
    assert rules.check_inbound(Transcript(source="tts")) is None
    assert rules.check_inbound(Transcript(source=REMOTE)) is Refusal.FORGED_SOURCE
    assert rules.check_inbound(data(REMOTE, LOCAL)) is None


@pytest.mark.parametrize(
    ("message", "control"),
    [
        pytest.param(BusEndMessage(source=REMOTE), SessionControl.END, id="end"),
        pytest.param(BusEndWorkerMessage(source=REMOTE), SessionControl.END, id="end-worker"),
        pytest.param(BusCancelMessage(source=REMOTE), SessionControl.CANCEL, id="cancel"),
        pytest.param(
            BusCancelWorkerMessage(source=REMOTE), SessionControl.CANCEL, id="cancel-worker"
        ),
        pytest.param(data(REMOTE, LOCAL), None, id="data"),
        pytest.param(
            BusJobCancelMessage(source=REMOTE, target=LOCAL, job_id="j"), None, id="job"
        ),
    ],
)
def test_session_control_classifies_end_and_cancel(
    message: BusMessage, control: SessionControl | None
) -> None:
    assert session_control(message) is control


def test_refusal_values_are_the_counter_keys() -> None:
    assert {r.value for r in Refusal} == {
        "local_only",
        "forged_source",
        "wrong_target",
        "foreign_registry",
    }


# --- interest --------------------------------------------------------------------------------

NAMES = (LOCAL, REMOTE, OTHER)


def corpus() -> list[BusMessage]:
    """Every kind of message from every source to every target."""
    makers = [
        lambda s, t: data(s, t),
        lambda s, t: Transcript(source=s, target=t),
        lambda s, t: LoudTranscript(source=s, target=t),
        lambda s, t: BusEndMessage(source=s, target=t),
        lambda s, t: ready(s, t),
        lambda s, t: Secret(source=s, target=t),
        lambda s, t: add_worker(s, t),
    ]
    return [
        make(source, target)
        for make, source, target in itertools.product(makers, NAMES, (*NAMES, None))
    ]


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(client_rules(), id="client"),
        pytest.param(server_rules(), id="server"),
        pytest.param(
            ForwardingRules.build(local_worker=LOCAL, remote_worker=REMOTE), id="no-forward-types"
        ),
    ],
)
def test_interest_selects_everything_should_send_may_need(rules: ForwardingRules) -> None:
    interest = rules.interest()
    sent = [m for m in corpus() if rules.should_send(m)]
    assert sent  # the corpus exercises the rule
    missed = [m for m in sent if not interest.matches(m)]
    assert missed == []


def test_interest_is_narrow() -> None:
    # The link must not be woken by every broadcast on the bus.
    rules = server_rules()
    interest = rules.interest()
    assert interest.targets == frozenset({REMOTE})
    assert interest.types == (Transcript,)
    assert not interest.broadcasts
    assert not interest.everything
    assert not interest.matches(data(LOCAL, None))
    assert not interest.matches(data(LOCAL, OTHER))
    assert interest.matches(Transcript(source=OTHER))  # by type; should_send decides by source
