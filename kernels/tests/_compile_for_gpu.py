"""Compile every kernel for an sm_90 GPU without one (triton's full pipeline, ptxas included).

Run by test_compile.py in a fresh process: kernels must be defined with TRITON_INTERPRET unset. Catches what
the interpreter cannot: type errors in loops, constexpr misuse, unsupported ops in the compiled backend.
"""

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from aco_kernels.ops import density_render, kd_loss, pyramid_fuse, roi_align

TARGET = GPUTarget("cuda", 90, 32)
KD_FWD = {"s_ptr": "*bf16", "t_ptr": "*bf16", "y_ptr": "*i64", "w_ptr": "*fp32", "loss_ptr": "*fp32",
          "stats_ptr": "*fp32", "grad_s_ptr": "*bf16", "n_cols": "i32", "stride_s": "i32", "stride_t": "i32",
          "stride_g": "i32", "inv_temp": "fp32", "temp_sq": "fp32", "kl_coef": "fp32", "alpha": "fp32",
          "ignore_index": "i32", "grad_scale": "fp32"}
KD_BWD = {"s_ptr": "*fp16", "t_ptr": "*fp16", "y_ptr": "*i64", "w_ptr": "*fp32", "stats_ptr": "*fp32",
          "grad_out_ptr": "*fp32", "grad_s_ptr": "*fp16", "n_cols": "i32", "stride_s": "i32", "stride_t": "i32",
          "stride_g": "i32", "inv_temp": "fp32", "kl_coef": "fp32", "alpha": "fp32", "ignore_index": "i32",
          "grad_scale": "fp32"}
LEVELS = ["0", "1", "2", "3", "4", "5"]


def _levels(prefix, kind):
    return {f"{prefix}{i}": kind for i in LEVELS}


PYRAMID = {**_levels("p", "*bf16"), "out_ptr": "*bf16", **_levels("h", "i32"), **_levels("w", "i32"),
           **_levels("sh", "fp32"), **_levels("sw", "fp32"), **_levels("k", "fp32"), "out_h": "i32", "out_w": "i32"}
PYRAMID_ROWS = {**PYRAMID, "num_planes": "i32"}
PYRAMID_BWD = {"g_ptr": "*bf16", **_levels("r", "*fp32"), **_levels("h", "i32"), **_levels("sh", "fp32"),
               "identity_weight": "fp32", "out_h": "i32", "out_w": "i32", "halo": "i32", "num_planes": "i32"}
PYRAMID_T = {"src_ptr": "*fp16", "dst_ptr": "*fp32", "n_keep": "i32", "t_len": "i32", "s_len": "i32",
             "scale": "fp32", "span": "i32", "weight": "fp32"}
DENSITY = {"centers_ptr": "*fp32", "sizes_ptr": "*fp32", "labels_ptr": "*i64", "batch_ptr": "*i64",
           "out_ptr": "*fp32", "num": "i32", "num_classes": "i32", "height": "i32", "width": "i32",
           "inv_stride": "fp32", "sigma_scale": "fp32", "min_sigma": "fp32", "truncate": "fp32"}


def _roi(kind):
    return {**_levels("p", kind), **_levels("h", "i32"), **_levels("w", "i32"), **_levels("s", "fp32"),
            "rois_ptr": "*fp32", "grad_out_ptr": "*fp32", "out_ptr": "*bf16", "channels": "i32", "k_min": "fp32",
            "k_max": "fp32", "canonical_level": "fp32", "log2_canonical_scale": "fp32"}


JOBS = [
    *[(kd_loss._kd_fwd_kernel, KD_FWD, {"HAS_LABELS": labels, "HAS_WEIGHTS": True, "WRITE_GRAD": write_grad,
                                         "BLOCK": 256, "ACC": tl.float32})
      for labels, write_grad in ((True, True), (True, False), (False, True))],
    (kd_loss._kd_bwd_kernel, KD_BWD, {"HAS_LABELS": True, "HAS_WEIGHTS": True, "ROW_GRAD": True, "BLOCK": 256,
                                      "ACC": tl.float32}),
    # the rows kernels with one plane per program (a GPU's configs) and with a group of planes (BLOCK_C)
    *[(pyramid_fuse._pyramid_fuse_rows_body, PYRAMID_ROWS, {"NUM_LEVELS": n, "IDENTITY": identity,
                                                            "ACC": tl.float32, "PREFETCH": prefetch,
                                                            "COARSE_PREFETCH": coarse, "BLOCK_C": planes,
                                                            "BLOCK_H": 16, "BLOCK_W": 128})
      for n, identity, planes, prefetch, coarse in ((5, 0, 1, True, False), (5, 0, 1, False, True),
                                                    (5, -1, 1, False, False), (6, 2, 1, True, True),
                                                    (1, 0, 1, True, False), (5, 0, 8, True, True),
                                                    (6, -1, 4, False, False))],
    (pyramid_fuse._pyramid_fuse_rows_body, {k: v for k, v in PYRAMID_ROWS.items() if k not in ("h4", "w4")},
     {"h4": 1, "w4": 1, "NUM_LEVELS": 5, "IDENTITY": 0, "ACC": tl.float32, "PREFETCH": True,
      "COARSE_PREFETCH": True, "BLOCK_C": 4, "BLOCK_H": 16, "BLOCK_W": 128}),
    *[(pyramid_fuse._pyramid_fuse_bwd_rows_body, {**PYRAMID_BWD, **{f"r{i}": rows for i in range(6)}},
       {"NUM_LEVELS": n, "IDENTITY": identity, "ACC": tl.float32, "PREFETCH": prefetch, "BLOCK_C": planes,
        "BLOCK_T": 64, "BLOCK_W": 64})
      for n, identity, rows, planes, prefetch in ((5, 0, "*fp32", 1, True), (5, -1, "*fp32", 1, False),
                                                  (6, 3, "*fp32", 1, True), (1, 0, "*bf16", 1, False),
                                                  (5, 0, "*fp32", 8, True), (1, 0, "*bf16", 4, True))],
    (pyramid_fuse._pyramid_fuse_bwd_rows_body, {k: v for k, v in PYRAMID_BWD.items() if k != "h4"},
     {"h4": 1, "NUM_LEVELS": 5, "IDENTITY": 0, "ACC": tl.float32, "PREFETCH": True, "BLOCK_C": 4, "BLOCK_T": 64,
      "BLOCK_W": 64}),
    *[(pyramid_fuse._interp_transpose_kernel.fn, PYRAMID_T, {"LAST_AXIS": last, "ACC": tl.float32, "BLOCK_A": 16,
                                                          "BLOCK_B": 32})
      for last in (True, False)],
    *[(density_render._density_render_kernel.fn, DENSITY, {"NORM_BLOCK": 128, "SCAN": 256, "BLOCK_H": 16,
                                                         "BLOCK_W": 128, "TILES_H": 2, "SHORT_SIDE": short})
      for short in (False, True)],
    # triton turns an int argument equal to 1 into a constant: a 1x1 map must compile too (failed on the H100)
    (density_render._density_render_kernel.fn, {k: v for k, v in DENSITY.items() if k not in ("height", "width")},
     {"height": 1, "width": 1, "NORM_BLOCK": 16, "SCAN": 16, "BLOCK_H": 32, "BLOCK_W": 32,
      "TILES_H": 1, "SHORT_SIDE": False}),
    *[(roi_align._roi_align_kernel, _roi("*fp32" if backward else "*bf16"),
       {"POOLED_H": 7, "POOLED_W": 7, "SAMPLING": sr, "ALIGNED": sr > 0, "NUM_LEVELS": levels, "DTYPE": tl.bfloat16,
        "ACC": tl.float32, "BACKWARD": backward, "BINS_FAST": bins_fast, "BLOCK_P": 64, "BLOCK_C": 64,
        "CHANNELS_LAST": backward and not bins_fast})
      for sr, levels, backward, bins_fast in [(2, 4, False, False), (2, 4, False, True), (0, 1, True, True),
                                              (2, 5, True, True), (2, 4, True, False)]],
]

failures = []
for fn, signature, constexprs in JOBS:
    try:
        triton.compile(ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
                                 constexprs=constexprs), target=TARGET)
    except Exception as exc:
        failures.append(f"{fn.__name__} {constexprs}: {type(exc).__name__}: {exc}")
if failures:
    sys.exit("\n".join(failures))
