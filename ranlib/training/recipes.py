"""Recipes: the paper's training schedules, the profiles that scale them to a budget, and the large-batch rule.

This module holds the schedules and budgets every run starts from (``RECIPES``, ``PROFILES``), the
rule that rescales a schedule to another batch size (:func:`scaled_schedule`), the lr schedule
object the loop steps (:class:`WarmupStepLR`), and the lookup of a model's family
(:func:`model_info`); :mod:`ranlib.training.config` turns them into a run's settings.

Recipes (Section 4.1 and 4.2 of the paper):

* CIFAR: Nesterov SGD, momentum 0.9, weight decay 1e-4, batch 64, lr 0.1 divided by 10 at 64k
  and 96k iterations, stop at 160k (about 205 epochs); the final iterate is evaluated.
* ImageNet: SGD momentum 0.9, lr 0.1 divided by 10 at 200k/400k/500k, stop at 530k. The paper
  gives neither batch size nor weight decay: ranlib uses batch 256 and weight decay 1e-4 (the
  values of the ResNet recipes the paper builds on) and plain (not Nesterov) momentum, since only
  the CIFAR section names Nesterov.

Large-batch rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): at a batch size B other than
the recipe's B0, lr = lr0 * B / B0 (linear scaling), the iteration count and the lr milestones are
multiplied by B0 / B so the number of epochs stays the same, and when B > B0 the lr rises linearly
from lr/warmup to lr over the first 5 epochs' worth of iterations (gradual warm-up). Explicit
``lr``/``iterations``/``milestones``/``warmup_iterations`` override the rule; the resolved values
and a one-line ``schedule_rule`` are recorded in every results file.

Profiles scale the whole schedule to a budget: ``paper`` is the recipe itself; ``quick`` is a
tenth of the CIFAR schedule (a hundredth of ImageNet's) at a GPU-friendly batch with the
large-batch rule; ``smoke`` is a few iterations on a tiny subset, seconds on a CPU.

Imagewoof (``dataset="imagewoof"``) has a recipe and profiles of its own (``RECIPES`` and
``PROFILES`` are keyed by the dataset there, by the model's family "cifar"/"imagenet" otherwise):
the ImageNet recipe's optimiser and the shape of its step schedule (lr / 10 at 200k/530k,
400k/530k and 500k/530k of the run), 20 epochs of Imagewoof's 9,025 training images at batch 256
and lr 0.1 (Goyal et al.'s 0.1 per 256 images), with a linear warm-up over the first 2 epochs even
at the reference batch (a from-scratch run this short has no easy first epochs to spare).
There is no ``paper`` budget for it: the paper never trained on Imagewoof. Why these numbers:
``ranlib.models.choices.OPEN_CHOICES`` ("Imagewoof recipe").
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ranlib.errors import UnknownNameError

# The paper's CIFAR training recipe (Section 4.1).
CIFAR_RECIPE = dict(
    batch_size=64, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
    milestones=(64_000, 96_000), iterations=160_000,
)
# The paper's ImageNet training recipe (Section 4.2); batch size and weight decay are not given.
IMAGENET_RECIPE = dict(
    lr=0.1, momentum=0.9, milestones=(200_000, 400_000, 500_000), iterations=530_000,
)


@dataclass(frozen=True)
class Recipe:
    """A training schedule at its reference batch size."""

    name: str
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    iterations: int
    milestones: tuple[int, ...]
    nominal_train_size: int  # images per epoch, to express the warm-up in epochs
    warmup_epochs: float = 5.0  # Goyal et al. 2017, used only when batch_size > the reference
    warmup_at_reference: bool = False  # warm up at the reference batch too (not only above it)


IMAGEWOOF_TRAIN_IMAGES = 9_025  # fast.ai's official Imagewoof2 train split: one epoch
IMAGEWOOF_EPOCHS = 20  # the quick profile's length; fast.ai's leaderboard also reports 20 epochs
IMAGEWOOF_BATCH = 256


def _imagewoof_recipe() -> Recipe:
    """The ImageNet recipe's optimiser and schedule shape, 20 epochs of Imagewoof at batch 256."""
    iterations = round(IMAGEWOOF_EPOCHS * IMAGEWOOF_TRAIN_IMAGES / IMAGEWOOF_BATCH)
    reference = IMAGENET_RECIPE
    milestones = tuple(round(iterations * m / reference["iterations"]) for m in reference["milestones"])
    return Recipe("imagewoof", batch_size=IMAGEWOOF_BATCH, lr=0.1 * IMAGEWOOF_BATCH / 256,
                  momentum=reference["momentum"], nesterov=False, weight_decay=1e-4, iterations=iterations,
                  milestones=milestones, nominal_train_size=IMAGEWOOF_TRAIN_IMAGES, warmup_epochs=2.0,
                  warmup_at_reference=True)


RECIPES = {
    "cifar": Recipe("cifar", nominal_train_size=50_000, **CIFAR_RECIPE),
    "imagenet": Recipe("imagenet", batch_size=256, weight_decay=1e-4, nesterov=False,
                       nominal_train_size=1_281_167, **IMAGENET_RECIPE),
    "imagewoof": _imagewoof_recipe(),
}


@dataclass(frozen=True)
class Profile:
    """A budget: batch size, the fraction of the (batch-scaled) schedule, subset sizes."""

    batch_size: int
    fraction: float = 1.0
    iterations: int | None = None  # absolute length (smoke runs); milestones keep the recipe's ratios
    eval_points: int = 20  # test-set evaluations over the run (learning curve only)
    checkpoint_every: int = 2000
    log_every: int = 100
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    train_size: int | None = None  # crop size (Imagewoof: default IMAGEWOOF_SIZE)
    cpu_batches: tuple[int, ...] | None = None  # on a CPU: the fastest of these, measured (ranlib.training.cpu_batch)


CPU_BATCHES = (64, 128, 256)  # the batches measured on the project's CPU (ranlib.training.cpu_batch)
PROFILES: dict[str, dict[str, Profile]] = {
    "cifar": {
        "smoke": Profile(batch_size=8, iterations=6, eval_points=2, checkpoint_every=3, log_every=1,
                         max_train_samples=64, max_test_samples=32),
        "quick": Profile(batch_size=256, fraction=0.1, eval_points=10, checkpoint_every=1000, log_every=50,
                         cpu_batches=CPU_BATCHES),
        "paper": Profile(batch_size=64, eval_points=40, checkpoint_every=4000, log_every=100),
        # The paper's epochs (about 205) at a larger batch under the large-batch rule: what a short
        # GPU lease can finish. A GPU sitting picks the smallest batch that does (ranlib.campaign.sitting).
        "full": Profile(batch_size=512, eval_points=20, checkpoint_every=1000, log_every=100),
    },
    "imagenet": {
        "smoke": Profile(batch_size=4, iterations=4, eval_points=1, checkpoint_every=2, log_every=1,
                         max_train_samples=16, max_test_samples=8),
        "quick": Profile(batch_size=256, fraction=0.01, eval_points=5, checkpoint_every=1000, log_every=50),
        "paper": Profile(batch_size=256, eval_points=53, checkpoint_every=5000, log_every=100),
    },
    "imagewoof": {
        "smoke": Profile(batch_size=4, iterations=4, eval_points=1, checkpoint_every=2, log_every=1,
                         max_train_samples=20, max_test_samples=10, train_size=64),
        "quick": Profile(batch_size=IMAGEWOOF_BATCH, eval_points=5, checkpoint_every=200, log_every=35),
    },
}


def schedule_key(model: str, dataset: str) -> str:
    """Which ``RECIPES``/``PROFILES`` entry a run uses: the dataset's own when it has one
    (Imagewoof), else the model's family ("cifar" or "imagenet")."""
    return dataset if dataset in RECIPES else model_info(model).dataset


def scaled_schedule(recipe: Recipe, batch_size: int, fraction: float = 1.0,
                    iterations: int | None = None) -> dict:
    """The large-batch rule: lr, iterations, milestones and warm-up for ``batch_size``.

    ``fraction`` shortens the scaled schedule (profiles); ``iterations`` fixes its length. The
    milestones and the warm-up keep their share of the schedule in both cases.
    """
    k = batch_size / recipe.batch_size
    full = recipe.iterations / k
    total = int(iterations) if iterations is not None else max(1, round(full * fraction))
    milestones = [round(total * m / recipe.iterations) for m in recipe.milestones]
    warmup_share = recipe.warmup_epochs * recipe.nominal_train_size / (recipe.iterations * recipe.batch_size)
    warmup = round(total * warmup_share) if k > 1 or recipe.warmup_at_reference else 0
    return {"lr": recipe.lr * k, "iterations": total, "milestones": milestones, "warmup_iterations": warmup}


class WarmupStepLR:
    """lr factor at an iteration: linear warm-up to 1, then ``decay`` per milestone passed.

    A callable object (not a lambda) so ``LambdaLR.state_dict`` stores it.
    """

    def __init__(self, milestones, decay: float = 0.1, warmup_iterations: int = 0):
        self.milestones = sorted(int(m) for m in milestones)
        self.decay = decay
        self.warmup_iterations = int(warmup_iterations)

    def __call__(self, iteration: int) -> float:
        factor = self.decay ** bisect.bisect_right(self.milestones, iteration)
        if iteration < self.warmup_iterations:
            factor *= (iteration + 1) / self.warmup_iterations
        return factor


def model_info(name: str):
    """The model's registry facts (``ranlib.models.model_info``); an unknown name raises UnknownNameError."""
    from ranlib import models
    try:
        return models.model_info(name)
    except models.UnknownModelError as exc:
        raise UnknownNameError(str(exc)) from None
