"""The numbers of Ioffe & Szegedy (2015), arXiv:1502.03167v3, each written once.

Configs read them through the `${paper:NAME}` resolver (bn_repro.compose) and the report reads
them from here. What the paper leaves open is not here: those choices live in configs/, each
with its source beside it.
"""

from dataclasses import dataclass

# Sec. 4.2: SGD with momentum on mini-batches of 32. One "training step" of Figures 2 and 3
# is one such update, so 32 images is also our unit of training length ("paper steps").
BATCH_SIZE = 32

# Sec. 4.2.2: Inception's initial learning rate; BN-x5 and BN-x30 raise it 5x and 30x.
BASE_LR = 0.0015
LEARNING_RATES = {
    "inception": 0.0015,
    "bn_baseline": 0.0015,  # "Same as Inception with Batch Normalization ..."
    "bn_x5": 0.0075,
    "bn_x30": 0.045,
    "bn_x5_sigmoid": 0.0075,  # "Like BN-x5, but with sigmoid nonlinearity"
}

# Sec. 4.2.3: the original Inception used dropout with probability 40%.
DROPOUT = 0.4


@dataclass(frozen=True)
class Acceleration:
    """Sec. 4.2.1 "Accelerating BN Networks", the changes BN-x5, BN-x30 and BN-x5-Sigmoid make."""

    dropout: float = 0.0  # "Remove Dropout": its probability becomes 0
    l2_divisor: float = 5.0  # "Reduce the L2 weight regularization ... by a factor of 5"
    decay_speedup: float = 6.0  # "Accelerate the learning rate decay ... 6 times faster"
    lrn: bool = False  # "Remove Local Response Normalization"
    shuffle: str = "thorough"  # "Shuffle training examples more thoroughly" (within shards)
    photometric: str = "reduced"  # "Reduce the photometric distortions"


SEC_4_2_1 = Acceleration()

# Fig. 3 and Sec. 4.2.2: Inception reached its maximum after 31.0M steps; BN-x30 reached its
# maximum (74.8%) "after 6*10^6 training steps".
INCEPTION_PEAK_STEPS = 31.0e6
BN_X30_PEAK_STEPS = 6.0e6

# Sec. 4.2.2: Inception with the sigmoid and without BN "never achieves better than 1/1000
# accuracy", chance on ILSVRC2012's 1000 classes.
SIGMOID_INCEPTION_MAX_TOP1 = 1 / 1000


@dataclass(frozen=True)
class Ensemble:
    """Sec. 4.2.3, the BN-Inception ensemble of Fig. 4: "Each was based on BN-x30, modified via
    some of the following: increased initial weights in the convolutional layers; using Dropout
    (with the Dropout probability of 5% or 10%, vs. 40% for the original Inception); and using
    non-convolutional, per-activation Batch Normalization with last hidden layers of the model.
    Each network achieved its maximum accuracy after about 6*10^6 training steps. The ensemble
    prediction was based on the arithmetic average of class probabilities predicted by the
    constituent networks." Which member had which change, and how much larger the weights
    were, the paper does not say (configs/experiment/ensemble/ chooses)."""

    members: int = 6
    dropout_low: float = 0.05  # "Dropout probability of 5% or 10%"
    dropout_high: float = 0.10
    peak_steps: float = 6.0e6  # "maximum accuracy after about 6*10^6 training steps"


ENSEMBLE = Ensemble()

# Fig. 3 and Sec. 4.2.2: Inception's maximum single-crop top-1 on the ILSVRC2012 validation
# set, the accuracy every other network is timed to.
TARGET_TOP1 = 0.722


@dataclass(frozen=True)
class Figure3Row:
    label: str  # as printed in Fig. 3
    experiment: str  # our configs/experiment/ name
    steps_to_target: float | None  # training steps of 32 images; None: never reached
    max_top1: float


FIGURE_3 = (
    Figure3Row("Inception", "inception", INCEPTION_PEAK_STEPS, 0.722),
    Figure3Row("BN-Baseline", "bn_baseline", 13.3e6, 0.727),
    Figure3Row("BN-x5", "bn_x5", 2.1e6, 0.730),
    Figure3Row("BN-x30", "bn_x30", 2.7e6, 0.748),
    Figure3Row("BN-x5-Sigmoid", "bn_x5_sigmoid", None, 0.698),
)


@dataclass(frozen=True)
class Figure4Row:
    """A row of Fig. 4: errors on the 50,000 ILSVRC2012 validation images (None: "-")."""

    model: str
    resolution: int | None  # None: "variable"
    crops: int | None
    models: int | None
    top1_error: float | None
    top5_error: float | None


FIGURE_4 = (
    Figure4Row("GoogLeNet ensemble", 224, 144, 7, None, 0.0667),
    Figure4Row("Deep Image low-res", 256, None, 1, None, 0.0796),
    Figure4Row("Deep Image high-res", 512, None, 1, 0.2488, 0.0742),
    Figure4Row("Deep Image ensemble", None, None, None, None, 0.0598),
    Figure4Row("BN-Inception single crop", 224, 1, 1, 0.252, 0.0782),
    Figure4Row("BN-Inception multicrop", 224, 144, 1, 0.2199, 0.0582),
    Figure4Row("BN-Inception ensemble", 224, 144, 6, 0.201, 0.049),
)
# Fig. 4's footnote: the ensemble's top-5 error on the 100,000 ILSVRC test images (test server).
ENSEMBLE_TEST_TOP5_ERROR = 0.0482

# Sec. 4.1 and Fig. 1 (the MNIST experiment): 28x28 binary inputs, three fully connected hidden
# layers of 100 sigmoid units, a 10-way output; 50,000 steps of 60 examples each; Fig. 1(b, c)
# draw the 15th, 50th and 85th percentiles of one last-hidden-layer sigmoid input over training.
MNIST_SIDE = 28
MNIST_CLASSES = 10
FIGURE_1_HIDDEN_LAYERS = 3
FIGURE_1_HIDDEN_UNITS = 100
FIGURE_1_STEPS = 50_000
FIGURE_1_BATCH = 60
FIGURE_1_PERCENTILES = (15, 50, 85)
