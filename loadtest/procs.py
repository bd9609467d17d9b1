"""Generator processes: each runs a share of the load and reports to the parent.

    parent (ProcGroup)                       child (worker_main)
      spawn ------------- WorkerJob -------->  import, build the Recorder
        <----------------- ("ready", pid) ---
      ("go", go_at) ------------------------>  wait for go_at (CLOCK_MONOTONIC is
                                               shared by every process on the host)
        <---- ("seconds", [buckets], info) --  once a second: closed buckets, own CPU
      ("stop",) (Ctrl-C / abort) ----------->  end the stages now, drain briefly
        <--------------- ("done", totals) ---  encoded histograms, counts, CPU time
        <------------ ("failed", message) ---  on any exception in the child

Processes are started with the "spawn" method (never fork from a process that
has a running event loop). Children ignore SIGINT: the parent decides when to
stop them. Nothing but plain values and bytes crosses the pipe.
Must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from time import monotonic
from typing import Any

from loadtest.plan import Stage, split_connections
from loadtest.schedule import stage_starts

# How long the parent waits for children to import and report ready.
READY_TIMEOUT_S = 30.0
# Grace after the last stage + request timeout before a child is presumed stuck.
DONE_GRACE_S = 10.0
# Drain allowed after an abort ("stop"), instead of the full request timeout.
ABORT_DRAIN_S = 1.0
# Open files a generator process needs besides its connections (pipes, the loop).
FD_HEADROOM = 64


class GeneratorFailed(RuntimeError):
    """A generator process failed or stopped answering."""


@dataclass(frozen=True)
class WorkerJob:
    """One process's share of a run."""

    proc_index: int
    procs: int
    host: str
    port: int
    requests: tuple[bytes, ...]
    stages: tuple[Stage, ...]  # global stages; the share is taken in the child
    warmup_s: float
    timeout_s: float
    max_connections: int


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------- child side


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (a common default is 1024);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the limit
    return wanted if soft == resource.RLIM_INFINITY else int(soft)


def usable_connections(wanted: int, limit: int) -> int:
    """Connections a process may open under an open-files `limit` (at least 1)."""
    return max(1, min(wanted, limit - FD_HEADROOM))


def fd_limit_problem(stages: Sequence[Stage], procs: int, limit: int | None = None) -> str | None:
    """Why the closed-loop stages cannot open their connections, or None.

    Connections past the open-files limit would fail with EMFILE and be counted
    as the target's connect errors, so a run that needs them is refused.

    Args:
        limit: the hard RLIMIT_NOFILE (the most a process may raise its own to);
            read from this process when None.
    """
    if limit is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            return None
        limit = int(hard)
    share = max(
        (split_connections(s.connections, procs, 0) for s in stages if s.connections), default=0
    )
    if share + FD_HEADROOM <= limit:
        return None
    return (
        f"{share} connections in one generator process need about {share + FD_HEADROOM} "
        f"open files, above its limit of {limit} (ulimit -n): raise the limit, "
        "or spread the connections over more --procs"
    )


def watch_pipe(
    loop: asyncio.AbstractEventLoop, pipe: PipeEnd, callback: Callable[..., None], *args: Any
) -> None:
    """Call `callback(*args)` whenever `pipe` is readable; the pipe stays blocking.

    uvloop's add_reader makes the descriptor non-blocking. A message larger than the
    socket's buffer (the "done" totals of a generator process with 1,000 connections,
    or a busy second's buckets) then broke off in `recv` with BlockingIOError, which
    the parent took for the process gone ("exited unexpectedly"), in about one run of
    three. Reads start only once a message is there and its sender writes it whole, so
    blocking until its end is right; `send` needs it too, for the same messages.
    """
    loop.add_reader(pipe.fileno(), callback, *args)
    os.set_blocking(pipe.fileno(), True)


def worker_main(job: WorkerJob, pipe: PipeEnd) -> None:
    """Entry point of a generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit = raise_fd_limit(job.max_connections + FD_HEADROOM)
    # The open loop's pool stops below the limit (closed-loop stages were checked
    # against it by the parent): past it, connects would fail as if refused.
    job = dataclasses.replace(job, max_connections=usable_connections(job.max_connections, limit))
    try:
        import uvloop

        uvloop.run(_work(job, pipe))
    except BaseException as exc:  # report anything to the parent, then exit
        try:
            pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


async def sleep_until(when: float) -> None:
    """Sleep until monotonic time `when`, never returning before it.

    The loop's timers have ms resolution and may fire early; the last bit is
    spent yielding, so the next stage never starts before its time.
    """
    await asyncio.sleep(max(0.0, when - monotonic()))
    while monotonic() < when:
        await asyncio.sleep(0)


def share_stage(stage: Stage, job: WorkerJob) -> Stage:
    """This process's part of a closed-loop stage (open-loop stages are shared by index)."""
    if stage.connections is None:
        return stage
    return Stage(
        stage.duration_s,
        connections=split_connections(stage.connections, job.procs, job.proc_index),
    )


async def _work(job: WorkerJob, pipe: PipeEnd) -> None:
    from loadtest.client import Generator
    from loadtest.recorder import Recorder

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def on_readable() -> None:
        try:
            while pipe.poll():
                inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):
            loop.remove_reader(pipe.fileno())
            inbox.put_nowait(("stop",))

    def on_error(_loop: Any, context: dict[str, Any]) -> None:
        # A bug in a callback must end the run with a message, not hang it.
        exc = context.get("exception")
        inbox.put_nowait(("error", f"{context.get('message')}: {exc!r}"))

    loop.set_exception_handler(on_error)
    watch_pipe(loop, pipe, on_readable)
    pipe.send(("ready", os.getpid()))
    message = await inbox.get()
    if message[0] != "go":
        return
    go_at = float(message[1])
    recorder = Recorder(go_at + job.warmup_s, stage_starts(job.stages))
    generator = Generator(
        job.host,
        job.port,
        job.requests,
        recorder,
        proc_index=job.proc_index,
        procs=job.procs,
        max_connections=job.max_connections,
        timeout_s=job.timeout_s,
    )
    await sleep_until(go_at)
    cpu_start, wall_start = cpu_seconds(), monotonic()
    ticker = _Ticker(loop, pipe, recorder, generator)
    stopped = await _run_stages(job, generator, go_at, inbox)
    measured_s = min(
        max(0.0, monotonic() - recorder.measure_start),
        sum(stage.duration_s for stage in job.stages),
    )
    generator.finish()
    drain_s = ABORT_DRAIN_S if stopped else job.timeout_s + 0.5
    await _until(generator.drained, monotonic() + drain_s, inbox)
    generator.stop()
    ticker.cancel()
    buckets = recorder.close_all()  # first: closing seconds fills the total histogram
    totals = recorder.totals()
    totals.update(
        buckets=buckets,
        cpu_s=cpu_seconds() - cpu_start,
        wall_s=monotonic() - wall_start,
        peak_connections=generator.peak_connections,
        connect_attempts=generator.connect_attempts,
        pid=os.getpid(),
        stopped=stopped,
        measured_s=measured_s,
    )
    pipe.send(("done", totals))


async def _until(
    done: asyncio.Future[None] | None, deadline: float, inbox: asyncio.Queue[tuple[Any, ...]]
) -> bool:
    """Wait until `done` resolves or `deadline`; True if the parent said stop.

    Raises:
        RuntimeError: a callback of the generator failed.
    """
    while done is None or not done.done():
        getter = asyncio.ensure_future(inbox.get())
        waiting: set[asyncio.Future[Any]] = {getter} | ({done} if done is not None else set())
        finished, _ = await asyncio.wait(
            waiting, timeout=max(0.0, deadline - monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
        if getter not in finished:
            getter.cancel()
            if not finished:
                return False  # deadline
            continue
        message = getter.result()
        if message[0] == "stop":
            return True
        if message[0] == "error":
            raise RuntimeError(message[1])
    return False


async def _run_stages(
    job: WorkerJob, generator: Any, go_at: float, inbox: asyncio.Queue[tuple[Any, ...]]
) -> bool:
    """Run warm-up and stages back to back; True if the parent said stop."""
    stages = list(job.stages)
    if job.warmup_s > 0 and stages:
        first = stages[0]
        stages.insert(0, Stage(job.warmup_s, first.rate_rps, first.connections))
    start = go_at
    for stage in stages:
        generator.start_stage(share_stage(stage, job), start)
        end = start + stage.duration_s
        if await _until(None, end, inbox):
            return True
        await sleep_until(end)
        start = end
    return False


class _Ticker:
    """Ships closed per-second buckets and this process's CPU to the parent."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pipe: PipeEnd, recorder: Any, generator: Any
    ) -> None:
        self.loop, self.pipe = loop, pipe
        self.recorder, self.generator = recorder, generator
        self.cpu_last, self.wall_last = cpu_seconds(), monotonic()
        self.handle = loop.call_at(self._next_at(), self._tick)

    def _next_at(self) -> float:
        # Just after the next whole second of the measured run, in loop time.
        now = monotonic()
        start = self.recorder.measure_start
        target = start + (int(now - start) + 1 if now >= start else 0) + 0.01
        return float(self.loop.time() + (target - now))

    def _tick(self) -> None:
        now, cpu = monotonic(), cpu_seconds()
        cpu_pct = 100.0 * (cpu - self.cpu_last) / max(now - self.wall_last, 1e-6)
        self.cpu_last, self.wall_last = cpu, now
        buckets = self.recorder.close_seconds(now)
        info = dict(self.generator.snapshot(), cpu_pct=round(cpu_pct, 1))
        try:
            self.pipe.send(("seconds", buckets, info))
        except OSError:
            return
        self.handle = self.loop.call_at(self._next_at(), self._tick)

    def cancel(self) -> None:
        self.handle.cancel()


# --------------------------------------------------------------- parent side


class ProcGroup:
    """The parent's handle on the generator processes of one run."""

    def __init__(
        self,
        jobs: list[WorkerJob],
        on_seconds: Callable[[int, list[dict[str, Any]], dict[str, Any]], None],
    ) -> None:
        self.jobs = jobs
        self.on_seconds = on_seconds
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[PipeEnd] = []
        self.results: dict[int, dict[str, Any]] = {}
        self.pids: dict[int, int] = {}
        self._ready: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        self._ready, self._done = loop.create_future(), loop.create_future()
        for index, job in enumerate(self.jobs):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, args=(job, child_end), name=f"loadtest-gen-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self.pipes.append(parent_end)
            watch_pipe(loop, parent_end, self._readable, index)

    async def wait_ready(self) -> None:
        assert self._ready is not None
        await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)

    def go(self, go_at: float) -> None:
        for pipe in self.pipes:
            pipe.send(("go", go_at))

    def stop(self) -> None:
        for index, pipe in enumerate(self.pipes):
            if index not in self.results:
                try:
                    pipe.send(("stop",))
                except OSError:
                    pass

    async def wait_done(self, timeout_s: float) -> list[dict[str, Any]]:
        assert self._done is not None
        await asyncio.wait_for(asyncio.shield(self._done), timeout_s)
        return [self.results[index] for index in range(len(self.jobs))]

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for pipe in self.pipes:
            try:
                loop.remove_reader(pipe.fileno())
            except (OSError, ValueError):
                pass
            pipe.close()
        for process in self.processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)

    def _readable(self, index: int) -> None:
        pipe = self.pipes[index]
        try:
            while pipe.poll():
                self._handle(index, pipe.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            if index not in self.results:
                code = self.processes[index].exitcode
                self._fail(f"generator process {index} exited unexpectedly (exit code {code})")

    def _handle(self, index: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self.pids[index] = int(message[1])
            if len(self.pids) == len(self.jobs) and self._ready and not self._ready.done():
                self._ready.set_result(None)
        elif kind == "seconds":
            self.on_seconds(index, message[1], message[2])
        elif kind == "done":
            self.results[index] = message[1]
            if len(self.results) == len(self.jobs) and self._done and not self._done.done():
                self._done.set_result(None)
        elif kind == "failed":
            self._fail(f"generator process {index} failed: {message[1]}")

    def _fail(self, text: str) -> None:
        # Only the phase being awaited (ready, else done) gets the error.
        for future in (self._ready, self._done):
            if future is not None and not future.done():
                future.set_exception(GeneratorFailed(text))
                return
