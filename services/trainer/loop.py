"""The training loop: two-stage fine-tuning with checkpoints in the object store, resume after a crash,
stop at a step boundary, validation every k epochs, early stopping, progress callbacks.

A custom loop rather than `model.fit`, because it must: stop between two steps with a checkpoint, resume
in the middle of an epoch, report the data and regularisation losses apart, update the center-loss
centres, and run unchanged under MirroredStrategy (GPUs) and the default strategy (CPU). The step is one
tf.function (XLA-compiled when the config asks), so the Python overhead per step is one call.

Stages: stage 1 ("head") trains the heads only: the backbone is `trainable = False`, which in Keras 3
also runs its BatchNorm layers in inference mode (moving statistics are neither used from the batch nor
updated). Stage 2 ("full") trains everything with its own optimiser and learning rate. Either can be
skipped.

Checkpoints: after every epoch, and on a stop request, under `<prefix>checkpoints/<name>/`:
`model.weights.h5`, `optimizer.npz` (the stage optimiser's variables and the center-loss centres) and
`state.json` (stage, epoch, step within the epoch, history) written last; then `<prefix>checkpoints/
latest.json` names it. A run that finds latest.json resumes from it: same stage, same epoch, skipping
the batches of that epoch already trained (the per-epoch shuffle is seeded, so the order is the same).
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from classforge.v1 import common_pb2, events_pb2
from services.common.artefacts import model_prefix
from services.common.durations import format_duration
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.job_uri import job_from_uri
from services.common.storage import ObjectNotFound, ObjectStore
from services.trainer.backbones import Network, build_network, decay_variables
from services.trainer.data import TrainingData
from services.trainer.losses import LossComputer, class_weight_vector, l2_penalty
from services.trainer.recipe import BudgetPlan, plan_budget, relax_for_short_run, steps_within
from services.trainer.schedules import decoupled_decay, make_optimizer

log = logging.getLogger("classforge.trainer")

KEEP_CHECKPOINTS = 2
# Throughput probe of a time-budgeted run: untimed steps that trace the step, then timed steps.
PROBE_WARMUP_STEPS = 10  # past tracing and the input pipeline filling up (the first steps run slower)
PROBE_SECONDS = 8.0
PROBE_MAX_STEPS = 200
PROBE_EVAL_BATCHES = 4


class StopRequested(Exception):
    pass


class Hooks:
    """Callbacks of a run. The service publishes events and sets gauges from these; tests inject faults."""

    def progress(self, progress: events_pb2.TrainingProgress, epoch_end: bool) -> None: ...

    def checkpoint(self, uri: str, state: dict) -> None: ...

    def planned(self, budget: BudgetPlan, config: common_pb2.TrainingConfig, measured: dict) -> None:
        """A time budget sized the run: `config` is the effective config from now on (epochs, steps)."""


@dataclass
class Stage:
    index: int  # 1 = head only, 2 = whole network
    name: str
    epochs: int
    learning_rate: float
    freeze_backbone: bool


@dataclass
class RunResult:
    status: str  # "succeeded" or "stopped"
    network: Network
    history: list[dict]
    checkpoint_uri: str = ""
    resumed_from: dict | None = None
    early_stopped: bool = False
    initial_weights: dict | None = None  # where the weights came from (InitialWeights.as_dict), for the manifest
    training_seconds: float = 0.0  # from the start of the budget clock (or of the run) to the last epoch


def stages_of(config: common_pb2.TrainingConfig) -> list[Stage]:
    stages = []
    for index, name, stage in ((1, "head", config.head_stage), (2, "full", config.full_stage)):
        if not stage.skip and stage.epochs > 0:
            stages.append(Stage(index, name, stage.epochs, stage.learning_rate, stage.freeze_backbone))
    return stages


def choose_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over the local GPUs when there are two or more; otherwise the default strategy
    (one GPU or the CPU), which places ops on the GPU by itself. A job with `workers: N` runs this loop
    under MultiWorkerMirroredStrategy instead (services/trainer/mwms_worker.py passes it in)."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


# --------------------------------------------------------------------------- checkpoints


def prefix_uri(store: ObjectStore, prefix: str) -> str:
    """The URI of a "directory" prefix (object keys cannot end with '/')."""
    return store.uri(prefix.rstrip("/")) + "/"


class CheckpointStore:
    """`write=False` (a multi-worker job's non-chief worker): checkpoints are saved to the local work
    directory only and never uploaded, so that one writer owns the prefix; reading (resume) still comes
    from the store: every worker resumes from the chief's checkpoint."""

    def __init__(self, store: ObjectStore, prefix: str, workdir: Path, write: bool = True):
        self.store = store
        self.prefix = f"{prefix}checkpoints/"
        self.workdir = Path(workdir)
        self.write = write

    def latest(self) -> dict | None:
        try:
            pointer = json.loads(self.store.get_bytes(f"{self.prefix}latest.json"))
            return json.loads(self.store.get_bytes(pointer["key"] + "state.json")) | {"key": pointer["key"]}
        except ObjectNotFound:
            return None

    def save(self, network: Network, optimizer, losses: LossComputer, state: dict) -> str:
        name = f"s{state['stage']}-e{state['epoch']:04d}" + (f"-step{state['step_in_epoch']:06d}"
                                                              if state["step_in_epoch"] else "")
        key = f"{self.prefix}{name}/"
        local = self.workdir / "checkpoint"
        local.mkdir(parents=True, exist_ok=True)
        network.model.save_weights(local / "model.weights.h5")
        arrays = {}
        if optimizer is not None:
            owned: dict = {}
            optimizer.save_own_variables(owned)
            arrays.update({f"opt/{k}": np.asarray(v) for k, v in owned.items()})
        if losses.centers is not None:
            arrays["centers"] = losses.centers.numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        if not self.write:  # saved like the chief's (same code on every worker), then thrown away
            return ""
        self.store.put_file(key + "model.weights.h5", local / "model.weights.h5")
        self.store.put_bytes(key + "optimizer.npz", buffer.getvalue())
        self.store.put_bytes(key + "state.json", json.dumps(state).encode(), "application/json")  # last
        self.store.put_bytes(f"{self.prefix}latest.json", json.dumps({"key": key}).encode(), "application/json")
        self._prune(keep=key)
        return prefix_uri(self.store, key)

    def restore_model(self, state: dict, network: Network, losses: LossComputer) -> dict:
        local = self.workdir / "restore"
        local.mkdir(parents=True, exist_ok=True)
        self.store.get_file(state["key"] + "model.weights.h5", local / "model.weights.h5")
        network.model.load_weights(local / "model.weights.h5")
        with np.load(io.BytesIO(self.store.get_bytes(state["key"] + "optimizer.npz"))) as saved:
            arrays = {k: saved[k] for k in saved.files}
        if losses.centers is not None and "centers" in arrays:
            losses.centers.assign(arrays["centers"])
        return {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}

    def _prune(self, keep: str) -> None:
        names = sorted({info.key[len(self.prefix):].split("/", 1)[0] for info in self.store.list(self.prefix)
                        if "/" in info.key[len(self.prefix):]})
        names = [n for n in names if f"{self.prefix}{n}/" != keep]
        for name in names[:max(len(names) - (KEEP_CHECKPOINTS - 1), 0)]:
            self.store.delete_prefix(f"{self.prefix}{name}/")


# --------------------------------------------------------------------------- initial weights


def load_initial_weights(store: ObjectStore, uri: str, network: Network, workdir: Path) -> str:
    """From a .weights.h5 file in the store (backbone or whole model), or from an earlier job's model
    (`models/<job>/…` or its SavedModel URI: its backbone.weights.h5). Nothing is downloaded from
    the internet: `imagenet` is refused."""
    if uri.strip().lower() in ("imagenet", "noisy-student"):
        raise InvalidArgument("config.initial_weights_uri", "pretrained downloads are not available here; give "
                                                            "a .weights.h5 in object storage or an earlier job's "
                                                            "model URI")
    key = store.key_from_uri(uri) if "://" in uri else uri.lstrip("/")
    if not key.endswith(".h5"):
        parts = key.split("/")
        if len(parts) < 2 or parts[0] != "models":
            raise InvalidArgument("config.initial_weights_uri", f"{uri!r} is neither a .weights.h5 file nor an "
                                                                f"earlier job's model (models/<job_id>/…)")
        key = f"models/{parts[1]}/backbone.weights.h5"
    local = Path(workdir) / "initial.weights.h5"
    try:
        store.get_file(key, local)
    except ObjectNotFound:
        raise FailedPrecondition(f"initial weights {key!r} do not exist in the object store") from None
    errors = []
    for target in (network.backbone, network.model):
        try:
            target.load_weights(local)
            return key
        except (ValueError, KeyError) as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    raise FailedPrecondition(f"initial weights {key!r} do not fit this backbone/config (same backbone, width, "
                             f"norm and SE options are needed): {errors[-1]}")


@dataclass(frozen=True)
class InitialWeights:
    """The plan for `job://<id>`: the earlier job's whole model when its tasks and classes are this
    data's (no head stage: straight to fine-tuning), else its backbone under a rebuilt head."""

    job_id: str
    key: str  # the weights file in the store
    whole_model: bool
    message: str

    def as_dict(self) -> dict:
        return {"job_id": self.job_id, "key": self.key, "whole_model": self.whole_model, "message": self.message}


def _tasks_text(tasks: list[dict]) -> str:
    return "; ".join(f"{t['name']}: {'regression' if t.get('regression') else list(t['classes'])}" for t in tasks)


def plan_job_weights(store: ObjectStore, job_id: str, label_map: dict) -> InitialWeights:
    """What `job://<job_id>` means for data with `label_map` (the trainer's labels.json content)."""
    try:
        manifest = json.loads(store.get_bytes(f"{model_prefix(job_id)}manifest.json"))
    except ObjectNotFound:
        raise FailedPrecondition(f"config.initial_weights_uri: job {job_id!r} has no finished model "
                                 f"({model_prefix(job_id)}manifest.json is missing); retrain from a job whose "
                                 f"training succeeded") from None
    theirs = [{"name": t["name"], "classes": list(t["classes"]), "regression": bool(t.get("regression"))}
              for t in manifest["labels"]["tasks"]]
    ours = [{"name": t["name"], "classes": list(t["classes"]), "regression": bool(t.get("regression"))}
            for t in label_map["tasks"]]
    if theirs == ours:
        return InitialWeights(job_id, f"{model_prefix(job_id)}model.weights.h5", True,
                              f"starting from job {job_id}'s model (same tasks and classes): its heads are kept, "
                              f"so training goes straight to the fine-tune stage")
    return InitialWeights(job_id, f"{model_prefix(job_id)}backbone.weights.h5", False,
                          f"job {job_id}'s classes ({_tasks_text(theirs)}) differ from this data's "
                          f"({_tasks_text(ours)}): its backbone is kept and the head is rebuilt, trained first with "
                          f"the backbone frozen (head stage)")


def load_job_weights(store: ObjectStore, plan: InitialWeights, network: Network, workdir: Path) -> None:
    local = Path(workdir) / "initial.weights.h5"
    try:
        store.get_file(plan.key, local)
    except ObjectNotFound:
        raise FailedPrecondition(f"initial weights {plan.key!r} of job {plan.job_id!r} do not exist in the "
                                 f"object store") from None
    try:
        (network.model if plan.whole_model else network.backbone).load_weights(local)
    except (ValueError, KeyError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FailedPrecondition(f"job {plan.job_id!r}'s weights do not fit this network (the same backbone, "
                                 f"width, norm and SE options are needed; see {model_prefix(plan.job_id)}config.json)"
                                 f": {detail}") from None


# --------------------------------------------------------------------------- the trainer


@dataclass
class _RunState:
    """What a run carries from stage to stage and epoch to epoch."""

    network: Network
    losses: LossComputer
    history: list[dict]  # one record per epoch trained, the resumed checkpoint's included
    resume: dict | None  # the checkpoint's state.json, until the stage it was saved in has run
    opt_arrays: dict  # that checkpoint's optimiser variables, for its stage's optimiser
    global_epoch: int
    global_step: int
    checkpoint_uri: str = ""
    early_stopped: bool = False
    # Early stopping: the best validation metric of the stage, its weights, rounds without improvement.
    best: dict = field(default_factory=lambda: {"metric": None, "weights": None, "bad": 0})
    resumed_from: dict | None = field(init=False)

    def __post_init__(self):
        self.resumed_from = (None if self.resume is None
                             else {k: self.resume[k] for k in ("stage", "epoch", "step_in_epoch")})


@dataclass(frozen=True)
class _EpochRun:
    """The training steps of one epoch, as they went."""

    size: int  # the input size (multi-scale training changes it per epoch)
    first_step: int  # where it started: the steps before it were trained before a resume
    steps: int  # the step within the epoch it reached
    images: int
    elapsed: float
    stopped: bool  # the stop event ended it before its last step


@dataclass
class Trainer:
    config: common_pb2.TrainingConfig  # already passed through config.with_defaults
    data: TrainingData
    store: ObjectStore
    prefix: str  # e.g. "models/<job_id>/"; "" for a directory of its own
    workdir: Path
    hooks: Hooks = field(default_factory=Hooks)
    stop_event: threading.Event = field(default_factory=threading.Event)
    progress_seconds: float = 10.0
    strategy: tf.distribute.Strategy | None = None
    log_fn: Callable[[str], None] | None = None
    # False on a multi-worker job's non-chief workers: they train, but write no checkpoint to the store.
    chief: bool = True
    # Steps of every stage as planned, sent with each progress event (progress bars and time estimates).
    planned_steps: int = field(default=0, init=False)
    # Seconds for training plus export and evaluation (0: none); counted from `budget_started`
    # (time.monotonic(); default: the start of run()). A resumed run keeps the epochs planned before.
    time_budget_seconds: float = 0.0
    budget_started: float | None = None
    # The fields the automatic recipe chose (not the spec): a run the budget makes short relaxes them.
    recipe_fields: frozenset[str] = frozenset()

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointStore(self.store, self.prefix, self.workdir, write=self.chief)
        self.strategy = self.strategy or choose_strategy()
        self.budget_measured: dict = {}  # the probe's throughputs, when a time budget sized the run

    def _say(self, text: str, warn: bool = False) -> None:
        (log.warning if warn else log.info)(text)
        if self.log_fn:
            self.log_fn(text)

    # ---- building

    def _build(self) -> tuple[Network, LossComputer]:
        c = self.config
        keras.utils.set_random_seed(int(c.seed) % (2 ** 31))
        class_weights = {}
        if c.class_weights:
            class_weights = {t.name: class_weight_vector(self.data.class_counts[t.name]) for t in self.data.tasks
                             if not t.regression and t.name in self.data.class_counts}
        with self.strategy.scope():
            network = build_network(c, self.data.tasks)
            losses = LossComputer(self.data.tasks, label_smoothing=c.label_smoothing, class_weights=class_weights,
                                  center_loss_weight=c.center_loss_weight,
                                  embedding_dim=int(network.model.output["embedding"].shape[-1]))
        return network, losses

    def _train_step(self, network: Network, losses: LossComputer, optimizer, accum: dict) -> Callable:
        c = self.config
        model = network.model
        train_vars = model.trainable_variables
        decay_vars = decay_variables(model)
        decoupled = decoupled_decay(c)
        replicas = self.strategy.num_replicas_in_sync
        global_batch = c.batch_size
        tasks = self.data.tasks

        def step(images, labels):
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                data_loss, parts = losses.data_loss(outputs, labels, global_batch)
                # AdamW decays the weights itself (decoupled): no L2 term in the loss, none reported.
                reg = tf.constant(0.0) if decoupled else l2_penalty(decay_vars, c.weight_decay) / replicas
                objective = data_loss + reg
                scaled = optimizer.scale_loss(objective)
            grads = tape.gradient(scaled, train_vars)
            optimizer.apply_gradients(zip(grads, train_vars, strict=True))
            losses.update_centers(outputs["embedding"], labels)
            result = {"data": data_loss, "reg": tf.stop_gradient(reg)}
            for i, task in enumerate(tasks):
                if not task.regression:
                    valid = labels[:, i] >= 0
                    hit = tf.logical_and(valid, tf.argmax(outputs[task.name], -1) == labels[:, i])
                    result[f"correct/{task.name}"] = tf.reduce_sum(tf.cast(hit, tf.float32))
                    result[f"valid/{task.name}"] = tf.reduce_sum(tf.cast(valid, tf.float32))
            return result

        inner = tf.function(step, jit_compile=bool(c.xla))

        @tf.function(reduce_retracing=True)
        def distributed(images, labels):
            per_replica = self.strategy.run(inner, args=(images, labels))
            reduced = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                       for k, v in per_replica.items()}
            for k, v in reduced.items():
                accum[k].assign_add(v)
            accum["steps"].assign_add(1.0)

        return distributed

    def _accumulators(self) -> dict:
        keys = ["data", "reg", "steps"]
        for task in self.data.tasks:
            if not task.regression:
                keys += [f"correct/{task.name}", f"valid/{task.name}"]
        with self.strategy.scope():
            return {k: tf.Variable(0.0, trainable=False, dtype=tf.float32) for k in keys}

    def evaluate(self, network: Network, losses: LossComputer, split: str = "val") -> dict[str, float]:
        """Loss and accuracy per task on a split, deterministic preprocessing, model in inference mode."""
        c = self.config
        step = self._eval_step_for(network, losses)
        sums: dict[str, float] = {}
        for images, labels in self.data.eval_dataset(split, c.input_size, c.batch_size):
            for k, v in step(images, labels).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return self._eval_metrics(sums, split)

    def _eval_step_for(self, network: Network, losses: LossComputer) -> Callable:
        cached = getattr(self, "_eval_step", None)
        if cached is not None and cached[0] is network:
            return cached[1]
        step = self._make_eval_step(network.model, losses, self.data.tasks)
        self._eval_step = (network, step)
        return step

    @staticmethod
    def _make_eval_step(model, losses: LossComputer, tasks) -> Callable:
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                      tf.TensorSpec([None, len(tasks)], tf.int64)])
        def step(images, labels):
            outputs = model(images, training=False)
            parts = losses.task_losses(outputs, labels, 1)
            result = {f"loss/{t.name}": parts[t.name] for t in tasks}
            for i, task in enumerate(tasks):
                valid = labels[:, i] >= 0
                result[f"valid/{task.name}"] = tf.reduce_sum(tf.cast(valid, tf.float32))
                if not task.regression:
                    hit = tf.logical_and(valid, tf.argmax(outputs[task.name], -1) == labels[:, i])
                    result[f"correct/{task.name}"] = tf.reduce_sum(tf.cast(hit, tf.float32))
            return result

        return step

    def _eval_metrics(self, sums: dict[str, float], split: str) -> dict[str, float]:
        tasks = self.data.tasks
        metrics: dict[str, float] = {}
        total = 0.0
        for task in tasks:
            n = max(sums.get(f"valid/{task.name}", 0.0), 1.0)
            loss = sums.get(f"loss/{task.name}", 0.0) / n
            metrics[f"{split}_loss/{task.name}"] = loss
            total += task.weight * loss
            if not task.regression:
                metrics[f"{split}_accuracy/{task.name}"] = sums.get(f"correct/{task.name}", 0.0) / n
        metrics[f"{split}_loss"] = total
        first = next((t for t in tasks if not t.regression), None)
        if first is not None:
            metrics[f"{split}_accuracy"] = metrics[f"{split}_accuracy/{first.name}"]
        return metrics

    # ---- running

    def run(self) -> RunResult:
        """Trains every stage, resuming from the latest checkpoint when there is one. Ends "stopped" when
        the stop event ended it at a step boundary (a checkpoint holds that step), else "succeeded"."""
        clock = self.budget_started if self.budget_started is not None else time.monotonic()
        earlier_job = job_from_uri(self.config.initial_weights_uri)
        initial = plan_job_weights(self.store, earlier_job, self.data.label_map()) if earlier_job else None
        stages = self._stages(self.config, initial)
        network, losses = self._build()
        run = self._start_weights(network, losses, initial)
        budget = None
        if self.time_budget_seconds > 0 and run.resume is None:
            budget = self._fit_to_budget(network, losses, clock, stages)
            stages = self._stages(self.config, initial)
        # Epochs stop early if they run slower than planned: no epoch starts that would end past the deadline.
        deadline = clock + self.time_budget_seconds - budget.evaluation_margin_seconds if budget else math.inf
        steps_per_epoch = self._steps_per_epoch()
        self.planned_steps = steps_per_epoch * sum(stage.epochs for stage in stages)
        initial_weights = initial.as_dict() if initial is not None else None
        for stage in stages:
            if self._train_stage(run, stage, steps_per_epoch, deadline) == "stopped":
                return RunResult("stopped", network, run.history, run.checkpoint_uri, run.resumed_from,
                                 initial_weights=initial_weights)
        seconds = time.monotonic() - clock
        if budget is not None:
            planned_end = self.budget_measured["spent_seconds"] + budget.planned_training_seconds
            self._say(f"time budget {format_duration(self.time_budget_seconds)}: training planned to end after "
                      f"{format_duration(planned_end)}, ended after {format_duration(seconds)}; "
                      f"{format_duration(budget.evaluation_margin_seconds)} kept for export and evaluation")
        return RunResult("succeeded", network, run.history, run.checkpoint_uri, run.resumed_from, run.early_stopped,
                         initial_weights, seconds)

    def _steps_per_epoch(self) -> int:
        steps = self.data.steps_per_epoch(self.config.batch_size)
        if self.config.max_steps_per_epoch:
            steps = min(steps, self.config.max_steps_per_epoch)
        return steps

    def _start_weights(self, network: Network, losses: LossComputer, initial: InitialWeights | None) -> _RunState:
        """Where the weights start from: the latest checkpoint (a resumed run also gets its optimiser state
        and history back), else an earlier job's model (job://), else a weights file, else random."""
        c = self.config
        state = self.checkpoints.latest()
        opt_arrays: dict = {}
        history: list[dict] = []
        if state is not None:
            opt_arrays = self.checkpoints.restore_model(state, network, losses)
            history = state.get("history", [])
            self._say(f"resuming from checkpoint {state['key']} (stage {state['stage']}, epoch {state['epoch']}, "
                      f"step {state['step_in_epoch']})")
        elif initial is not None:
            load_job_weights(self.store, initial, network, self.workdir)
            self._say(initial.message, warn=not initial.whole_model)
        elif c.initial_weights_uri:
            loaded = load_initial_weights(self.store, c.initial_weights_uri, network, self.workdir)
            self._say(f"initial weights from {loaded}")
        return _RunState(network, losses, history, resume=state, opt_arrays=opt_arrays, global_epoch=len(history),
                         global_step=int(state["global_step"]) if state else 0)

    def _train_stage(self, run: _RunState, stage: Stage, steps_per_epoch: int, deadline: float) -> str:
        """One stage's epochs, from where a resumed checkpoint left off. "stopped": the stop event ended it
        (after a checkpoint); "skipped": it had ended before the checkpoint; else "done" (every epoch,
        early stopping, or too little time left before the deadline)."""
        start_epoch, skip_steps = 0, 0
        if run.resume is not None:
            state = run.resume
            if stage.index < state["stage"] or (stage.index == state["stage"] and state["epoch"] >= stage.epochs
                                                and not state["step_in_epoch"]):
                return "skipped"  # finished before the crash
            if stage.index == state["stage"]:
                start_epoch, skip_steps = state["epoch"], state["step_in_epoch"]
                run.best["metric"], run.best["bad"] = state.get("best_metric"), state.get("bad_rounds", 0)
        optimizer = self._stage_optimizer(run, stage, steps_per_epoch)
        accum = self._accumulators()
        train_step = self._train_step(run.network, run.losses, optimizer, accum)
        self._say(f"stage {stage.index} ({stage.name}): {stage.epochs} epochs, lr {stage.learning_rate:g}, "
                  f"{len(run.network.model.trainable_variables)} trainable tensors, {steps_per_epoch} steps/epoch")
        pace = None  # (seconds per step, seconds of validation and checkpoint) of the last epoch
        for epoch in range(start_epoch, stage.epochs):
            epoch_steps = self._epoch_steps(stage, epoch, pace, deadline, steps_per_epoch)
            if epoch_steps is None:
                run.early_stopped = True
                break
            epoch_wall = time.monotonic()
            trained = self._train_epoch(run, stage, epoch, epoch_steps, skip_steps, train_step, accum)
            if trained.stopped:
                self._checkpoint_stop(run, stage, epoch, trained, optimizer)
                return "stopped"
            skip_steps = 0
            stop_early = self._end_epoch(run, stage, epoch, trained, optimizer, accum)
            pace = (trained.elapsed / max(trained.steps - trained.first_step, 1),
                    time.monotonic() - epoch_wall - trained.elapsed)
            if stop_early:
                run.early_stopped = True
                self._say(f"early stopping in stage {stage.index} after epoch {epoch + 1}; keeping the "
                          f"weights of the best validation round")
                if run.best["weights"] is not None:
                    run.network.model.set_weights(run.best["weights"])
                break
        run.resume = None
        run.best = {"metric": None, "weights": None, "bad": 0}
        return "done"

    def _stage_optimizer(self, run: _RunState, stage: Stage, steps_per_epoch: int):
        """Each stage has its own optimiser (and learning rate schedule) over the variables it trains; the
        stage a checkpoint stopped in gets the saved optimiser state back."""
        c = self.config
        run.network.backbone.trainable = not stage.freeze_backbone
        with self.strategy.scope():
            optimizer = make_optimizer(c, stage.learning_rate, steps_per_epoch, stage.epochs, c.warmup_epochs)
            optimizer.build(run.network.model.trainable_variables)
        if run.resume is not None and stage.index == run.resume["stage"] and run.opt_arrays:
            optimizer.load_own_variables(run.opt_arrays)
        run.opt_arrays = {}
        return optimizer

    def _epoch_steps(self, stage: Stage, epoch: int, pace: tuple[float, float] | None, deadline: float,
                     steps_per_epoch: int) -> int | None:
        """The steps of the next epoch: fewer when the last epoch ran slower than the time budget planned,
        None when not one more epoch ends before the deadline."""
        if pace is None or deadline == math.inf:
            return steps_per_epoch
        epoch_steps = steps_within(deadline - time.monotonic(), *pace, steps_per_epoch)
        if not epoch_steps:
            self._say(f"time budget: ending stage {stage.index} after epoch {epoch} of {stage.epochs}; "
                      f"too little time is left for another epoch")
            return None
        if epoch_steps < steps_per_epoch:
            self._say(f"time budget: epoch {epoch + 1} shortened to {epoch_steps} of {steps_per_epoch} "
                      f"steps to end within the budget")
        return epoch_steps

    def _train_epoch(self, run: _RunState, stage: Stage, epoch: int, epoch_steps: int, skip_steps: int,
                     train_step: Callable, accum: dict) -> _EpochRun:
        """The training steps of one epoch (after `skip_steps` already trained before a resume), until its
        last step or the stop event; progress every `progress_seconds`."""
        c = self.config
        sizes = list(c.augmentation.multi_scale_sizes) or [c.input_size]
        size = sizes[run.global_epoch % len(sizes)]
        for v in accum.values():
            v.assign(0.0)
        dataset = self.data.train_dataset(run.global_epoch, c.seed, size,
                                          c.batch_size, c.augmentation, skip_batches=skip_steps)
        dataset = self.strategy.experimental_distribute_dataset(dataset)
        step_in_epoch, started, last_report = skip_steps, time.perf_counter(), time.monotonic()
        images_done = 0
        stopped = False
        for images, labels in dataset:
            if step_in_epoch >= epoch_steps:
                break
            if self.stop_event.is_set():
                stopped = True
                break
            train_step(images, labels)
            step_in_epoch += 1
            run.global_step += 1
            images_done += c.batch_size
            if time.monotonic() - last_report >= self.progress_seconds:
                last_report = time.monotonic()
                rate = images_done / (time.perf_counter() - started)
                self.hooks.progress(self._progress(stage, epoch, run.global_step, accum, rate, {}), False)
        if not stopped and self.stop_event.is_set() and step_in_epoch < epoch_steps:
            stopped = True
        return _EpochRun(size, skip_steps, step_in_epoch, images_done, time.perf_counter() - started, stopped)

    def _checkpoint_stop(self, run: _RunState, stage: Stage, epoch: int, trained: _EpochRun, optimizer) -> None:
        """A stop mid-epoch saves that step, so that the next run resumes exactly there."""
        run.checkpoint_uri = self.checkpoints.save(run.network, optimizer, run.losses, self._state(
            stage, epoch, trained.steps, run.global_step, run.history, run.best))
        self.hooks.checkpoint(run.checkpoint_uri, {"stage": stage.index, "epoch": epoch,
                                                   "step_in_epoch": trained.steps, "stopped": True})
        self._say(f"stopped at stage {stage.index} epoch {epoch + 1} step {trained.steps}")

    def _end_epoch(self, run: _RunState, stage: Stage, epoch: int, trained: _EpochRun, optimizer,
                   accum: dict) -> bool:
        """An epoch's record (validated every k epochs and on the stage's last), its checkpoint and its
        progress event. True when early stopping ends the stage here."""
        run.global_epoch += 1
        rate = trained.images / max(trained.elapsed, 1e-9)
        record = self._epoch_record(stage, epoch, run.global_epoch, run.global_step, accum, rate, trained.elapsed,
                                    trained.size, optimizer)
        last_epoch = epoch + 1 == stage.epochs
        if self.data.has("val") and ((epoch + 1) % self.config.validate_every_epochs == 0 or last_epoch):
            record.update(self.evaluate(run.network, run.losses, "val"))
        run.history.append(record)
        self._say(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in record.items()}))
        stop_early = self._early_stopping(record, run.best, run.network, stage)
        run.checkpoint_uri = self.checkpoints.save(run.network, optimizer, run.losses, self._state(
            stage, epoch + 1, 0, run.global_step, run.history, run.best))
        metrics = {k: v for k, v in record.items() if isinstance(v, float)}
        self.hooks.progress(self._progress(stage, epoch, run.global_step, accum, rate, metrics), True)
        self.hooks.checkpoint(run.checkpoint_uri, {"stage": stage.index, "epoch": epoch + 1, "step_in_epoch": 0})
        return stop_early

    # ---- time budget

    @staticmethod
    def _stages(config: common_pb2.TrainingConfig, initial) -> list[Stage]:
        stages = stages_of(config)
        if initial is not None and initial.whole_model and any(s.name == "full" for s in stages):
            stages = [s for s in stages if s.name != "head"]  # the heads are trained already (job://)
        return stages

    def _fit_to_budget(self, network: Network, losses: LossComputer, clock: float,
                       stages: list[Stage]) -> BudgetPlan:
        """Measures the throughput, then sizes the last stage's epochs (and, when not one epoch fits, the
        steps of one epoch) so that training, export and evaluation end within the budget."""
        c = self.config
        train_ips, eval_ips = self._measure_throughput(network, losses)
        earlier = sum(s.epochs for s in stages[:-1])
        steps = self._steps_per_epoch()
        budget = plan_budget(
            budget_seconds=self.time_budget_seconds, spent_seconds=time.monotonic() - clock,
            train_images_per_second=train_ips, eval_images_per_second=eval_ips, batch_size=c.batch_size,
            steps_per_epoch=steps, val_examples=self.data.counts.get("val", 0),
            test_examples=self.data.counts.get("test", 0), max_epochs=sum(s.epochs for s in stages),
            validate_every_epochs=c.validate_every_epochs)
        sized = common_pb2.TrainingConfig()
        sized.CopyFrom(c)
        last = sized.full_stage if stages[-1].index == 2 else sized.head_stage
        last.epochs = max(budget.epochs - earlier, 1)
        if budget.steps_per_epoch < steps:
            sized.max_steps_per_epoch = budget.steps_per_epoch
        if budget.epochs <= 3:
            sized.warmup_epochs = 0  # a short run spends its few steps learning, not warming up
        sized, relaxed = relax_for_short_run(sized, budget.epochs, self.recipe_fields)
        self.config = sized
        measured = self.budget_measured = {"images_per_second": train_ips, "eval_images_per_second": eval_ips,
                                           "spent_seconds": time.monotonic() - clock, "relaxed": relaxed}
        self._say(f"time budget {format_duration(self.time_budget_seconds)}: {budget.reason}; planned training "
                  f"{format_duration(budget.planned_training_seconds)}, "
                  f"{format_duration(budget.evaluation_margin_seconds)} kept for export and evaluation"
                  + (f"; short run: {', '.join(relaxed)}" if relaxed else ""))
        self.hooks.planned(budget, sized, measured)
        return budget

    def _measure_throughput(self, network: Network, losses: LossComputer) -> tuple[float, float]:
        """Images per second of the real training step (learning rate 0, weights restored afterwards) on the
        real input pipeline, and of the evaluation step."""
        c = self.config
        weights = network.model.get_weights()
        with self.strategy.scope():
            optimizer = make_optimizer(c, 0.0, 1, 1, 0)
            optimizer.build(network.model.trainable_variables)
        accum = self._accumulators()
        step = self._train_step(network, losses, optimizer, accum)
        size = (list(c.augmentation.multi_scale_sizes) or [c.input_size])[0]
        dataset = self.data.train_dataset(0, c.seed, size, c.batch_size, c.augmentation).repeat()
        limit = max(2.0, min(PROBE_SECONDS, 0.03 * self.time_budget_seconds))
        timed, started = 0, None
        for images, labels in self.strategy.experimental_distribute_dataset(dataset):
            step(images, labels)
            if started is None:
                if accum["steps"].numpy() >= PROBE_WARMUP_STEPS:  # reading a value waits for the step
                    started = time.perf_counter()
                continue
            timed += 1
            if timed >= PROBE_MAX_STEPS or time.perf_counter() - started >= limit:
                break
        accum["steps"].numpy()
        train_ips = timed * c.batch_size / max(time.perf_counter() - started, 1e-9)
        network.model.set_weights(weights)

        eval_step = self._eval_step_for(network, losses)
        split = "val" if self.data.has("val") else "train"
        timed_images, started = 0, None
        for images, labels in self.data.eval_dataset(split, size, c.batch_size).take(PROBE_EVAL_BATCHES + 1):
            result = eval_step(images, labels)
            float(next(iter(result.values())))
            if started is None:
                started = time.perf_counter()
                first = int(images.shape[0])
                continue
            timed_images += int(images.shape[0])
        if timed_images:
            eval_ips = timed_images / max(time.perf_counter() - started, 1e-9)
        else:  # one batch only: its time includes tracing, an underestimate of the speed (a safe one)
            eval_ips = first / max(time.perf_counter() - started, 1e-9) if started else train_ips * 3
        return train_ips, max(eval_ips, train_ips)

    def _monitor(self, record: dict) -> float | None:
        if "val_accuracy" in record:
            return record["val_accuracy"]
        if "val_loss" in record:
            return -record["val_loss"]
        return None

    def _early_stopping(self, record: dict, best: dict, network: Network, stage: Stage) -> bool:
        value = self._monitor(record)
        if value is None:
            return False
        if best["metric"] is None or value > best["metric"] + 1e-6:
            best["metric"], best["bad"] = value, 0
            if self.config.early_stopping_patience:
                best["weights"] = network.model.get_weights()
            return False
        best["bad"] += 1
        return bool(self.config.early_stopping_patience) and best["bad"] >= self.config.early_stopping_patience

    def _state(self, stage: Stage, epoch: int, step_in_epoch: int, global_step: int, history: list,
               best: dict) -> dict:
        return {"stage": stage.index, "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "history": history, "best_metric": best["metric"], "bad_rounds": best["bad"],
                "saved_at": time.time()}

    def _epoch_record(self, stage: Stage, epoch: int, global_epoch: int, global_step: int, accum: dict,
                      rate: float, elapsed: float, size: int, optimizer) -> dict:
        values = {k: float(v.numpy()) for k, v in accum.items()}
        steps = max(values["steps"], 1.0)
        record = {"epoch": global_epoch, "stage": stage.index, "stage_epoch": epoch + 1, "step": global_step,
                  "data_loss": values["data"] / steps, "regularization_loss": values["reg"] / steps,
                  "images_per_second": rate, "seconds": elapsed, "input_size": size,
                  "learning_rate": float(_current_lr(optimizer))}
        record["loss"] = record["data_loss"] + record["regularization_loss"]
        for task in self.data.tasks:
            if not task.regression:
                record[f"accuracy/{task.name}"] = values[f"correct/{task.name}"] / max(
                    values[f"valid/{task.name}"], 1.0)
        first = next((t for t in self.data.tasks if not t.regression), None)
        if first is not None:
            record["accuracy"] = record[f"accuracy/{first.name}"]
        return record

    def _progress(self, stage: Stage, epoch: int, global_step: int, accum: dict, rate: float,
                  metrics: dict) -> events_pb2.TrainingProgress:
        values = {k: float(v.numpy()) for k, v in accum.items()}
        steps = max(values["steps"], 1.0)
        data, reg = values["data"] / steps, values["reg"] / steps
        progress = events_pb2.TrainingProgress(
            stage=stage.index, epoch=epoch + 1, step=global_step, total_loss=data + reg, data_loss=data,
            regularization_loss=reg, images_per_second=rate, total_steps=self.planned_steps)
        for k, v in metrics.items():
            if math.isfinite(v):
                progress.metrics[k] = v
        return progress


def _current_lr(optimizer) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)
