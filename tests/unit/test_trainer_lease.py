"""Trainer replicas and job leases (services/trainer/lease.py): acquire, renew, expiry, takeover, the
fence on a writer that lost its lease; the takeover sweep and the queue position in the domain."""

import json
import threading
import time

import pytest

from classforge.v1 import events_pb2, trainer_service_pb2
from services.common.errors import FailedPrecondition
from services.common.events import InProcessEventBus, new_event, payload_kind
from services.common.storage import LocalObjectStore
from services.trainer.domain import TrainerDomain
from services.trainer.lease import FencedStore, LeaseLost, Leases
from services.trainer.training_store import Training

Status = trainer_service_pb2.TrainingStatus


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "store")


@pytest.fixture
def bus():
    bus = InProcessEventBus()
    yield bus
    bus.close()


def test_the_first_replica_gets_the_lease_and_another_waits_while_it_is_renewed(store):
    clock = Clock()
    a, b = Leases(store, "a", 30, clock), Leases(store, "b", 30, clock)
    lease = a.acquire("job-1")
    assert (lease.holder, lease.token, lease.expires_at) == ("a", 1, 1030.0)
    assert b.acquire("job-1") is None
    clock.now += 25
    assert a.renew("job-1").expires_at == 1055.0
    clock.now += 25  # past the first expiry, but renewed
    assert b.acquire("job-1") is None
    stored = json.loads(store.get_bytes("state/trainer/job-1/lease.json"))
    assert stored["holder"] == "a" and stored["token"] == 1


def test_an_expired_lease_is_taken_over_with_a_higher_token_and_the_old_holder_is_fenced(store):
    clock = Clock()
    a, b = Leases(store, "a", 30, clock), Leases(store, "b", 30, clock)
    a.acquire("job-1")
    clock.now += 31  # a stopped renewing (died, or paused)
    taken = b.acquire("job-1")
    assert (taken.holder, taken.token) == ("b", 2)
    with pytest.raises(LeaseLost, match="took it over"):
        a.renew("job-1")
    assert a.lost("job-1") and a.held("job-1") is None
    with pytest.raises(LeaseLost):
        a.check_writable("job-1")
    b.verify("job-1")  # the new holder may write


def test_a_writer_whose_lease_was_taken_writes_nothing_to_the_model_prefix(store):
    a_clock, b_clock = Clock(), Clock()
    a, b = Leases(store, "a", 30, a_clock), Leases(store, "b", 30, b_clock)
    a.acquire("job-1")
    a_store = FencedStore(store, "job-1", a)
    a_store.put_bytes("models/job-1/checkpoints/s1-e0001/state.json", b"{}")
    b_clock.now += 31  # by b's clock a's lease expired (a's runs slow: skew, or a long pause)
    b.acquire("job-1")
    # a still believes it holds the lease (by its clock it has time left): the fence reads the stored one.
    with pytest.raises(LeaseLost, match="b \\(token 2\\)"):
        a_store.put_bytes("models/job-1/checkpoints/s1-e0002/state.json", b"{}")
    with pytest.raises(LeaseLost):
        a_store.delete_prefix("models/job-1/checkpoints/s1-e0001/")
    assert not store.exists("models/job-1/checkpoints/s1-e0002/state.json")
    assert store.exists("models/job-1/checkpoints/s1-e0001/state.json")
    FencedStore(store, "job-1", b).put_bytes("models/job-1/checkpoints/s1-e0002/state.json", b"{}")
    writers = [json.loads(store.get_bytes(f"models/job-1/checkpoints/{name}/writer.json"))
               for name in ("s1-e0001", "s1-e0002")]
    assert [(w["holder"], w["token"]) for w in writers] == [("a", 1), ("b", 2)]


def test_a_lease_not_renewed_in_time_refuses_writes_before_anyone_may_take_over(store):
    clock = Clock()
    a = Leases(store, "a", 30, clock)
    a.acquire("job-1")
    clock.now += 19  # 11 s left: more than the 10 s margin
    a.check_writable("job-1")
    clock.now += 2  # 9 s left: a write now could outlast the lease
    with pytest.raises(LeaseLost, match="not renewed in time"):
        FencedStore(store, "job-1", a).put_bytes("models/job-1/x", b"x")
    assert not store.exists("models/job-1/x")


def test_a_released_lease_is_free_at_once_and_a_done_one_says_so(store):
    clock = Clock()
    a, b = Leases(store, "a", 30, clock), Leases(store, "b", 30, clock)
    a.acquire("job-1")
    a.release("job-1", done=False)  # shutdown: no need to wait for expiry
    assert b.acquire("job-1").token == 2
    b.release("job-1", done=True)
    assert b.read("job-1").done and b.mine("job-1") and not b.held("job-1")


def test_of_racing_replicas_exactly_one_acquires(store):
    replicas = [Leases(store, f"r{i}", 30) for i in range(6)]
    barrier = threading.Barrier(len(replicas))
    won = []

    def race(leases):
        barrier.wait()
        if leases.acquire("job-1") is not None:
            won.append(leases.holder)

    threads = [threading.Thread(target=race, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and Leases(store, "x", 30).read("job-1").holder == won[0]


# ---------------------------------------------------------------------------------------------- domain


class Replica:
    """A TrainerDomain whose runs wait on a gate instead of training (the sweep and queue are under test)."""

    def __init__(self, tmp_path, store, bus, name, clock):
        self.domain = TrainerDomain(bus, store, work_root=tmp_path / name, replica_id=name, lease_seconds=30,
                                    clock=clock, heartbeat_seconds=60)
        self.ran: list[str] = []
        self.gate = threading.Event()

        def run(job_id, stop):
            self.ran.append(job_id)
            self.gate.wait(30)

        self.domain.worker._run_job = run

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.gate.set()  # lets a run in progress end, so close() does not wait for it
        self.domain.close(5)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.02)


def put_training(store, job_id, status):
    store.put_bytes(f"state/trainer/{job_id}/training.pb",
                    Training(job_id=job_id, records_uri=f"records/{job_id}/", status=status).SerializeToString())


def test_the_sweep_takes_over_only_jobs_without_a_live_lease(tmp_path, store, bus):
    clock = Clock()
    dead = Leases(store, "dead", 30, clock)
    alive = Leases(store, "alive", 30, clock)
    for job_id, status in [("orphan", Status.TRAINING_STATUS_RUNNING), ("held", Status.TRAINING_STATUS_RUNNING),
                           ("unleased", Status.TRAINING_STATUS_QUEUED), ("ended", Status.TRAINING_STATUS_SUCCEEDED)]:
        put_training(store, job_id, status)
    dead.acquire("orphan")
    clock.now += 20
    alive.acquire("held")
    clock.now += 11  # dead's lease on "orphan" expired; alive's on "held" has 19 s left
    with Replica(tmp_path, store, bus, "b", clock) as replica:
        assert replica.domain.take_over() == 2
        wait_until(lambda: replica.ran)
        assert replica.ran == ["orphan"]  # RUNNING first; "unleased" waits behind it
        assert replica.domain.worker.queued() == ["unleased"]
        assert replica.domain.leases.read("orphan").token == 2
        assert replica.domain.leases.read("held").holder == "alive"
        assert replica.domain.take_over() == 0  # nothing more, and ended jobs are not read again
        assert "ended" in replica.domain._settled


def test_a_replica_drops_a_job_whose_lease_another_took(tmp_path, store, bus):
    clock = Clock()
    put_training(store, "job-1", Status.TRAINING_STATUS_RUNNING)
    with Replica(tmp_path, store, bus, "a", clock) as replica:
        replica.domain.take_over()
        wait_until(lambda: replica.ran == ["job-1"])
        clock.now += 31  # a was paused past its lease
        assert Leases(store, "b", 30, clock).acquire("job-1").token == 2
        replica.domain.keep_leases()  # renewal finds b's lease: a drops the job
        assert not replica.domain.leases.held("job-1") and replica.domain.leases.lost("job-1")
        assert not replica.domain.worker.holds("job-1") or replica.domain.worker._stop.fenced
        with pytest.raises(LeaseLost):
            replica.domain.trainings.save(Training(job_id="job-1", status=Status.TRAINING_STATUS_FAILED))
        assert Training.FromString(store.get_bytes("state/trainer/job-1/training.pb")).status == \
            Status.TRAINING_STATUS_RUNNING


def test_records_built_for_a_job_another_live_replica_holds_is_left_to_it(tmp_path, store, bus):
    clock = Clock()
    Leases(store, "other", 30, clock).acquire("job-1")
    put_training(store, "job-1", Status.TRAINING_STATUS_RUNNING)
    with Replica(tmp_path, store, bus, "a", clock) as replica:
        replica.domain.handle(new_event("job-1", "tfrecords", records_built=events_pb2.RecordsBuilt(
            records_uri="records/job-1/")))
        assert not replica.domain.worker.holds("job-1") and replica.ran == []


def test_a_stop_of_an_ended_training_is_refused_whoever_holds_its_lease(tmp_path, store, bus):
    """The worker of an ended job releases its lease after saving the end; a stop arriving meanwhile must
    not mistake the job for one another replica trains (it once returned quietly then)."""
    clock = Clock()
    put_training(store, "job-1", Status.TRAINING_STATUS_STOPPED)
    Leases(store, "other", 30, clock).acquire("job-1")  # this replica cannot acquire it
    with Replica(tmp_path, store, bus, "a", clock) as replica:
        with pytest.raises(FailedPrecondition, match="already ended as TRAINING_STATUS_STOPPED"):
            replica.domain.stop("job-1")
        redelivered = new_event("job-1", "jobs", cancel_requested=events_pb2.CancelRequested(reason="again"))
        replica.domain.handle(redelivered)  # a redelivered cancel changes nothing
        assert replica.domain.get("job-1").status == Status.TRAINING_STATUS_STOPPED
        assert replica.domain.leases.read("job-1").holder == "other"


def test_waiting_jobs_publish_their_queue_position(tmp_path, store, bus):
    beats: list[events_pb2.Event] = []
    bus.subscribe("observer", beats.append, kinds=["stage_heartbeat"])
    with Replica(tmp_path, store, bus, "a", Clock(time.time())) as replica:
        for job_id in ("first", "second", "third"):
            replica.domain.start(job_id, f"records/{job_id}/")

        def positions():  # each job's latest heartbeat: the running one says 0
            return {e.job_id: e.stage_heartbeat.queue_position for e in list(beats)}

        wait_until(lambda: positions() == {"first": 0, "second": 1, "third": 2})
        queued = [e for e in beats if e.job_id == "third" and e.stage_heartbeat.queue_position == 2][-1]
        assert "position 2 of 2" in queued.stage_heartbeat.activity and "trainer a" in queued.stage_heartbeat.activity
        assert "first" in queued.stage_heartbeat.activity  # behind the running job
        assert all(payload_kind(e) == "stage_heartbeat" for e in beats)


# ------------------------------------------------------------------------------- a real run, two replicas


def test_a_paused_replica_is_fenced_and_the_job_completes_once_on_the_other(tmp_path, store):
    """Replica a trains; its lease renewals stop (a long pause, a partition from the store) while its
    training thread goes on. Once its lease is too close to expiry its writes are refused and it stops
    without reporting anything; replica b takes the job over from a's last checkpoint and completes it.
    One training_completed, and the checkpoints left are in order, each written by the lease holder of
    its time."""
    from services.demo_data import load_digits
    from services.trainer.backbones import Task
    from services.trainer.data import ArrayData
    from tests.unit.test_trainer_domain import World, config

    images, labels, names = load_digits(24)
    data = ArrayData({"train": (images[:640], labels[:640]), "val": (images[640:800], labels[640:800])},
                     (Task("label", names),))
    world = World(tmp_path, data, slow=0.15)
    world.store = store

    def replica(name):
        return TrainerDomain(world.bus, store, work_root=tmp_path / f"work-{name}", progress_seconds=0.0,
                             open_data=world.open_data, replica_id=name, lease_seconds=1.5)

    a, b = replica("a"), replica("b")
    try:
        a.start("job-z", "records/job-z/", config(epochs=6, steps=4))
        world.wait_for(lambda: store.exists("models/job-z/checkpoints/latest.json"), timeout=120)
        a._keeper_stop.set()  # a stops renewing, but its worker trains on
        b.resume()  # b's sweep takes the job over once a's lease expired
        done = b.wait("job-z", {Status.TRAINING_STATUS_SUCCEEDED, Status.TRAINING_STATUS_FAILED}, timeout=180)
        assert done.status == Status.TRAINING_STATUS_SUCCEEDED, done.error
        world.wait_for(lambda: not a.worker.holds("job-z"), timeout=60)
        world.bus.drain(30)  # every event published so far has reached the observer
        kinds = world.kinds("job-z")
        assert kinds.count("training_completed") == 1 and "stage_failed" not in kinds, kinds
        world.wait_for(lambda: b.leases.read("job-z").done, timeout=30)  # released once the run ended
        lease = b.leases.read("job-z")
        assert lease.holder == "b" and lease.token >= 2
        names = sorted({info.key.split("/")[3] for info in store.list("models/job-z/checkpoints/")
                        if info.key.count("/") == 4})
        writers = [json.loads(store.get_bytes(f"models/job-z/checkpoints/{n}/writer.json")) for n in names]
        tokens = [w["token"] for w in writers]
        assert tokens == sorted(tokens) and writers[-1]["holder"] == "b", (names, writers)
        assert store.exists("models/job-z/manifest.json")
    finally:
        a.close(30)
        b.close(30)
        world.bus.close()


def test_a_cancel_consumed_by_a_replica_that_does_not_hold_the_job_reaches_the_holder(tmp_path, store, bus):
    from services.common.stage_work import Cancellations

    cancelled: list[events_pb2.Event] = []
    bus.subscribe("observer", cancelled.append, kinds=["job_cancelled"])
    clock = Clock(time.time())
    with Replica(tmp_path, store, bus, "a", clock) as holder, Replica(tmp_path, store, bus, "b", clock) as other:
        holder.domain.start("busy", "records/busy/")
        holder.domain.start("waiting", "records/waiting/")
        wait_until(lambda: holder.ran == ["busy"])
        Cancellations(store).request("waiting", "not needed")
        # The partition's consumer (b) gets the event; a holds the job, so b leaves it alone.
        other.domain.handle(new_event("waiting", "jobs", cancel_requested=events_pb2.CancelRequested(
            reason="not needed")))
        assert Training.FromString(store.get_bytes("state/trainer/waiting/training.pb")).status == \
            Status.TRAINING_STATUS_QUEUED
        holder.domain.keep_leases()  # a's renewal round sees the cancel marker
        assert holder.domain.get("waiting").status == Status.TRAINING_STATUS_STOPPED
        assert not holder.domain.worker.holds("waiting") and holder.domain.leases.read("waiting").done
        bus.drain(10)
        assert [e.job_id for e in cancelled] == ["waiting"]


@pytest.mark.parametrize("seconds", ["1", "0", "-5"])
def test_a_lease_too_short_to_renew_is_a_settings_error_naming_the_variable(seconds):
    from services.common.settings import SettingsError
    from services.trainer.settings import TrainerSettings
    from tests.unit.test_settings import REQUIRED

    env = {**REQUIRED, "CLASSFORGE_TRAINER_LEASE_SECONDS": seconds, "CLASSFORGE_GRPC_PLAINTEXT": "true",
           "CLASSFORGE_AUTH_DISABLED": "true"}
    with pytest.raises(SettingsError, match="CLASSFORGE_TRAINER_LEASE_SECONDS"):
        TrainerSettings.load(env)
    assert TrainerSettings.load({**env, "CLASSFORGE_TRAINER_LEASE_SECONDS": "4"}).lease_seconds == 4
