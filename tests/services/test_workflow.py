"""The job workflow (real Redis): job leases and their heartbeat, parts (one task per part and
boards worked off by idle workers), locks and side values."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter

import pytest
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.testing import RedisServer
from hiddenscope_service.workflow import (
    Cancelled,
    Heartbeat,
    JobLease,
    LeaseLost,
    Lock,
    Parts,
    Values,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    return JobStore(redis_server.client(), prefix=f"wf-{secrets.token_hex(4)}", max_attempts=2)


def _threads(n: int, target: object) -> None:
    ts = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# ------------------------------------------------------------------------------ job lease


def test_a_heartbeat_keeps_a_lease_and_a_dead_holder_is_taken_over(store: JobStore) -> None:
    job, _ = store.create("k", {})
    lease = JobLease.claim(store, job.id, "a", 0.6)
    assert lease.held
    assert lease.attempts == 1
    assert lease.status == "running"
    with lease.heartbeat() as beat:
        time.sleep(1.2)  # two lease lengths: only the heartbeat keeps it
        other = JobLease.claim(store, job.id, "b", 0.6)
        assert other.outcome == "busy"
        assert 0 < other.retry_after <= 0.6
    assert not beat.lost
    time.sleep(0.8)  # no heartbeat: the lease runs out (the holder "died")
    taken = JobLease.claim(store, job.id, "b", 30)
    assert taken.held
    assert taken.attempts == 2
    with pytest.raises(LeaseLost):
        lease.progress()(1, 1)
    assert not lease.finish("succeeded")  # the old holder cannot finish it
    assert taken.finish("succeeded", result={"ok": 1})
    assert store.get(job.id).result == {"ok": 1}
    assert JobLease.claim(store, job.id, "c", 30).outcome == "terminal"


def test_lease_progress_cancel_attempt_cap_and_notes(store: JobStore) -> None:
    job, _ = store.create("k", {})
    lease = JobLease.claim(store, job.id, "a", 30)
    progress = lease.progress(min_interval=0)
    progress(3, 10)
    assert store.get(job.id).progress.done == 3
    lease.set_note("staging_id", "s1")
    assert lease.get_note("staging_id") == "s1"
    store.request_cancel(job.id)
    with pytest.raises(Cancelled):
        progress(4, 10)
    assert lease.finish("cancelled")

    job, _ = store.create("k", {})
    for owner in ("a", "b"):
        assert JobLease.claim(store, job.id, owner, 0.05).held
        time.sleep(0.1)
    exhausted = JobLease.claim(store, job.id, "c", 30)
    assert exhausted.outcome == "exhausted"
    assert store.get(job.id).status == "failed"


def test_a_heartbeat_stops_when_the_lease_is_lost() -> None:
    beats: list[int] = []

    def beat() -> bool:
        beats.append(1)
        return len(beats) < 2

    with Heartbeat(beat, 0.01) as hb:
        time.sleep(0.2)
    assert hb.lost
    assert len(beats) == 2


def test_one_thread_beats_every_heartbeat_and_none_beats_after_its_block() -> None:
    counts = Counter[int]()
    lock = threading.Lock()

    def hold(i: int) -> None:
        def beat() -> bool:
            with lock:
                counts[i] += 1
            return True

        with Heartbeat(beat, 0.01 + 0.002 * (i % 5), name=f"hb-{i}"):
            time.sleep(0.15)
            assert sum(t.name == "heartbeats" for t in threading.enumerate()) == 1

    _threads(20, hold)
    assert len(counts) == 20
    assert all(n >= 3 for n in counts.values()), counts  # each renewed, none starved
    after = dict(counts)
    time.sleep(0.1)
    assert dict(counts) == after  # every block ended: nothing is renewed any more


def test_a_forked_child_has_its_own_renewal_thread() -> None:
    import multiprocessing

    with Heartbeat(lambda: True, 0.01):  # the parent's thread runs while the child is forked
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()

        def child() -> None:
            beats: list[int] = []

            def beat() -> bool:
                beats.append(1)
                return True

            with Heartbeat(beat, 0.01):
                time.sleep(0.2)
            q.put(len(beats))

        p = ctx.Process(target=child)
        p.start()
        n = q.get(timeout=20)
        p.join(20)
    assert p.exitcode == 0
    assert n >= 5


# ------------------------------------------------------------------------------ parts as tasks


def test_driving_parts_start_count_merge_and_cap(store: JobStore) -> None:
    job, _ = store.create("match", {}, progress_total=3)
    parts = Parts(store, job.id, "shards", drives_job=True)
    parts.post(3)
    first = parts.claim(0, "w1", 30)
    assert (first.outcome, first.attempts) == ("run", 1)
    assert store.get(job.id).status == "running"
    assert store.get(job.id).started_at is not None
    busy = parts.claim(0, "w2", 30)
    assert busy.outcome == "busy"
    assert 0 < busy.retry_after <= 30
    assert first.done("a").done == 1
    again = parts.claim(0, "w2", 30)
    assert (again.outcome, again.complete) == ("done", False)
    for i in (1, 2):
        claim = parts.claim(i, f"w{i}", 30)
        assert claim.outcome == "run"
        got = claim.done(str(i))
        assert got.complete == (i == 2)
        assert got.status == "running"
    assert parts.results() == {0: "a", 1: "1", 2: "2"}
    job_now = store.get(job.id)
    assert job_now.progress.done == 3
    assert job_now.attempts == 3
    # a redelivery of any part after all are done learns it (and may merge)
    late = parts.claim(1, "w9", 30)
    assert (late.outcome, late.complete) == ("done", True)
    assert store.transition(job.id, ("running",), "succeeded", result={"n": 3})
    parts.drop()
    assert parts.claim(1, "w9", 30).outcome == "terminal"

    # the attempt cap (max_attempts=2): a part claimed a third time fails the job
    job, _ = store.create("match", {}, progress_total=2)
    parts = Parts(store, job.id, "shards", drives_job=True)
    parts.post(2)
    assert parts.claim(0, "a", 0.01).outcome == "run"
    time.sleep(0.05)
    assert parts.claim(0, "b", 0.01).outcome == "run"  # took over the expired lease
    time.sleep(0.05)
    exhausted = parts.claim(0, "c", 30)
    assert exhausted.outcome == "exhausted"
    assert exhausted.problem is not None
    assert exhausted.problem["title"] == "Too many attempts"
    assert "part 0" in exhausted.problem["detail"]
    failed = store.get(job.id)
    assert failed.status == "failed"
    assert failed.error == exhausted.problem
    assert parts.claim(1, "d", 30).outcome == "terminal"


def test_driving_parts_cancel_and_fail_the_job(store: JobStore) -> None:
    job, _ = store.create("match", {}, progress_total=2)
    parts = Parts(store, job.id, "shards", drives_job=True)
    parts.post(2)
    held = parts.claim(0, "a", 30)
    store.request_cancel(job.id)
    assert parts.claim(1, "b", 30).outcome == "cancelled"
    assert store.get(job.id).status == "cancelled"
    assert held.done("late").status == "cancelled"  # nothing recorded after the end
    assert parts.results() == {}

    job, _ = store.create("match", {}, progress_total=2)
    parts = Parts(store, job.id, "shards", drives_job=True)
    parts.post(2)
    claim = parts.claim(1, "a", 30)
    claim.fail({"status": 422, "title": "Bad", "detail": "no such layer"})
    failed = store.get(job.id)
    assert failed.status == "failed"
    assert failed.error == {"status": 422, "title": "Bad", "detail": "no such layer"}
    assert Parts(store, "no-such-job", "shards").claim(0, "a", 30).outcome == "gone"


def test_two_claimants_never_both_hold_a_part(store: JobStore) -> None:
    job, _ = store.create("match", {})
    parts = Parts(store, job.id, "shards", drives_job=True, max_attempts=100)
    parts.post(1)
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def claim(i: int) -> None:
        barrier.wait()
        outcomes.append(parts.claim(0, f"w{i}", 30).outcome)

    _threads(16, claim)
    assert Counter(outcomes) == {"run": 1, "busy": 15}


# ------------------------------------------------------------------------------ boards


def test_a_board_is_worked_off_once_by_concurrent_workers(store: JobStore) -> None:
    job, _ = store.create("ingest", {})
    board = Parts(store, job.id, "build:b1:write")
    board.post(40)
    ran: list[int] = []
    barrier = threading.Barrier(8)

    def work(w: int) -> None:
        barrier.wait()
        while (claim := board.claim_next(f"w{w}", 30)) is not None:
            with claim.heartbeat():
                ran.append(claim.index)
            claim.done()

    _threads(8, work)
    assert sorted(ran) == list(range(40))  # each part exactly once
    state = board.state()
    assert (state.total, state.done, state.problems) == (40, 40, [])
    assert store.get(job.id).attempts == 0  # a board does not touch its job
    board.drop()
    assert board.claim_next("w", 30) is None
    assert board.state().total == 0


def test_a_board_takes_over_a_dead_holders_part_and_posts_problems(store: JobStore) -> None:
    job, _ = store.create("ingest", {})
    board = Parts(store, job.id, "build:b2:index", max_attempts=3)
    board.post(3)
    dead = board.claim_next("dead", 0.05)  # its worker dies: no heartbeat
    assert dead is not None
    assert dead.index == 0
    live = board.claim_next("live", 30)
    assert live is not None
    assert live.index == 1
    time.sleep(0.1)
    taken = board.claim_next("helper", 30)
    assert taken is not None
    assert (taken.index, taken.attempts) == (0, 2)
    assert not dead.renew()  # the dead holder's lease is gone for good
    taken.done()
    bad = board.claim_next("helper", 30)
    assert bad is not None
    assert bad.index == 2
    bad.fail({"status": 422, "detail": "row 7 is NaN"})
    assert board.claim_next("helper", 30) is None  # part 1 is held, the rest is over
    state = board.state()
    assert (state.total, state.done) == (3, 1)
    assert state.problems == [{"status": 422, "detail": "row 7 is NaN"}]
    assert store.get(job.id).status == "queued"  # the job's own worker decides

    store.request_cancel(job.id)  # a cancelled (here: queued → cancelled) job: nothing to claim
    assert board.claim_next("helper", 30) is None


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_parts=st.integers(1, 12),
    workers=st.integers(1, 6),
    dying=st.sets(st.integers(0, 11), max_size=4),
)
def test_board_property_every_part_done_once_despite_dying_workers(
    store: JobStore, n_parts: int, workers: int, dying: set[int]
) -> None:
    """Workers that die holding a part (no heartbeat, never done) only delay it: another worker
    takes it over after the lease, every part ends done, and no part is ever held by two live
    workers at once."""
    job, _ = store.create("ingest", {})
    board = Parts(store, job.id, f"build:{secrets.token_hex(4)}:write", max_attempts=10)
    board.post(n_parts)
    lock = threading.Lock()
    holding: dict[int, str] = {}
    overlaps: list[int] = []
    died: set[int] = set()

    def work(w: int) -> None:
        while True:
            claim = board.claim_next(f"w{w}", 0.15)
            if claim is None:
                if board.state().done == n_parts:
                    return
                time.sleep(0.02)
                continue
            with lock:
                if claim.index in dying and claim.index not in died:
                    died.add(claim.index)  # this claim's worker "dies": its lease lapses
                    continue
                if claim.index in holding:
                    overlaps.append(claim.index)
                holding[claim.index] = f"w{w}"
            with claim.heartbeat():
                time.sleep(0.005)
            with lock:
                del holding[claim.index]
            claim.done()

    _threads(workers, work)
    assert overlaps == []
    assert board.state().done == n_parts
    board.drop()


# ------------------------------------------------------------------------------ side state


def test_locks_expire_and_release_only_their_holder(store: JobStore) -> None:
    lock = Lock(store, "reconcile-lock")
    with lock.held(30) as got:
        assert got
        with lock.held(30) as again:
            assert not again
    assert lock.acquire(30) is not None  # released at the end of the block
    assert not lock.release(token="someone-else")
    assert lock.release()  # unconditional: a worker ending what an API process locked
    index = Lock(store, "index-build")
    token = index.acquire(0.05, scope="ds-1")
    assert token is not None
    assert index.key("ds-1") == f"{store.prefix}:index-build:ds-1"
    assert index.acquire(30, scope="ds-2") is not None  # scopes are independent
    time.sleep(0.1)
    assert index.acquire(30, scope="ds-1") is not None  # expired by itself
    assert not index.release("ds-1", token)  # not the holder any more


def test_values_and_maxima(store: JobStore) -> None:
    errors = Values(store, "index-error", ttl=0.1)
    assert errors.get("ds") is None
    errors.put("ds", "MemoryError")
    assert errors.get("ds") == "MemoryError"
    time.sleep(0.2)
    assert errors.get("ds") is None
    errors.put("ds", "x", ttl=30)
    errors.delete("ds")
    assert errors.get("ds") is None

    floor = Values(store, "match-floor")
    assert floor.maximum("job") == 0
    _threads(20, lambda i: floor.raise_to("job", (i * 7) % 20))
    assert floor.maximum("job") == 19
    floor.raise_to("job", 3)
    assert floor.maximum("job") == 19
    floor.delete("job")
    assert floor.maximum("job", default=-1) == -1

    counts = Values(store, "helpers")
    _threads(10, lambda i: counts.add("job", 2))
    assert counts.add("job", 0) == 20
