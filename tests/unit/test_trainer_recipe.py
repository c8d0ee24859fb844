"""The automatic recipe and the time budget's plan: pure logic, no TensorFlow, no wall time."""

import pytest

from classforge.v1 import common_pb2
from services.common.durations import format_duration, parse_duration
from services.common.errors import InvalidArgument
from services.trainer import recipe
from services.trainer.config import with_defaults
from services.trainer.recipe import DataFacts, Hardware, min_kept_area, plan_budget, plan_training

TWO_CORE_AVX2 = Hardware(cpu_cores=2, isa="avx2")
BIG_CPU = Hardware(cpu_cores=32, isa="avx512")
GPU = Hardware(cpu_cores=8, isa="avx512", gpus=2, gpu_memory_gb=80)


def small_images(side: int = 28, **kwargs) -> DataFacts:
    report = {"images": {"width": {"min": side, "max": side, "mean": side, "median": side},
                         "height": {"min": side, "max": side, "mean": side, "median": side},
                         "modes": {"L": 60000}},
              "balance": {"ratio_before": kwargs.pop("ratio", 1.0)}}
    counts = {"train": kwargs.pop("train", 54000), "val": 3000, "test": 10000}
    return DataFacts.from_report(report, counts)


def config(**fields) -> common_pb2.TrainingConfig:
    return common_pb2.TrainingConfig(**fields)


@pytest.mark.parametrize("hardware", [TWO_CORE_AVX2, BIG_CPU, GPU], ids=["2-core-avx2", "32-core-avx512", "2-gpus"])
@pytest.mark.parametrize("spec", [config(), config(recipe="auto"), config(time_budget="5m")],
                         ids=["no-config", "recipe-auto", "budget-only"])
def test_small_images_are_never_cropped_below_half_nor_flipped_unless_allowed(hardware, spec):
    """Issue #17: the plan for 28 px images keeps at least 50 % of each image's area, and flips only when
    the spec says the labels survive a mirror image."""
    plan = plan_training(spec, small_images(28), hardware)
    assert plan.recipe == "auto"
    aug = plan.config.augmentation
    assert min_kept_area(aug) >= 0.5, f"the plan may keep only {min_kept_area(aug):.0%} of a 28 px image"
    assert not aug.horizontal_flip, "flipped although the spec did not say that labels survive a mirror image"

    allowed = common_pb2.TrainingConfig()
    allowed.CopyFrom(spec)
    allowed.mirror_invariant = True
    assert plan_training(allowed, small_images(28), hardware).config.augmentation.horizontal_flip


def test_min_kept_area_measures_crop_and_jitter():
    assert min_kept_area(common_pb2.Augmentation()) == 1.0
    assert min_kept_area(recipe.with_defaults(config()).augmentation) == pytest.approx(0.25)  # imagenet-gpu
    assert min_kept_area(common_pb2.Augmentation(box_jitter=0.25)) == pytest.approx(0.25)
    assert min_kept_area(common_pb2.Augmentation(crop_scale_min=0.8, box_jitter=0.05)) == pytest.approx(0.648)


def test_auto_plan_for_fashion_mnist_on_two_avx2_cores():
    plan = plan_training(config(mirror_invariant=True), small_images(28), TWO_CORE_AVX2)
    c = plan.config
    assert (c.input_size, c.backbone, c.width_multiplier, c.batch_size) == (28, common_pb2.BACKBONE_SMALL_CNN, 0.5, 64)
    assert c.small_input_stem and c.optimizer == common_pb2.OPTIMIZER_SGD and c.nesterov
    assert c.full_stage.learning_rate == pytest.approx(0.05)
    assert recipe.MIN_EPOCHS <= c.full_stage.epochs <= recipe.MAX_EPOCHS
    assert c.augmentation.crop_scale_min == 0 and c.augmentation.box_jitter == pytest.approx(0.08)
    assert not c.class_weights and c.augmentation.brightness == 0  # balanced, grey
    text = plan.text()
    assert text.startswith("training plan (recipe auto):")
    for fragment in ("input_size", "28 px", "AVX2", "mirror_invariant", "no random crop"):
        assert fragment in text
    assert plan.to_proto().choices[0].field == "input_size"


def test_hardware_sets_width_backbone_and_resolution():
    big_images = DataFacts(train_examples=2000, side=300, colour=True, sizes_text="300 px")
    on_avx2 = plan_training(None, big_images, Hardware(4, "avx2")).config
    on_avx512 = plan_training(None, big_images, Hardware(32, "avx512")).config
    on_gpu = plan_training(None, big_images, GPU).config
    assert (on_avx2.input_size, on_avx2.width_multiplier) == (64, 0.5)
    assert (on_avx512.input_size, on_avx512.width_multiplier) == (160, 1.0)
    assert on_gpu.backbone == common_pb2.BACKBONE_RESNET18 and on_gpu.input_size == 224
    assert on_gpu.batch_size == 2 * 64  # 64 per GPU at 224 px
    assert plan_training(None, small_images(28), GPU).config.batch_size == 2 * 256
    # Larger images get a random resized crop, but never below half of the area; colour jitter for colour.
    assert on_gpu.augmentation.crop_scale_min == pytest.approx(0.5) and on_gpu.augmentation.saturation > 0
    tiny = plan_training(None, small_images(8, train=1617), TWO_CORE_AVX2).config
    assert tiny.input_size == 28 and tiny.batch_size <= 1617 // 8  # digits: upsampled, several steps per epoch


def test_imbalance_turns_on_class_weights_on_evidence():
    assert plan_training(None, small_images(64, ratio=14.0), TWO_CORE_AVX2).config.class_weights
    assert not plan_training(None, small_images(64, ratio=2.0), TWO_CORE_AVX2).config.class_weights
    # Without a report, the training list's class counts are the evidence.
    facts = DataFacts.from_report(None, {"train": 1000}, [900, 50, 50])
    assert facts.imbalance == pytest.approx(18.0) and facts.side is None
    assert plan_training(None, facts, TWO_CORE_AVX2).config.class_weights


def test_explicit_fields_win_and_are_marked():
    spec = config(recipe="auto", input_size=32, batch_size=32,
                  augmentation=common_pb2.Augmentation(horizontal_flip=True),
                  full_stage=common_pb2.TrainingStage(epochs=3))
    plan = plan_training(spec, small_images(28), TWO_CORE_AVX2)
    c = plan.config
    assert (c.input_size, c.batch_size, c.full_stage.epochs) == (32, 32, 3)
    assert c.full_stage.learning_rate == pytest.approx(0.025)  # follows the explicit batch
    assert c.augmentation.horizontal_flip and c.augmentation.box_jitter == pytest.approx(0.08)  # merged
    reasons = {choice.field: choice.reason for choice in plan.choices}
    assert reasons["input_size"] == reasons["batch_size"] == reasons["full_stage.epochs"] == "set in the spec"
    # An explicit crop that cuts small images down is the user's choice, but the plan says so.
    cut = plan_training(config(recipe="auto", augmentation=common_pb2.Augmentation(crop_scale_min=0.2)),
                        small_images(28), TWO_CORE_AVX2)
    assert cut.config.augmentation.crop_scale_min == pytest.approx(0.2)
    assert any(choice.field == "warning" for choice in cut.choices)


def test_old_defaults_stay_reachable_as_a_named_recipe():
    named = plan_training(config(recipe="imagenet-gpu"), small_images(28), TWO_CORE_AVX2)
    assert named.recipe == "imagenet-gpu" and named.config == with_defaults(config(recipe="imagenet-gpu"))
    assert (named.config.input_size, named.config.backbone) == (224, common_pb2.BACKBONE_RESNET18)
    # A config that sets training fields without naming a recipe keeps the old meaning.
    explicit = plan_training(config(input_size=64), small_images(28), TWO_CORE_AVX2)
    assert explicit.recipe == "imagenet-gpu" and explicit.config == with_defaults(config(input_size=64))
    assert recipe.recipe_of(config(time_budget="10m", mirror_invariant=True, seed=3)) == "auto"
    with pytest.raises(InvalidArgument, match="config.recipe.*unknown recipe"):
        plan_training(config(recipe="fast"), small_images(28), TWO_CORE_AVX2)
    with pytest.raises(InvalidArgument, match="config.time_budget"):
        with_defaults(config(time_budget="soon"))


def test_report_median_sets_the_size():
    report = {"images": {"width": {"min": 20, "max": 4000, "mean": 900, "median": 48},
                         "height": {"min": 20, "max": 3000, "mean": 700, "median": 40}, "modes": {"RGB": 9}}}
    facts = DataFacts.from_report(report, {"train": 500})
    assert facts.side == 40 and facts.colour
    assert plan_training(None, facts, TWO_CORE_AVX2).config.input_size == 40


def test_cpu_isa_reads_flags_and_the_onednn_cap():
    assert recipe.cpu_isa({"avx2", "avx512f"}) == "avx512"
    assert recipe.cpu_isa({"avx2", "avx512f"}, "AVX2") == "avx2"
    assert recipe.cpu_isa({"avx2", "avx512f"}, "avx512_core") == "avx512"
    assert recipe.cpu_isa({"avx2"}) == "avx2"
    assert recipe.cpu_isa({"sse4_2"}) == "baseline"
    assert recipe.cpu_isa({"avx2"}, "SSE41") == "baseline"


# --------------------------------------------------------------------------- time budget

BUDGET = dict(train_images_per_second=900.0, eval_images_per_second=3000.0, batch_size=128, steps_per_epoch=425,
              val_examples=3000, test_examples=10000)


def planned_end(plan, spent: float) -> float:
    return spent + plan.planned_training_seconds + plan.evaluation_margin_seconds


@pytest.mark.parametrize("budget", [120, 300, 600, 3600])
def test_budget_plan_fits_and_uses_the_budget(budget):
    plan = plan_budget(budget_seconds=budget, spent_seconds=12, max_epochs=20, **BUDGET)
    assert plan.fits and planned_end(plan, 12) <= budget
    whole_epoch = 425 * 128 / 900 + 3000 / 3000 + recipe.CHECKPOINT_SECONDS
    if plan.epochs < 20:  # not capped by the recipe: the time is used, not left over for lack of a whole epoch
        assert planned_end(plan, 12) + plan.epochs * 128 / 900 > budget * recipe.SAFETY
        assert plan.epochs * whole_epoch > plan.planned_training_seconds  # so the epochs were shortened
    # The margin grows with the test split (the evaluator's pass over it).
    bigger_test = plan_budget(budget_seconds=budget, spent_seconds=12, max_epochs=20,
                              **(BUDGET | {"test_examples": 50000}))
    assert bigger_test.evaluation_margin_seconds > plan.evaluation_margin_seconds


def test_budget_plan_caps_at_the_recipes_epochs():
    plan = plan_budget(budget_seconds=36000, spent_seconds=10, max_epochs=18, **BUDGET)
    assert plan.epochs == 18 and plan.steps_per_epoch == 425 and plan.fits


def test_budget_of_one_and_a_half_epochs_trains_two_shorter_ones():
    whole_epoch = 425 * 128 / 900 + 1 + recipe.CHECKPOINT_SECONDS
    margin = plan_budget(budget_seconds=1000, spent_seconds=0, max_epochs=18, **BUDGET).evaluation_margin_seconds
    budget = 10 + margin + 1.5 * whole_epoch / recipe.SAFETY
    plan = plan_budget(budget_seconds=budget, spent_seconds=10, max_epochs=18, **BUDGET)
    assert plan.epochs == 2 and 0.7 * 425 <= plan.steps_per_epoch <= 0.76 * 425 and plan.fits
    assert planned_end(plan, 10) <= budget


def test_budget_smaller_than_one_epoch_trains_part_of_one():
    plan = plan_budget(budget_seconds=60, spent_seconds=10, max_epochs=18, **BUDGET)
    assert plan.epochs == 1 and 1 <= plan.steps_per_epoch < 425 and plan.fits
    assert planned_end(plan, 10) <= 60
    hopeless = plan_budget(budget_seconds=20, spent_seconds=10, max_epochs=18, **BUDGET)
    assert (hopeless.epochs, hopeless.steps_per_epoch, hopeless.fits) == (1, 1, False)
    assert "too small" in hopeless.reason


def test_durations():
    assert parse_duration("") == 0
    assert parse_duration("600") == parse_duration("10m") == parse_duration("600s") == 600
    assert parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400
    for bad in ("10 minutes", "m", "0", "-5", "10m10m", "40d"):
        with pytest.raises(InvalidArgument, match="time_budget"):
            parse_duration(bad)
    assert format_duration(42.4) == "42s" and format_duration(600) == "10m 00s" and format_duration(5400) == "1h 30m"


def test_a_short_budgeted_run_relaxes_only_what_the_recipe_chose():
    spec = config(recipe="auto", mirror_invariant=True, augmentation=common_pb2.Augmentation(brightness=0.3))
    plan = plan_training(spec, small_images(28), TWO_CORE_AVX2)
    chosen = recipe.chosen_fields(plan.choices)
    assert "augmentation.box_jitter" in chosen and "weight_decay" in chosen
    relaxed, changed = recipe.relax_for_short_run(plan.config, 2, chosen)
    a = relaxed.augmentation
    assert (a.box_jitter, a.horizontal_flip, relaxed.weight_decay) == (0, False, pytest.approx(1e-4))
    assert a.brightness == pytest.approx(0.3)  # the spec's own choice stays
    assert changed == ["no box jitter", "no flip", "weight decay 0.0001"]
    assert plan.config.augmentation.box_jitter > 0  # the plan itself is not changed
    assert recipe.relax_for_short_run(plan.config, 4, chosen) == (plan.config, [])  # long enough to need them
    named = plan_training(config(recipe="imagenet-gpu"), small_images(28), TWO_CORE_AVX2)
    assert recipe.relax_for_short_run(named.config, 1, recipe.chosen_fields(named.choices)) == (named.config, [])


def test_an_epoch_running_late_is_shortened_or_not_started():
    # 100 steps of 1 s, 5 s of validation and checkpoint per epoch.
    assert recipe.steps_within(200, 1.0, 5, 100) == 100
    assert recipe.steps_within(60, 1.0, 5, 100) == 55
    assert recipe.steps_within(14, 1.0, 5, 100) == 0  # 9 steps: under a tenth of an epoch, not worth it
    assert recipe.steps_within(4, 1.0, 5, 100) == 0
    assert recipe.steps_within(3, 1.0, 1, 5) == 2  # a short epoch: any whole step counts
