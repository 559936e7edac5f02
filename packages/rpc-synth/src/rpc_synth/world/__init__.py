"""The embedded mini world: a procedural dataset in exactly the RPC layout, deterministic by seed.

``DIR/train2019/`` exemplars (one product on a light turntable, every camera elevation x azimuth; with
``turntable="textured"`` a wood-like surface, vignetting and the product's cast shadow: a harder catalogue),
``DIR/val2019/`` and ``DIR/test2019/`` checkout images (a tray of products, another domain), the three
``instances_*2019.json`` files, ``DIR/pool2019/`` with ``instances_pool2019.json`` (unlabeled checkout photos, the
distillation pool a store would have: no annotations), and two folders no pipeline stage reads:
``DIR/exemplar_masks_true/`` (true exemplar masks and view metadata, to measure mask quality and pose pruning)
and ``DIR/pool_truth/`` (the pool's labels, to measure pseudo-label selection).

Two styles of checkout domain: ``gap`` (the default; :mod:`rpc_synth.checkout_camera`: a camera above the
tray, products lying, leaning and piled, an overhead lamp, a woven tray, a shop camera, each photometric
effect scaled by ``gap``) and ``legacy`` (the world of earlier releases: oblique views, the studio's light on
the products, a plain tray and a mild camera; its images are byte-identical to those releases').

This package holds one job per module: :mod:`~rpc_synth.world.config` (the settings, the catalog, the random
streams), :mod:`~rpc_synth.world.draw` (drawing one image), :mod:`~rpc_synth.world.lookalikes` (how hard the
look-alikes are) and :mod:`~rpc_synth.world.build` (writing the folder); their public names are importable from
``rpc_synth.world``.
"""

from .build import (
    POOL_TRUTH,
    TRUE_MASKS,
    build_world,
    checkout_file_name,
    checkout_jpeg_quality,
    exemplar_file_name,
    mark_degenerate,
    world_summary,
)
from .config import (
    SPLIT_CODES,
    STYLE_DEFAULTS,
    STYLES,
    TURNTABLES,
    DomainShift,
    WorldConfig,
    catalog,
    exemplar_views,
)
from .draw import TRAY_COLORS, apply_domain_shift, render_checkout, render_exemplar
from .lookalikes import lookalike_ceiling, lookalike_evidence

__all__ = [
    "POOL_TRUTH", "SPLIT_CODES", "STYLES", "STYLE_DEFAULTS", "TRAY_COLORS", "TRUE_MASKS", "TURNTABLES", "DomainShift", "WorldConfig",
    "apply_domain_shift", "build_world", "catalog", "checkout_file_name", "checkout_jpeg_quality",
    "exemplar_file_name", "exemplar_views", "lookalike_ceiling", "lookalike_evidence", "mark_degenerate",
    "render_checkout", "render_exemplar", "world_summary",
]
