"""Train the translator (synthesized -> checkout) on unpaired random crops; checkpoints and exact resume.

A checkpoint is a plain dict of tensors and numbers (``torch.save``, written atomically) that loads with
``torch.load(weights_only=True)``: ``format``, ``config`` (the ``TranslatorConfig`` fields), ``iteration``,
the four networks' and two optimizers' state dicts, and ``losses`` (mean losses per logging interval).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rpc_metrics.io import FormatError, atomic_output

from ..generate import InputError
from ..image_files import folder_images, read_image
from ..progress import Progress
from .data import SourceImages, training_batch
from .histogram import channel_histograms
from .losses import lsgan_loss, preservation_loss
from .networks import PatchDiscriminator, ResnetGenerator

CHECKPOINT_FORMAT = "rpc-synth-render/1"
# Changing these on resume is allowed (train longer, save more or less often); any other field is not.
_RESUMABLE_FIELDS = ("iters", "checkpoint_every")


@dataclass(frozen=True)
class TranslatorConfig:
    """Every setting of a training run (stored in the checkpoint)."""

    # data
    size: int = 96              # side of the random training crops, px
    batch: int = 1              # crops per iteration from each domain
    iters: int = 500            # training iterations
    seed: int = 0               # model init and crop order
    # networks
    gen_channels: int = 16      # generator width after the stem (doubles per downsampling)
    gen_blocks: int = 4         # residual blocks at the lowest resolution
    downsamplings: int = 2      # stride-2 steps in the generator
    residual: bool = True       # the generator predicts a change added to its input
    noise: bool = True          # noise injection in the generators (sensor noise needs a random input)
    noise_init: float = 2.0     # its level in grey levels (about what the mini world's JPEG checkout keeps)
    noise_learned: bool = False  # learn the level from noise_init (the adversarial loss drove it to 0.1-0.5)
    prematch: bool = True       # histogram-match source images to the target first; the translator learns the rest
    disc_channels: int = 32     # discriminator width of the first layer
    disc_layers: int = 3        # stride-2 layers of the PatchGAN (3: 70 px patches)
    # optimisation and loss weights
    lr: float = 2e-4  # CycleGAN's rate: at 5e-4 two of two seeds (all cores) painted blobs or barely moved
    cycle_weight: float = 10.0
    identity_weight: float = 2.0
    preserve_weight: float = 10.0
    background_weight: float = 2.0  # share of the preservation edge term on the tray (against painted blobs)
    colour_weight: float = 1.0      # product-colour L1 inside the preservation term (against repainting)
    checkpoint_every: int = 100  # iterations between checkpoints (and loss log lines)

    def __post_init__(self):
        for name in ("size", "batch", "iters", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} should be at least 1, got {getattr(self, name)}")
        multiple = 2 ** (self.downsamplings + 1)
        if self.size % multiple:
            raise ValueError(f"size should be a multiple of {multiple} (2 ** (downsamplings + 1)), got {self.size}")


def build_networks(config: TranslatorConfig) -> dict[str, nn.Module]:
    """The four networks, initialised from ``config.seed``: ``g_ab`` (synth -> checkout), ``g_ba``, ``d_a``, ``d_b``."""
    torch.manual_seed(config.seed)
    generator = dict(channels=config.gen_channels, blocks=config.gen_blocks, downsamplings=config.downsamplings,
                     residual=config.residual, noise=config.noise, noise_init=config.noise_init,
                     noise_learned=config.noise_learned)
    disc = dict(channels=config.disc_channels, layers=config.disc_layers)
    return {"g_ab": ResnetGenerator(**generator), "g_ba": ResnetGenerator(**generator),
            "d_a": PatchDiscriminator(**disc), "d_b": PatchDiscriminator(**disc)}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """BGR ``uint8[N, H, W, 3]`` -> RGB ``float32[N, 3, H, W]`` in [-1, 1]."""
    rgb = np.ascontiguousarray(images[..., ::-1])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """RGB ``float[N, 3, H, W]`` in [-1, 1] -> BGR ``uint8[N, H, W, 3]`` (rounded)."""
    rgb = tensor.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.ascontiguousarray(rgb[..., ::-1])


def _set_trainable(modules: list[nn.Module], flag: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)


def training_step(nets: dict[str, nn.Module], optim_g, optim_d, config: TranslatorConfig, real_a: torch.Tensor,
                  masks: torch.Tensor, real_b: torch.Tensor, noise: torch.Generator | None = None) -> dict[str, float]:
    """One CycleGAN update (generators, then discriminators); returns the losses as floats. ``noise`` draws the
    generators' injected noise (a resumed run passes the same per-iteration generator)."""
    g_ab, g_ba, d_a, d_b = nets["g_ab"], nets["g_ba"], nets["d_a"], nets["d_b"]
    _set_trainable([d_a, d_b], False)
    # The content losses (cycle, identity, preservation) see the noise-free translations; only the adversarial
    # loss sees (and so sets the scale of) the injected noise, a sensor effect that no content loss should undo.
    clean_b, clean_a = g_ab(real_a, add_noise=False), g_ba(real_b, add_noise=False)
    fake_b, fake_a = g_ab.add_noise(clean_b, noise), g_ba.add_noise(clean_a, noise)
    adversarial = lsgan_loss(d_b(fake_b), True) + lsgan_loss(d_a(fake_a), True)
    cycle = (g_ba(clean_b, add_noise=False) - real_a).abs().mean() + \
        (g_ab(clean_a, add_noise=False) - real_b).abs().mean()
    identity = torch.zeros((), device=real_a.device)
    if config.identity_weight:
        identity = (g_ab(real_b, add_noise=False) - real_b).abs().mean() + \
            (g_ba(real_a, add_noise=False) - real_a).abs().mean()
    preserve = preservation_loss(real_a, clean_b, masks, background_weight=config.background_weight,
                                 color_weight=config.colour_weight)
    total = adversarial + config.cycle_weight * cycle + config.identity_weight * identity + \
        config.preserve_weight * preserve
    optim_g.zero_grad(set_to_none=True)
    total.backward()
    optim_g.step()

    _set_trainable([d_a, d_b], True)
    fake_b, fake_a = fake_b.detach(), fake_a.detach()
    disc = 0.5 * (lsgan_loss(d_b(real_b), True) + lsgan_loss(d_b(fake_b), False)
                  + lsgan_loss(d_a(real_a), True) + lsgan_loss(d_a(fake_a), False))
    optim_d.zero_grad(set_to_none=True)
    disc.backward()
    optim_d.step()
    return {"adversarial": adversarial.item(), "cycle": cycle.item(), "identity": identity.item(),
            "preserve": preserve.item(), "discriminator": disc.item()}


def _optimizers(nets: dict[str, nn.Module], config: TranslatorConfig):
    params_g = [*nets["g_ab"].parameters(), *nets["g_ba"].parameters()]
    params_d = [*nets["d_a"].parameters(), *nets["d_b"].parameters()]
    return (torch.optim.Adam(params_g, lr=config.lr, betas=(0.5, 0.999)),
            torch.optim.Adam(params_d, lr=config.lr, betas=(0.5, 0.999)))


def _to_cpu(value):
    """A state dict with every tensor on the CPU (a checkpoint written on a GPU loads anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def save_checkpoint(path: str | Path, nets, optim_g, optim_d, config: TranslatorConfig, iteration: int,
                    losses: list[dict], target_histograms: np.ndarray | None = None) -> None:
    """Write the training state to ``path`` atomically (a killed run leaves the previous checkpoint)."""
    state = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(config), "iteration": iteration,
             "networks": {name: _to_cpu(net.state_dict()) for name, net in nets.items()},
             "optim_g": _to_cpu(optim_g.state_dict()), "optim_d": _to_cpu(optim_d.state_dict()), "losses": losses}
    if target_histograms is not None:
        state["target_histograms"] = torch.from_numpy(np.asarray(target_histograms, dtype=np.int64))
    # Through a Python file: a failed write (a full disk) is an OSError naming the file, not torch's RuntimeError,
    # and the bytes do not depend on the temporary file's name.
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code runs); a file of another kind is a ``FormatError``."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(str(path), "", "model file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a file that is not a checkpoint
        raise FormatError(str(path), "", f"not a readable torch checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(str(path), "format", f"not an rpc-synth render checkpoint (expected {CHECKPOINT_FORMAT})")
    return state


def config_from_checkpoint(state: dict, source: str = "<checkpoint>") -> TranslatorConfig:
    # Checkpoints from before noise injection and pre-matching were trained without them, and those from before
    # the fixed noise level learned it.
    saved = {"noise": False, "prematch": False, "noise_learned": True, **state["config"]}
    try:
        return TranslatorConfig(**saved)
    except (TypeError, ValueError) as err:
        raise FormatError(source, "config", str(err)) from None


def load_generator(path: str | Path) -> nn.Module:
    """The synth -> checkout generator of a checkpoint, in eval mode."""
    return load_translator(path)[0]


def load_translator(path: str | Path) -> tuple[nn.Module, np.ndarray | None]:
    """``(generator in eval mode, target histograms int64[3, 256] or None)``: with pre-matching, images are
    histogram-matched to those counts before the generator sees them."""
    state = load_checkpoint(path)
    config = config_from_checkpoint(state, str(path))
    nets = build_networks(config)
    nets["g_ab"].load_state_dict(state["networks"]["g_ab"])
    counts = state.get("target_histograms")
    if config.prematch and counts is None:
        raise FormatError(str(path), "target_histograms", "missing for a translator trained with pre-matching")
    return nets["g_ab"].eval(), (counts.numpy() if config.prematch else None)


def _resume_state(out: Path, config: TranslatorConfig):
    if not out.exists():
        return None
    state = load_checkpoint(out)
    saved = config_from_checkpoint(state, str(out))
    changed = [f.name for f in dataclasses.fields(config) if f.name not in _RESUMABLE_FIELDS
               and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise InputError(f"{out}: resuming with other settings ({', '.join(changed)}); "
                         "use the same settings or another --out")
    return state


def train_translator(source_images: str | Path, source_ann: str | Path, target_images: str | Path,
                     out: str | Path, config: TranslatorConfig = TranslatorConfig(), *,
                     threads: int | None = None, device: str = "cpu", progress: bool = True) -> dict:
    """Train on crops of ``source_images`` (listed in ``source_ann``, masks from its RLE) and ``target_images``.

    The target folder's labels, if any, are never read. Resumes from ``out`` when it exists with the same
    settings (on any device: checkpoints hold CPU tensors). ``threads`` sets torch's CPU threads for the run
    (on a busy machine 1 is often fastest); ``device``: ``cpu``, ``cuda[:N]`` or ``auto``. The crops and the
    injected noise are drawn on the CPU from the seed, so a GPU run sees the same data; its arithmetic differs
    in rounding only. Returns ``{"iteration", "losses"}``.
    """
    from . import resolve_device

    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(source_images, source_ann, target_images, Path(out), config, progress, dev)
    finally:
        torch.set_num_threads(previous_threads)


def _train(source_images, source_ann, target_images, out: Path, config: TranslatorConfig, progress: bool,
           device: torch.device) -> dict:
    target = folder_images(target_images)
    counts = channel_histograms(read_image(p) for p in target) if config.prematch else None
    source = SourceImages.open(source_images, source_ann, match=counts)
    state = _resume_state(out, config)
    nets = {name: net.to(device) for name, net in build_networks(config).items()}
    optim_g, optim_d = _optimizers(nets, config)
    start, losses = 0, []
    if state is not None:
        for name, net in nets.items():
            net.load_state_dict(state["networks"][name])
        optim_g.load_state_dict(state["optim_g"])
        optim_d.load_state_dict(state["optim_d"])
        start, losses = state["iteration"], list(state["losses"])
    for net in nets.values():
        net.train()
    bar = Progress(max(config.iters - start, 0), f"rpc-synth render train (from iteration {start})",
                   unit="iters", enabled=progress)
    window: list[dict] = []
    for iteration in range(start, config.iters):
        src, masks, tgt = training_batch(config.seed, iteration, source, target, config.size, config.batch)
        noise = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)
        window.append(training_step(nets, optim_g, optim_d, config, to_tensor(src).to(device),
                                    torch.from_numpy(masks).float().unsqueeze(1).to(device),
                                    to_tensor(tgt).to(device), noise))
        bar.update()
        done = iteration + 1
        if done % config.checkpoint_every == 0 or done == config.iters:
            means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            losses.append({"iteration": done, **means})
            window = []
            save_checkpoint(out, nets, optim_g, optim_d, config, done, losses, counts)
            bar.note("  " + " ".join(f"{k}={v:.4g}" for k, v in losses[-1].items()))
    return {"iteration": max(config.iters, start), "losses": losses}
