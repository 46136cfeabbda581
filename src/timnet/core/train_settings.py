"""[train]: how a unit trains (the authors' optimiser and schedule) and this project's choices around it. Part of
`core.config` (which every caller imports it from), apart only for size."""

from __future__ import annotations

from dataclasses import dataclass, field

from .validation import check_bool, check_choice, check_range, invalid


@dataclass
class TrainSettings:
    """[train]: the authors' optimiser, batch, epochs and KFold seed, plus this project's choices
    (the step's loss, optimiser, schedule and augmentation, protocol, checkpoint policy, validation carve, early
    stopping, repeat seeds, compiling, how often the test fold's accuracy is logged)."""

    seed: int = 46  # KFold random_state of the authors
    folds: int = 10
    epochs: int = 500
    batch_size: int = 64
    lr: float = 0.001
    beta1: float = 0.93
    beta2: float = 0.98
    eps: float = 1e-8
    label_smoothing: float = 0.1
    # the one training step (`training.step`); the defaults are the authors' recipe
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    weight_decay: float = 0.0  # L2 in Adam's gradient, decoupled in AdamW's update
    class_weights: str = "none"  # none | balanced (each class weighs the same in the loss: n / (K * its count))
    lr_schedule: str = "none"  # none | step (x lr_gamma every lr_step_size epochs) | cosine (to lr_min at the last)
    lr_step_size: int = 100  # epochs between the step schedule's changes
    lr_gamma: float = 0.1  # the step schedule's factor
    lr_min: float = 0.0  # the cosine schedule's learning rate at the last epoch
    # augmentation of each training batch (`step.augment`), drawn from the unit's own generator; 0 = off (the authors')
    time_masks: int = 0  # SpecAugment time masks per utterance: spans of frames set to the utterance's mean
    time_mask_width: int = 20  # a time mask's width: 0 to this many frames, uniformly
    coefficient_masks: int = 0  # SpecAugment masks of MFCC coefficients per utterance (set to their utterance mean)
    coefficient_mask_width: int = 5  # a coefficient mask's width: 0 to this many coefficients, uniformly
    mixup: float = 0.0  # mixup's alpha: pairs of a batch mixed by lambda ~ Beta(alpha, alpha), and their losses
    # random (authors' KFold) | speaker (speaker-independent) | sentence (text-independent) | speaker-sentence (both)
    protocol: str = "random"
    # none (the authors' recipe) | speaker (each speaker's MFCCs standardised per coefficient by that speaker's own
    # frames: a test speaker's from their unlabelled test audio; `data.speaker_normalization`)
    normalize: str = "none"
    # how speakers are dealt into fewer folds than speakers: shuffled (with the seed) | contiguous (in their order)
    speaker_groups: str = "shuffled"
    checkpoint: str = "last"  # last | best-val | best-test (paper protocol, optimistic)
    val_fraction: float = 0.1  # validation carved from the training part (best-val, early stopping)
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    # torch.compile: auto (a worker's units together, of >= 1000 epochs on CPU, >= 200 on CUDA) | on | off
    compile: str = "auto"
    test_every: int = 10  # log the test fold's accuracy every N epochs and at the last (best-test: every epoch)
    recompute: str = "auto"  # recompute block activations in backward: auto (> 1 GB saved per batch) | on | off
    pack: str = "auto"  # units trained together as one batched model: auto (all on CUDA/MPS, 1 on CPU) | N
    capture: str = "auto"  # packed steps as CUDA graphs: auto (on CUDA) | on | off
    blas: str = "auto"  # CPU products: auto (the BLAS measured faster here, cached) | torch (MKL) | numpy (OpenBLAS)
    kernel: str = "auto"  # the CPU kernel (accel.cpu_kernel): auto = where the unit's products use numpy's BLAS
    seeds: list[int] = field(default_factory=list)  # extra training seeds; none = the KFold seed
    calibrate: bool = False  # temperature scaling fitted on the validation part; reports before and after

    PROTOCOLS = ("random", "speaker", "sentence", "speaker-sentence")
    CHECKPOINTS = ("last", "best-val", "best-test")
    SWITCHES = ("auto", "on", "off")  # compile, recompute, capture, kernel
    BLAS = ("auto", "torch", "numpy")
    OPTIMIZERS = ("adam", "adamw")
    CLASS_WEIGHTS = ("none", "balanced")
    LR_SCHEDULES = ("none", "step", "cosine")
    SPEAKER_GROUPS = ("shuffled", "contiguous")
    NORMALIZATIONS = ("none", "speaker")  # data.speaker_normalization

    def __post_init__(self) -> None:
        if isinstance(self.pack, int) and not isinstance(self.pack, bool):
            self.pack = str(self.pack)  # a TOML may say pack = 4
        self.validate()

    def validate(self) -> None:
        """Every setting against what it allows (a run checks again before it starts: settings may be set later)."""
        check_choice("train.protocol", self.protocol, self.PROTOCOLS)
        check_choice("train.checkpoint", self.checkpoint, self.CHECKPOINTS)
        check_choice("train.compile", self.compile, self.SWITCHES)
        check_choice("train.recompute", self.recompute, self.SWITCHES)
        check_choice("train.capture", self.capture, self.SWITCHES)
        check_choice("train.blas", self.blas, self.BLAS)
        check_choice("train.kernel", self.kernel, self.SWITCHES)
        check_choice("train.optimizer", self.optimizer, self.OPTIMIZERS)
        check_choice("train.class_weights", self.class_weights, self.CLASS_WEIGHTS)
        check_choice("train.lr_schedule", self.lr_schedule, self.LR_SCHEDULES)
        check_choice("train.speaker_groups", self.speaker_groups, self.SPEAKER_GROUPS)
        check_choice("train.normalize", self.normalize, self.NORMALIZATIONS)
        if not (self.pack == "auto" or (isinstance(self.pack, str) and self.pack.isdigit() and int(self.pack) >= 1)):
            raise invalid("train.pack", "auto or a whole number ≥ 1", self.pack)
        check_range("train.folds", self.folds, 2, integer=True)
        for key in ("epochs", "batch_size"):
            check_range(f"train.{key}", getattr(self, key), 1, integer=True)
        check_range("train.lr_step_size", self.lr_step_size, 1, integer=True)
        for key in ("seed", "patience", "test_every"):
            check_range(f"train.{key}", getattr(self, key), 0, integer=True)
        for key in ("lr", "eps"):
            check_range(f"train.{key}", getattr(self, key), 0, low_open=True)
        for key in ("beta1", "beta2", "label_smoothing"):
            check_range(f"train.{key}", getattr(self, key), 0, 1, high_open=True)
        for key in ("weight_decay", "lr_min"):
            check_range(f"train.{key}", getattr(self, key), 0)
        check_range("train.lr_gamma", self.lr_gamma, 0, 1, low_open=True)
        for key in ("time_masks", "time_mask_width", "coefficient_masks", "coefficient_mask_width"):
            check_range(f"train.{key}", getattr(self, key), 0, integer=True)
        check_range("train.mixup", self.mixup, 0)
        check_range("train.val_fraction", self.val_fraction, 0, 0.5, low_open=True, high_open=True)
        check_bool("train.calibrate", self.calibrate)
        if not isinstance(self.seeds, (list, tuple)):
            raise invalid("train.seeds", "a list of seeds", self.seeds)
        for i, seed in enumerate(self.seeds):
            check_range(f"train.seeds[{i}]", seed, 0, integer=True)

    @property
    def optimistic(self) -> bool:
        """best-test picks each fold's epoch on its test data: the paper's protocol, optimistic."""
        return self.checkpoint == "best-test"

    @property
    def checkpoint_label(self) -> str:
        """The policy as every output names it (workbooks, summary, CLI)."""
        return (
            f"{self.checkpoint} (OPTIMISTIC: epoch picked on the test fold, the paper's protocol)"
            if self.optimistic
            else self.checkpoint
        )

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]
