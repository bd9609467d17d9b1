"""Pipelined requests are handed to the app ServerState.max_pipelined at a time, however
many one read brings, and none while the client reads none of its answers: a client
that pipelines without reading makes the node run and buffer a bounded number of
answers, not every request it sent (each answer may be megabytes)."""

from __future__ import annotations

from http_fakes import FakeApp, answer, connect

from lightnode.config.model import ServerLimits
from lightnode.http.protocol import ServerState


def run(n: int) -> bytes:
    body = b'{"n":%d}' % n
    return b"POST /public/api/v1/svc/ep/run HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def window(size: int) -> ServerState:
    state = ServerState(ServerLimits())
    state.max_pipelined = size
    return state


def test_one_read_of_many_requests_hands_over_a_window_at_a_time() -> None:
    c = connect(FakeApp(auto=False), state=window(3))
    c.feed(b"".join(run(n) for n in range(10)))  # one read
    assert len(c.app.exchanges) == 3
    assert not c.transport.reading
    answer(c.app.exchanges[1])  # answered out of order: nothing written yet, no room
    assert len(c.app.exchanges) == 3
    answer(c.app.exchanges[0])  # /0 and /1 written: two more go to the app
    assert len(c.app.exchanges) == 5
    for n in range(2, 10):
        answer(c.app.exchanges[n])
    assert [r.json()["body"] for r in c.responses()] == [f'{{"n":{n}}}' for n in range(10)]
    assert c.transport.reading and not c.transport.closed


def test_answers_at_once_still_serve_every_request_of_the_read() -> None:
    c = connect(FakeApp(auto=True), state=window(2))
    c.feed(b"".join(run(n) for n in range(7)))
    assert [r.json()["body"] for r in c.responses()] == [f'{{"n":{n}}}' for n in range(7)]
    assert c.transport.reading


def test_nothing_more_is_handed_over_while_the_client_reads_no_answer() -> None:
    c = connect(FakeApp(auto=True), state=window(4))
    c.protocol.pause_writing()  # the client stopped reading: the socket's buffer is full
    c.transport.reading = True  # bytes read before the pause was seen
    c.protocol._reading_paused = False
    c.feed(b"".join(run(n) for n in range(6)))
    assert c.app.exchanges == []
    c.protocol.resume_writing()
    assert len(c.app.exchanges) == 6
    assert [r.json()["body"] for r in c.responses()] == [f'{{"n":{n}}}' for n in range(6)]


def test_a_client_gone_drops_the_requests_held_back_and_records_them() -> None:
    # One record per /run request (SPEC §10): those never handed over count as gone.
    c = connect(FakeApp(auto=False), state=window(2))
    c.feed(b"".join(run(n) for n in range(5)))
    handed = list(c.app.exchanges)
    assert len(handed) == 2
    c.eof()
    assert c.app.closed_before_answer == [ex.path for ex in handed]  # the app's as before
    assert len(c.app.exchanges) == 2  # the others never reach the app
    assert c.app.refusals == [(b"POST", b"/public/api/v1/svc/ep/run", 499, "ClientGone")] * 3
    assert c.transport.closed


def test_a_reset_drops_the_requests_held_back_and_records_them() -> None:
    c = connect(FakeApp(auto=False), state=window(2))
    c.feed(b"".join(run(n) for n in range(4)))
    handed = list(c.app.exchanges)
    c.lose()
    assert all(ex.cancelled for ex in handed) and len(c.app.exchanges) == 2
    assert [status for _, _, status, _ in c.app.refusals] == [499, 499]
