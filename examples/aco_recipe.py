"""The demo's recipe (sizes, steps, settings; QUICK for the tests) and where every file of a run lives.

The reasons for the defaults are one line each here; the measurements behind them are in docs/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aco_stages import InputError

from rpc_metrics.io import read_instances


@dataclass(frozen=True)
class Recipe:
    """Sizes, steps and settings of a run. The defaults are the full demo (measured times: README and
    docs/RESULTS.md); a CPU without bfloat16 units (AMX or AVX512-BF16) trains about 1.4x slower."""

    seed: int = 0
    workers: int = 2
    threads: int = 0  # CPU threads per command (0: all cores; the demo runs alone); 1 on a CPU shared with other jobs
    # The world: built by `rpc-synth world` with these options, or read from an RPC-layout folder.
    rpc_root: Path | None = None
    world_args: tuple[str, ...] = ()
    refine_px: int = 400
    # Synthesis and rendering.
    synth_images: int = 800
    heldout_images: int = 100
    synth_size: int | None = None
    synth_args: tuple[str, ...] = ()  # more `rpc-synth generate` options for both synthesized sets
    # Product scale, objects per tray and overlap fitted to the val split's boxes (`rpc-synth fit`): generate's
    # defaults suit one world only.
    fit_synthesis: bool = True
    # Distil on the test images themselves, as the paper does (transductive), instead of the world's unlabeled
    # pool (pool2019/); forced when the data has no pool.
    transductive: bool = False
    # The distillation's two same-compute controls (random pseudo-labels; as many more steps on synthesized data),
    # run after the other stages and compared with the last round in the report.
    controls: bool = False
    # How Syn+Render's images are rendered toward the checkout domain (`rpc-synth render apply --method`):
    # "camera" (histogram matching, then blur, sensor noise and JPEG fitted to the unlabeled checkout photos: what
    # lifted Syn+Render above Syn on the gap world) or "cyclegan" (the translator, render_iters iterations on
    # render_crop px crops: it leaves blur and noise out).
    render_method: str = "camera"
    render_iters: int = 400
    render_crop: int = 96
    render_images: int | None = None  # translate only the first N synthesized images (None: all)
    measure_images: int | None = 200  # the rendering's domain gap measured on the first N translated images
    # Backbone: `dpsnet pretrain` steps on synthesized product crops (0: none) or a weights file (ImageNet for
    # the ResNets); the stand-in for ImageNet weights on a CPU.
    pretrain_steps: int = 3000
    pretrain_batch: int = 64
    pretrain_camera: float = 0.5  # share of the crops with camera effects (checkout crops named right +2.7 points)
    # Pair specialists: a two-class classifier for each SKU pair the crop classifier confuses on its held-out
    # crops (look-alikes); 1200 steps keeps the demo's time (2000 named the pairs' crops 1-5 points better).
    pretrain_specialist_steps: int = 1200
    backbone_weights: Path | None = None
    # The crop classifier (and specialists) re-score every detection (None or 0: off; with `dpsnet pretrain`
    # weights only); power 2 was the val choice among 0.5, 1, 2.
    reclassify_power: float | None = 2.0
    # DPSNet source models: the steps decide, not the clock (0 minutes: no time limit; None: the preset's), so a
    # slower machine makes the same models later instead of worse ones.
    preset: str = "cpu-small"
    source_steps: int | None = 500
    # A shared trunk trained on Syn that every source model fine-tunes for `source_steps` at `source_branch_lr`:
    # each sees trunk + branch steps for the price of one trunk (the detector underfits on this budget).
    source_trunk_steps: int = 1500
    source_branch_lr: float = 0.01
    source_minutes: float | None = 0.0
    dpsnet_set: tuple[str, ...] = ()
    nproc: int = 1
    # kd-loop.
    kd_rounds: int = 3
    kd_steps: int | None = 400
    kd_minutes: float | None = 0.0  # no time limit: the steps decide (as for the source models)
    # Students fine-tune their teacher at half the preset's peak rate, short warmup (0.005 ended lower on two
    # source models; 0.002 was no better on the gap world).
    kd_lr: float | None = 0.01
    # The paper's policy: an image is pseudo-labelled when the counting view agrees with its detections (in total:
    # the preset's one-class counter), its detections from 0.02 up that miss the threshold becoming ignore regions.
    # The threshold is calibrated each round on the labelled val split to the teacher's 95% box precision (scores
    # drift between rounds and worlds), and kd-loop scales the counter to the val counts and tops up with the
    # images closest to agreement when fewer than a tenth of the pool agree (its defaults).
    kd_set: tuple[str, ...] = ('selection.policy="image+instance"', "selection.target_precision=0.95",
                               "selection.ignore_threshold=0.02")
    # Report.
    vis_images: int = 3
    # Stage budgets in seconds, for the progress/ETA lines and the report (measured on a 2-core CPU, one thread;
    # train_step: a cpu-small step of 4 images in float32 on a 2-core AMD EPYC, 0.14 s there under bfloat16);
    # a training stage's budget is startup + steps x train_step, at most its time limit.
    budgets: dict[str, float] = field(default_factory=lambda: {
        "world": 30, "masks": 20, "poses": 2, "synth_fit": 30, "synth": 20, "synth_heldout": 5, "pretrain": 440,
        "checkout_unlabeled": 2, "render_train": 120, "render_apply": 75, "render_camera": 60, "histogram": 10,
        "render_measure": 20,
        "startup": 5,
        "train_step": 0.22, "predict_per_model": 40, "kd_predict_per_round": 70, "visualize": 15, "bundle": 10})


QUICK = Recipe(
    workers=1, world_args=("--skus", "10", "--lookalike-pairs", "2", "--azimuths", "4", "--exemplar-size", "160",
                           "--size", "256", "--val", "6", "--test", "6", "--pool", "6"),
    refine_px=160, synth_images=24, heldout_images=6, synth_size=256, render_iters=8, render_crop=48,
    pretrain_steps=20, pretrain_batch=16, source_trunk_steps=12, source_steps=8, kd_steps=8,
    # No pair specialists: a 20-step classifier confuses every pair, and re-scoring with them would triple the time.
    pretrain_specialist_steps=0,
    # A 20-step model rarely scores 0.8: low thresholds so that every round selects and trains.
    kd_set=("selection.policy=\"instance\"", "selection.thresholds=[0.05]", "selection.ignore_threshold=0.05"),
    # The quick world's images are 256 px: train and predict at that size, not the preset's 384.
    dpsnet_set=("train.warmup_steps=5", "train.log_every=10", "data.epoch_size=16", "model.min_size=[256]",
                "model.max_size=256"),
    vis_images=2,
    budgets={"world": 2, "masks": 2, "poses": 1, "synth_fit": 5, "synth": 1, "synth_heldout": 1, "pretrain": 4,
             "checkout_unlabeled": 1, "render_train": 4, "render_apply": 5, "render_camera": 5, "histogram": 1,
             "render_measure": 2,
             "startup": 5,
             "train_step": 0.33, "predict_per_model": 3, "kd_predict_per_round": 1, "visualize": 6, "bundle": 3},
)

SOURCE_MODELS = (("syn", "Syn", ("synth",)), ("hist", "Syn+histogram", ("synth", "histogram")),
                 ("render", "Syn+Render", ("synth", "render")))


@dataclass(frozen=True)
class Layout:
    """Where every file of a run lives. A given RPC-layout folder may lack val (held-out synthesized images stand
    in: thresholds and calibration come from them) and test labels (the report then shows no accuracy rows);
    ``checkout``, a folder of unlabeled checkout photos, is then the distillation pool."""

    out: Path
    rpc_root: Path | None = None
    checkout: Path | None = None

    @property
    def world(self) -> Path:
        return self.rpc_root if self.rpc_root is not None else self.out / "world"

    def split(self, name: str) -> tuple[Path, Path]:
        """(instances JSON, image folder) of the world's ``train``, ``val``, ``test`` or ``pool`` split; ``val`` is
        the held-out synthesized set when the data has no val split, ``pool`` indexes ``checkout`` when given."""
        if name == "pool" and self.checkout is not None:
            return self.out / "pool" / "instances_pool2019.json", self.checkout
        if name == "val" and not self.has_split("val"):
            return self.dataset("synth_heldout")
        return self.world / f"instances_{name}2019.json", self.world / f"{name}2019"

    def has_split(self, name: str) -> bool:
        """Whether the data itself has this split (a generated world has every one)."""
        if self.rpc_root is None:
            return True
        return all(path.exists() for path in (self.world / f"instances_{name}2019.json", self.world / f"{name}2019"))

    def calibration_name(self) -> str:
        """What chooses thresholds, the source model and kd-loop's calibration: the val split, else held-out
        synthesized images."""
        return "the val split" if self.has_split("val") else "held-out synthesized images (the data has no val split)"

    def has_pool(self) -> bool:
        """Whether the data has an unlabeled pool of checkout photos (``pool2019/`` or ``checkout``), known once the
        world exists."""
        return self.checkout is not None or all(path.exists() for path in self.split("pool"))

    def pool_truth(self) -> Path | None:
        """The pool's labels (the mini world writes them apart, for measuring the selection only), if any."""
        path = self.world / "pool_truth" / "instances_pool2019.json"
        return path if self.checkout is None and path.is_file() else None

    def dataset(self, name: str) -> tuple[Path, Path]:
        """(instances JSON, image folder) of a made training set: synth, synth_heldout, histogram, render."""
        if name in ("synth", "synth_heldout"):
            return self.out / name / "instances_synth2019.json", self.out / name / "synth2019"
        return self.out / name / "instances_render2019.json", self.out / name / "render2019"

    def model(self, key: str) -> Path:
        return self.out / "models" / key

    def predictions(self, key: str, split: str) -> tuple[Path, Path]:
        """A source model's results and counts files on ``split`` (``val``: the held-out set's when there is no val
        split, as :meth:`split` stands in)."""
        if split == "val" and not self.has_split("val"):
            split = "synth_heldout"
        return self.model(key) / f"results_{split}.json", self.model(key) / f"counts_{split}.json"


def check_rpc_root(root: Path, checkout: Path | None = None) -> None:
    """An RPC-layout folder needs train; val and test are optional (each whole or absent), and without test labels
    and a pool there is nothing to distil on. Name what is missing and how to fix it."""
    layout = ("expected the RPC layout (train2019/ and instances_train2019.json; optionally val2019/, test2019/ "
              "with their instances_*.json)")
    for split in ("train", "val", "test"):
        paths = (root / f"instances_{split}2019.json", root / f"{split}2019")
        missing = [path.name for path in paths if not path.exists()]
        if (split == "train" and missing) or len(missing) == 1:
            raise InputError(f"--rpc-root {root}: {missing[0]} not found; {layout}")
        if not missing:
            read_instances(paths[0], require_levels=split != "train")
    if checkout is not None and not checkout.is_dir():
        raise InputError(f"--checkout {checkout}: not a folder; give a folder of unlabeled checkout photos")
    has_test = (root / "instances_test2019.json").exists()
    if not has_test and checkout is None and not (root / "pool2019").is_dir():
        raise InputError(f"--rpc-root {root}: no test split and no unlabeled photos to distil on; give --checkout DIR "
                         "(a folder of checkout photos) or a test split")
