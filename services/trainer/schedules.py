"""Optimisers and learning-rate schedules: linear warm-up, then cosine or step decay (x0.1 at 50% and
75% of the stage) or constant. Each training stage gets its own optimiser, with the schedule counted
in that stage's steps."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from classforge.v1 import common_pb2

Optimizer = common_pb2.Optimizer
LrSchedule = common_pb2.LrSchedule

NO_DECAY = ["gamma", "beta", "bias", "centers"]


@keras.saving.register_keras_serializable("classforge")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, kind: int):
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.kind = int(kind)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(self.warmup_steps, tf.float32)
        total = tf.cast(self.total_steps, tf.float32)
        warmup_lr = self.base_lr * (step + 1.0) / tf.maximum(warm, 1.0)
        progress = tf.clip_by_value((step - warm) / tf.maximum(total - warm, 1.0), 0.0, 1.0)
        if self.kind == LrSchedule.LR_SCHEDULE_COSINE:
            decayed = self.base_lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == LrSchedule.LR_SCHEDULE_STEP:
            decayed = self.base_lr * tf.where(progress >= 0.75, 0.01, tf.where(progress >= 0.5, 0.1, 1.0))
        else:
            decayed = tf.constant(self.base_lr)
        return tf.where(step < warm, warmup_lr, decayed)

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "kind": self.kind}


def make_optimizer(config: common_pb2.TrainingConfig, learning_rate: float, steps_per_epoch: int,
                   epochs: int, warmup_epochs: int) -> keras.optimizers.Optimizer:
    schedule = WarmupDecay(learning_rate, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch,
                           config.lr_schedule)
    if config.optimizer == Optimizer.OPTIMIZER_SGD:
        opt = keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=config.nesterov)
    elif config.optimizer == Optimizer.OPTIMIZER_ADAM:
        opt = keras.optimizers.Adam(schedule)
    else:
        opt = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    if config.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def decoupled_decay(config: common_pb2.TrainingConfig) -> bool:
    """AdamW applies weight decay in the optimiser; the others add the L2 term to the loss."""
    return config.optimizer == Optimizer.OPTIMIZER_ADAMW
