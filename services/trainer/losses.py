"""Loss design: one head per task with its own weight; cross-entropy with label smoothing and class
weights for classification heads, SmoothL1 (Huber, delta 1) for regression heads; optional center
loss (weight lambda) on the embedding; L2 weight decay kept apart as the regularisation term.

Every per-example loss is summed and divided by the *global* batch size, so the same code is right
under MirroredStrategy (gradients are summed over replicas). A label of -1 (unknown for that task)
contributes nothing.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from services.trainer.backbones import Task


def class_weight_vector(counts: list[int] | np.ndarray) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 over the classes present (absent classes get 1)."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.ones_like(counts)
    present = counts > 0
    if present.any():
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
        weights[present] /= weights[present].mean()
    return weights.astype(np.float32)


class LossComputer:
    def __init__(self, tasks: tuple[Task, ...], *, label_smoothing: float = 0.0,
                 class_weights: dict[str, np.ndarray] | None = None, center_loss_weight: float = 0.0,
                 center_alpha: float = 0.5, embedding_dim: int = 0):
        self.tasks = tasks
        self.label_smoothing = label_smoothing
        self.class_weights = {name: tf.constant(w) for name, w in (class_weights or {}).items()}
        self.center_loss_weight = center_loss_weight
        self.center_alpha = center_alpha
        self.center_task = next((i for i, t in enumerate(tasks) if not t.regression), None)
        self.centers = None
        if center_loss_weight > 0 and self.center_task is not None:
            n = tasks[self.center_task].num_outputs
            self.centers = tf.Variable(tf.zeros([n, embedding_dim]), trainable=False, name="centers",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def task_losses(self, outputs: dict, labels: tf.Tensor, global_batch: int) -> dict[str, tf.Tensor]:
        """{task name: loss summed over the batch / global_batch} (unweighted)."""
        losses = {}
        for index, task in enumerate(self.tasks):
            label = labels[:, index]
            valid = tf.cast(label >= 0, tf.float32)
            out = tf.cast(outputs[task.name], tf.float32)
            if task.regression:
                per_example = _smooth_l1(out[:, 0], tf.cast(label, tf.float32))
            else:
                safe = tf.maximum(label, 0)
                onehot = tf.one_hot(safe, task.num_outputs)
                if self.label_smoothing:
                    onehot = onehot * (1.0 - self.label_smoothing) + self.label_smoothing / task.num_outputs
                per_example = tf.nn.softmax_cross_entropy_with_logits(onehot, out)
                if task.name in self.class_weights:
                    per_example *= tf.gather(self.class_weights[task.name], safe)
            losses[task.name] = tf.reduce_sum(per_example * valid) / global_batch
        return losses

    def center_loss(self, embedding: tf.Tensor, labels: tf.Tensor, global_batch: int) -> tf.Tensor:
        if self.centers is None:
            return tf.constant(0.0)
        label = labels[:, self.center_task]
        valid = tf.cast(label >= 0, tf.float32)
        centers = tf.gather(self.centers, tf.maximum(label, 0))
        per_example = 0.5 * tf.reduce_sum(tf.square(tf.cast(embedding, tf.float32) - centers), axis=-1)
        return tf.reduce_sum(per_example * valid) / global_batch

    def update_centers(self, embedding: tf.Tensor, labels: tf.Tensor) -> None:
        """c_j <- c_j - alpha * mean over the batch's class-j examples of (c_j - x_i)."""
        if self.centers is None:
            return
        label = labels[:, self.center_task]
        keep = label >= 0
        label = tf.boolean_mask(label, keep)
        embedding = tf.boolean_mask(tf.cast(embedding, tf.float32), keep)
        n = self.tasks[self.center_task].num_outputs
        diff = tf.gather(self.centers, label) - embedding
        sums = tf.math.unsorted_segment_sum(diff, label, n)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(label, tf.float32), label, n)
        self.centers.assign_sub(self.center_alpha * sums / (1.0 + counts[:, None]))

    def data_loss(self, outputs: dict, labels: tf.Tensor, global_batch: int) -> tuple[tf.Tensor, dict]:
        parts = self.task_losses(outputs, labels, global_batch)
        total = tf.add_n([task.weight * parts[task.name] for task in self.tasks])
        if self.centers is not None:
            parts["center"] = self.center_loss(outputs["embedding"], labels, global_batch)
            total += self.center_loss_weight * parts["center"]
        return total, parts


def _smooth_l1(prediction: tf.Tensor, target: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    error = tf.abs(prediction - target)
    return tf.where(error < delta, 0.5 * tf.square(error) / delta, error - 0.5 * delta)


def l2_penalty(variables: list, weight_decay: float) -> tf.Tensor:
    """0.5 * wd * sum ||w||^2, whose gradient is wd * w (classic L2 weight decay)."""
    if not variables or weight_decay <= 0:
        return tf.constant(0.0)
    return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
