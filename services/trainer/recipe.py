"""Training recipes: which TrainingConfig a job trains with, and why. Pure logic, no TensorFlow.

- `auto`: chosen from the data (the image sizes and class balance that ingest measured, the split
  sizes) and the hardware (CPU cores and instruction set, GPUs and their memory). Every choice carries
  its reason; every field the spec sets wins over the recipe's choice.
- `imagenet-gpu`: the fixed defaults of `config.with_defaults` (224 px ResNet18, random resized crop
  down to 25 % of the area, flip, colour jitter, 10 epochs), for GPUs and photographs.

A config that names no recipe gets `auto` when it sets no training field (only the fields below in
RECIPE_FIELDS), else `imagenet-gpu` for the fields it leaves unset, as before recipes existed.

`plan_budget` sizes the epochs of a run to a time budget from a measured throughput.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from classforge.v1 import common_pb2
from services.common.durations import format_duration
from services.common.errors import InvalidArgument
from services.common.training_options import RECIPES
from services.trainer.config import with_defaults

TrainingConfig = common_pb2.TrainingConfig
Backbone = common_pb2.Backbone

AUTO, IMAGENET_GPU = RECIPES
# Fields that steer the recipe rather than name a training choice: setting only these still means "auto".
RECIPE_FIELDS = {"recipe", "time_budget", "mirror_invariant", "seed", "workers"}

SMALL_IMAGE_SIDE = 32  # at or below: no random crop; box jitter keeps most of the image
MIN_KEPT_AREA_SMALL = 0.5  # no augmentation may cut away more than half of a small image
IMBALANCE_RATIO = 3.0  # largest/smallest class (before balancing) above which the loss is class-weighted
TARGET_STEPS = 8000  # optimiser steps of a full (no budget) schedule, within the epoch bounds below
MIN_EPOCHS, MAX_EPOCHS = 15, 60
_COLOUR_MODES = {"RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA"}


@dataclass(frozen=True)
class Hardware:
    cpu_cores: int
    isa: str  # "avx512", "avx2" or "baseline"
    gpus: int = 0
    gpu_memory_gb: float = 0.0  # per GPU; 0 when unknown

    def describe(self) -> str:
        if self.gpus:
            memory = f" of {self.gpu_memory_gb:.0f} GB" if self.gpu_memory_gb else ""
            return f"{self.gpus} GPU(s){memory}"
        return f"{self.cpu_cores} CPU cores with {self.isa.upper()}"


def cpu_isa(flags: set[str], onednn_cap: str = "") -> str:
    """The widest vector instruction set TensorFlow's oneDNN kernels will use: from /proc/cpuinfo flags,
    lowered by ONEDNN_MAX_CPU_ISA when that caps it (e.g. AVX2 on an AVX-512 machine)."""
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"
    cap = onednn_cap.strip().upper()
    if not cap or cap in ("ALL", "DEFAULT") or cap.startswith(("AVX512", "AVX10")):
        return isa
    if cap.startswith("AVX2"):
        return "baseline" if isa == "baseline" else "avx2"
    return "baseline"  # SSE41, AVX


def detect_hardware() -> Hardware:
    """This machine: usable CPU cores, the instruction set, and the GPUs TensorFlow sees."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    gpus, memory = _gpus()
    return Hardware(cores, cpu_isa(flags, os.environ.get("ONEDNN_MAX_CPU_ISA", "")), gpus, memory)


def _gpus() -> tuple[int, float]:
    import tensorflow as tf  # only here: the rest of this module is pure

    count = len(tf.config.list_physical_devices("GPU"))
    if not count:
        return 0, 0.0
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            sizes = [float(x) for x in out.split()]
            if sizes:
                return count, min(sizes) / 1024
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return count, 0.0


@dataclass(frozen=True)
class DataFacts:
    """What the recipe knows about the data. `side` is the typical shorter image side in pixels (None when
    no measurement exists); `imbalance` the largest/smallest class ratio before balancing."""

    train_examples: int
    val_examples: int = 0
    test_examples: int = 0
    side: float | None = None
    colour: bool | None = None
    imbalance: float | None = None
    sizes_text: str = "image sizes unknown"

    @classmethod
    def from_report(cls, report: dict | None, counts: dict[str, int],
                    class_counts: list[int] | None = None) -> DataFacts:
        """From ingest's report.json (its `images` and `balance` sections; see services/ingest/report.py)
        and the records' split counts; the class counts of the training list stand in for the balance
        when there is no report."""
        report = report or {}
        images = report.get("images") or {}
        width, height = images.get("width") or {}, images.get("height") or {}
        side, text = None, "image sizes unknown (no ingest report)"
        if width.get("mean") and height.get("mean"):
            # The median when ingest measured it, else the mean: a few huge images should not set the size.
            side = min(width.get("median", width["mean"]), height.get("median", height["mean"]))
            text = (f"images {width['min']}-{width['max']} x {height['min']}-{height['max']} px "
                    f"(typical shorter side {side:.0f})")
        modes = images.get("modes") or {}
        colour = any(mode in _COLOUR_MODES for mode in modes) if modes else None
        ratio = (report.get("balance") or {}).get("ratio_before")
        if ratio is None and class_counts:
            present = [n for n in class_counts if n > 0]
            ratio = max(present) / min(present) if present else None
        return cls(counts.get("train", 0), counts.get("val", 0), counts.get("test", 0), side, colour, ratio, text)


@dataclass(frozen=True)
class Choice:
    field: str
    value: str
    reason: str


@dataclass
class Plan:
    recipe: str
    config: TrainingConfig  # effective: explicit fields over the recipe's choices, defaults filled
    choices: list[Choice] = field(default_factory=list)

    def text(self) -> str:
        width = max((len(c.field) for c in self.choices), default=0)
        lines = [f"training plan (recipe {self.recipe}):"]
        lines += [f"  {c.field:<{width}}  {c.value:<12} {c.reason}" for c in self.choices]
        return "\n".join(lines)

    def to_proto(self) -> common_pb2.TrainingPlan:
        return common_pb2.TrainingPlan(
            recipe=self.recipe, text=self.text(),
            choices=[common_pb2.PlanChoice(field=c.field, value=c.value, reason=c.reason) for c in self.choices])


def facts_of(data) -> DataFacts:
    """The facts of a services.trainer.data.TrainingData (duck-typed: this module imports no TensorFlow)."""
    first = next((t for t in data.tasks if not t.regression), None)
    counts = data.class_counts.get(first.name) if first is not None else None
    return DataFacts.from_report(data.dataset_report(), data.counts, counts)


def budget_text(budget_seconds: float, budget: BudgetPlan, measured: dict) -> str:
    """The time budget's lines of the printed plan."""
    text = (f"  time budget {format_duration(budget_seconds)}: measured {measured['images_per_second']:.0f} "
            f"images/s training, {measured['eval_images_per_second']:.0f} evaluating; {budget.reason}; training "
            f"{format_duration(budget.planned_training_seconds)}, "
            f"{format_duration(budget.evaluation_margin_seconds)} kept for export and evaluation")
    if measured.get("relaxed"):
        text += (f"\n  short run ({budget.epochs} epochs): {', '.join(measured['relaxed'])}: a few passes "
                 f"underfit, so these would only slow the learning")
    return text


SET_IN_SPEC = "set in the spec"
SHORT_RUN_EPOCHS = 3
SHORT_RUN_WEIGHT_DECAY = 1e-4


def chosen_fields(choices) -> frozenset[str]:
    """The fields a plan's recipe chose itself (not the spec); `choices` are Choice or PlanChoice."""
    return frozenset(c.field for c in choices if c.reason != SET_IN_SPEC)


def relax_for_short_run(config: TrainingConfig, epochs: int,
                        chosen: frozenset[str]) -> tuple[TrainingConfig, list[str]]:
    """A run of a few epochs sees each image a few times: it underfits, and augmentation and strong weight
    decay only slow it (Fashion-MNIST, 2 AVX2 cores, one epoch: 0.899 test accuracy without the box
    jitter and flip and with weight decay 1e-4, against 0.862 with them). Turns off the augmentation the
    recipe chose and lowers its weight decay; whatever the spec set is kept. Returns what changed."""
    if epochs > SHORT_RUN_EPOCHS or not chosen:
        return config, []
    relaxed = TrainingConfig()
    relaxed.CopyFrom(config)
    a, changed = relaxed.augmentation, []
    if "augmentation.box_jitter" in chosen and a.box_jitter:
        a.box_jitter = 0
        changed.append("no box jitter")
    if "augmentation.crop_scale_min" in chosen and a.crop_scale_min:
        a.crop_scale_min = a.crop_scale_max = a.crop_aspect_min = a.crop_aspect_max = 0
        changed.append("no random crop")
    if "augmentation.horizontal_flip" in chosen and a.horizontal_flip:
        a.horizontal_flip = False
        changed.append("no flip")
    if "augmentation.colour" in chosen and (a.brightness or a.contrast or a.saturation or a.hue):
        a.brightness = a.contrast = a.saturation = a.hue = 0
        changed.append("no colour jitter")
    if "weight_decay" in chosen and relaxed.weight_decay > SHORT_RUN_WEIGHT_DECAY:
        relaxed.weight_decay = SHORT_RUN_WEIGHT_DECAY
        changed.append(f"weight decay {SHORT_RUN_WEIGHT_DECAY:g}")
    return relaxed, changed


def recipe_of(config: TrainingConfig) -> str:
    """The recipe a config asks for (see the module doc); InvalidArgument for an unknown name."""
    name = config.recipe.strip().lower()
    if name:
        if name not in RECIPES:
            raise InvalidArgument("config.recipe", f"unknown recipe {config.recipe!r}; use one of {', '.join(RECIPES)}")
        return name
    explicit = [f.name for f, _ in config.ListFields() if f.name not in RECIPE_FIELDS]
    return IMAGENET_GPU if explicit else AUTO


def min_kept_area(aug: common_pb2.Augmentation) -> float:
    """The smallest fraction of an image's area that the random geometry can keep: the random resized
    crop's lower scale, shrunk by a box jitter that pulls every edge inwards (services/trainer/augment.py)."""
    crop = aug.crop_scale_min if aug.crop_scale_min > 0 else 1.0
    return crop * (1.0 - 2.0 * aug.box_jitter) ** 2


def plan_training(config: TrainingConfig | None, facts: DataFacts, hardware: Hardware) -> Plan:
    """The effective TrainingConfig for a job, and the reasons. Validated like any config."""
    config = config if config is not None else TrainingConfig()
    recipe = recipe_of(config)
    if recipe == IMAGENET_GPU:
        effective = with_defaults(config)
        return Plan(IMAGENET_GPU, effective, [Choice(
            "recipe", IMAGENET_GPU, f"{'named in the spec' if config.recipe else 'the spec sets training fields'}"
            f"; unset fields take the fixed defaults ({effective.input_size} px "
            f"{Backbone.Name(effective.backbone)[9:].lower()}, {effective.full_stage.epochs} epochs)")])
    auto, choices = _auto(config, facts, hardware)
    auto.MergeFrom(config)  # explicit fields win (zero/false means unset, as everywhere in TrainingConfig)
    effective = with_defaults(auto)
    explicit = _set_paths(config)
    if explicit & {f"augmentation.{name}" for name in ("brightness", "contrast", "saturation", "hue")}:
        explicit.add("augmentation.colour")  # the recipe's colour choice stands for these four fields
    shown_choices = []
    for choice in choices:
        if choice.field in explicit:
            choice = Choice(choice.field, _value(effective, choice.field), SET_IN_SPEC)
        shown_choices.append(choice)
    if min_kept_area(effective.augmentation) < MIN_KEPT_AREA_SMALL and facts.side and facts.side <= SMALL_IMAGE_SIDE:
        shown_choices.append(Choice("warning", "crop", f"the spec's crop/jitter may keep only "
                                                       f"{min_kept_area(effective.augmentation):.0%} of "
                                                       f"{facts.side:.0f} px images"))
    return Plan(AUTO, effective, shown_choices)


class _Choices:
    """The config the recipe builds, and each choice with its reason, in the order the plan shows them."""

    def __init__(self):
        self.config = TrainingConfig()
        self.made: list[Choice] = []

    def choose(self, path: str, value, reason: str) -> None:
        _assign(self.config, path, value)
        self.made.append(Choice(path, _shown(value), reason))

    def note(self, path: str, shown: str, reason: str) -> None:
        """A choice that leaves the field at its default, shown with its reason all the same."""
        self.made.append(Choice(path, shown, reason))


def _auto(config: TrainingConfig, facts: DataFacts, hw: Hardware) -> tuple[TrainingConfig, list[Choice]]:
    chosen = _Choices()
    # Every choice is shown, but the ones after it follow what the run will use: the spec's value where
    # it sets one.
    size = _choose_input_size(chosen, facts, hw)
    size = config.input_size or size
    batch = _choose_network(chosen, facts, hw, size)
    batch = config.batch_size or batch
    _choose_schedule(chosen, facts, hw, batch)
    _choose_augmentation(chosen, config, facts)
    _choose_class_weights(chosen, facts)
    return chosen.config, chosen.made


def _choose_input_size(chosen: _Choices, facts: DataFacts, hw: Hardware) -> int:
    """The images' own resolution, up to what the hardware can afford."""
    cap, cap_reason = _input_cap(hw)
    side = facts.side
    if side is None:
        size, why = 64, f"{facts.sizes_text}: a middle size"
    elif side < 28:
        size, why = 28, f"{facts.sizes_text}: upsampled to the small network's smallest input"
    elif side <= 64:
        size, why = min(int(round(side / 4) * 4), cap), f"{facts.sizes_text}: their own resolution"
    else:
        size = min(int(side // 16 * 16), cap)
        why = (f"{facts.sizes_text}: {cap_reason}" if size == cap
               else f"{facts.sizes_text}: their own resolution")
    chosen.choose("input_size", size, why)
    return size


def _choose_network(chosen: _Choices, facts: DataFacts, hw: Hardware, size: int) -> int:
    """A ResNet on GPUs; on CPUs the small CNN, its width by the instruction set and cores. Returns the
    batch size chosen with it."""
    if hw.gpus:
        chosen.choose("backbone", "resnet18", f"{hw.describe()}: a ResNet18 fits and trains fast")
        chosen.choose("width_multiplier", 1.0, "full width on a GPU")
        per_gpu = 256 if size <= 64 else 128 if size <= 128 else 64
        if hw.gpu_memory_gb and hw.gpu_memory_gb < 12:
            per_gpu //= 2
        batch = per_gpu * hw.gpus
        batch_why = f"{per_gpu} per GPU at {size} px"
    else:
        stem = "" if size <= 64 else "; a stride-4 entry keeps larger inputs cheap"
        chosen.choose("backbone", "small_cnn", f"{hw.describe()}: an 8-convolution CNN trains in minutes{stem}")
        strong = hw.isa == "avx512" or hw.cpu_cores >= 8
        width = 1.0 if strong else 0.5 if hw.isa == "avx2" else 0.25
        chosen.choose("width_multiplier", width, f"{hw.describe()}: " + (
            "full width" if strong else "a narrower network keeps the epochs affordable"))
        # Measured on Fashion-MNIST, 2 AVX2 cores, one epoch: batch 64 reached 0.862 test accuracy at 587
        # images/s, batch 128 0.837 at 464: twice the updates for the same images, at no loss of speed.
        batch, batch_why = 64, "CPU: twice the updates per epoch of 128 at the same speed"
    fitted = max(16, min(batch, _floor_power_of_two(max(facts.train_examples // 8, 16))))
    if fitted < batch:
        batch_why = f"only {facts.train_examples} training images: at least 8 steps per epoch"
    chosen.choose("batch_size", fitted, batch_why)
    return fitted


def _choose_schedule(chosen: _Choices, facts: DataFacts, hw: Hardware, batch: int) -> None:
    """SGD with a learning rate scaled to the batch, epochs for about TARGET_STEPS steps, regularisation."""
    c = chosen.config
    # Linear scaling: 0.1 per 128 images (the CIFAR rule) for the small CNN, 0.1 per 256 (the ImageNet
    # rule, for large batches) for ResNets on GPUs.
    images_per_tenth = 256 if hw.gpus else 128
    lr = round(0.1 * batch / images_per_tenth, 5)
    chosen.choose("optimizer", "sgd", "SGD with Nesterov momentum 0.9, warm-up then cosine decay")
    c.nesterov, c.momentum = True, 0.9
    c.lr_schedule = common_pb2.LR_SCHEDULE_COSINE
    chosen.choose("full_stage.learning_rate", lr, f"0.1 x batch {batch} / {images_per_tenth} (linear scaling)")
    steps = max(facts.train_examples // batch, 1)
    epochs = min(max(math.ceil(TARGET_STEPS / steps), MIN_EPOCHS), MAX_EPOCHS)
    chosen.choose("full_stage.epochs", epochs, f"about {TARGET_STEPS} steps at {steps} steps/epoch "
                                               f"(within {MIN_EPOCHS}..{MAX_EPOCHS}); a time budget can lower it")
    c.warmup_epochs = 1
    chosen.choose("weight_decay", 5e-4, "L2 for a full schedule; lowered when a time budget makes the run short")
    c.label_smoothing = 0.1
    c.dropout = 0.1


def _choose_augmentation(chosen: _Choices, config: TrainingConfig, facts: DataFacts) -> None:
    """Augmentation that keeps the label: small images are not cropped, mirrors only when allowed."""
    aug = chosen.config.augmentation
    aug.SetInParent()
    side = facts.side
    if side is not None and side <= SMALL_IMAGE_SIDE:
        chosen.choose("augmentation.box_jitter", 0.08, f"{side:.0f} px images: a light jitter (keeps at least "
                                                       f"{(1 - 0.16) ** 2:.0%} of the image), no random crop")
    else:
        # Never below half the area: a crop that cuts away most of an image cuts away the object or defect too.
        chosen.choose("augmentation.crop_scale_min", 0.5, "random resized crop keeping at least 50% of the area")
        aug.crop_scale_max, aug.crop_aspect_min, aug.crop_aspect_max = 1.0, 3 / 4, 4 / 3
    if config.mirror_invariant:
        chosen.choose("augmentation.horizontal_flip", True, "mirror_invariant: the labels survive a mirror image")
    else:
        chosen.note("augmentation.horizontal_flip", "false",
                    "no flip: the spec does not say the labels survive a mirror image (mirror_invariant)")
    if facts.colour:
        aug.brightness = aug.contrast = aug.saturation = 0.2
        aug.hue = 0.02
        chosen.note("augmentation.colour", "0.2", "colour images: brightness/contrast/saturation jitter")
    else:
        chosen.note("augmentation.colour", "off", "grey images: no colour jitter"
                    if facts.colour is False else "colour unknown: no colour jitter")


def _choose_class_weights(chosen: _Choices, facts: DataFacts) -> None:
    """Oversampling (ingest) bounds the class ratio; class weights even out what remains."""
    if facts.imbalance is not None and facts.imbalance > IMBALANCE_RATIO:
        chosen.choose("class_weights", True, f"classes {facts.imbalance:.1f}:1 before balancing "
                                             f"(> {IMBALANCE_RATIO:g}:1): inverse-frequency weights on top of "
                                             f"ingest's oversampling")
    else:
        ratio = "unknown" if facts.imbalance is None else f"{facts.imbalance:.1f}:1"
        chosen.note("class_weights", "false", f"class ratio {ratio}: no weighting needed")


def _input_cap(hw: Hardware) -> tuple[int, str]:
    """The largest input side worth its cost on this hardware."""
    if hw.gpus:
        if hw.gpu_memory_gb and hw.gpu_memory_gb < 12:
            return 160, f"capped at 160 px for {hw.describe()}"
        return 224, "capped at 224 px on a GPU"
    cap = 64 if hw.cpu_cores <= 4 else 96 if hw.cpu_cores <= 16 else 128
    if hw.isa == "avx512":
        cap += 32
    return cap, f"capped at {cap} px for {hw.describe()}: resolution traded for epochs"


def _floor_power_of_two(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _assign(message, path: str, value) -> None:
    *parents, name = path.split(".")
    for part in parents:
        message = getattr(message, part)
    if name == "backbone":
        value = Backbone.Value("BACKBONE_" + value.upper())
    elif name == "optimizer":
        value = common_pb2.Optimizer.Value("OPTIMIZER_" + value.upper())
    setattr(message, name, value)


def _value(message, path: str) -> str:
    for part in path.split("."):
        if not hasattr(message, part):
            return "-"
        message = getattr(message, part)
    return _shown(message)


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower()


def _set_paths(message, prefix: str = "") -> set[str]:
    """Dotted paths of every field set in a message (nested messages too)."""
    paths = set()
    for descriptor, value in message.ListFields():
        path = prefix + descriptor.name
        paths.add(path)
        if descriptor.message_type is not None and not descriptor.is_repeated:
            paths |= _set_paths(value, path + ".")
    return paths


# --------------------------------------------------------------------------- time budget

# Measured in `make demo` (2 cores, SMALL_CNN, 10,000 test images; a bare eval step at 1,800-3,800 images/s):
# export 2-3 s, the evaluator 8.5-10 s (15-17 s under a load of 6-10).
EXPORT_SECONDS = 5.0  # SavedModel export and upload of a small network
EVALUATOR_FIXED_SECONDS = 5.0  # load the SavedModel, plots, Grad-CAMs, the HTML report
EVALUATOR_COST_PER_IMAGE = 1.5  # the evaluator decodes through the serving graph and hashes: vs. a bare eval step
CHECKPOINT_SECONDS = 1.0  # per epoch
SAFETY = 0.95  # of the time left, the share the epochs are planned to fill


@dataclass(frozen=True)
class BudgetPlan:
    epochs: int
    steps_per_epoch: int
    planned_training_seconds: float  # from now, the epochs and their validation
    evaluation_margin_seconds: float  # export, the final validation, the evaluator's test pass
    fits: bool  # False when even the smallest run exceeds the budget
    reason: str


def plan_budget(*, budget_seconds: float, spent_seconds: float, train_images_per_second: float,
                eval_images_per_second: float, batch_size: int, steps_per_epoch: int, val_examples: int,
                test_examples: int, max_epochs: int, validate_every_epochs: int = 1) -> BudgetPlan:
    """The epochs and steps per epoch that end training, export and evaluation within `budget_seconds`,
    `spent_seconds` of it already gone. The recipe's epochs when they fit; otherwise as many epochs as
    whole epochs would fill, plus one, all shortened alike (each epoch a freshly shuffled part of the
    data), so that the budget is used rather than left over for lack of a whole epoch."""
    train_ips = max(train_images_per_second, 1e-6)
    eval_ips = max(eval_images_per_second, 1e-6)
    val_seconds = val_examples / eval_ips
    margin = (EXPORT_SECONDS + val_seconds + EVALUATOR_FIXED_SECONDS
              + test_examples * EVALUATOR_COST_PER_IMAGE / eval_ips)
    step_seconds = batch_size / train_ips
    overhead = val_seconds / max(validate_every_epochs, 1) + CHECKPOINT_SECONDS  # per epoch
    full_epoch = steps_per_epoch * step_seconds + overhead
    available = (budget_seconds - spent_seconds - margin) * SAFETY
    rate = f"{full_epoch:.0f}s per whole epoch at {train_ips:.0f} images/s"
    if available >= max_epochs * full_epoch:
        return BudgetPlan(max_epochs, steps_per_epoch, max_epochs * full_epoch, margin, True,
                          f"the recipe's {max_epochs} epochs fit ({rate})")
    epochs = min(max(math.ceil(available / full_epoch), 1), max_epochs)
    steps = int((available - epochs * overhead) // (epochs * step_seconds)) if available > 0 else 0
    while steps < 1 and epochs > 1:  # the per-epoch overhead leaves no steps: fewer, longer epochs
        epochs -= 1
        steps = int((available - epochs * overhead) // (epochs * step_seconds))
    steps = min(max(steps, 1), steps_per_epoch)
    planned = epochs * (steps * step_seconds + overhead)
    fits = spent_seconds + margin + planned <= budget_seconds
    why = (f"{epochs} epoch{'s' if epochs > 1 else ''} of {steps} of {steps_per_epoch} steps ({rate})"
           + ("" if fits else f"; the budget is too small by about "
                              f"{format_duration(spent_seconds + margin + planned - budget_seconds)}"))
    return BudgetPlan(epochs, steps, planned, margin, fits, why)


def steps_within(seconds_left: float, step_seconds: float, overhead_seconds: float, steps_per_epoch: int,
                 min_fraction: float = 0.1) -> int:
    """The steps of the next epoch that end, with its validation and checkpoint, within `seconds_left`
    (at the pace of the last epoch): all of them, fewer, or 0 when less than `min_fraction` of an epoch
    would fit (not worth starting)."""
    if seconds_left <= overhead_seconds:
        return 0
    steps = min(int((seconds_left - overhead_seconds) // max(step_seconds, 1e-9)), steps_per_epoch)
    return steps if steps >= max(1.0, min_fraction * steps_per_epoch) else 0
