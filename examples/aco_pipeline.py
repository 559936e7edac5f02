"""The ACO toolkit's main job on the embedded default (called by `make demo`).

Today the pipeline's first landed stage is the evaluation: this script generates an RPC-like checkout case
(ground truth with levels, and the results of a *simulated* detector: jittered true boxes, misses, category
confusions and low-scoring false positives), then evaluates it the honest way (threshold chosen on a
validation case, applied to the test case) with the oracle numbers beside it, as papers report them.
Later stages (mini world, synthesis, DPSNet, distillation) plug in here as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from rpc_metrics import evaluate
from rpc_metrics.io import write_json
from rpc_metrics.synthetic import make_case


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Folder for the case files and the report.")
@click.option("--images", type=int, default=6000, show_default=True, help="Checkout images in the test case.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated cases.")
@click.option("--quick", is_flag=True, help="Tiny sizes (a few seconds).")
def main(out: Path, images: int, seed: int, quick: bool) -> None:
    """Generate an RPC-like case and print its evaluation table (transfer and oracle protocols)."""
    if quick:
        images = 300
    start = time.perf_counter()
    click.echo(f"[1/3] generating RPC-like val ({images // 4} images) and test ({images} images) cases ...", err=True)
    val_gt, val_results = make_case(images // 4, 200, seed=seed + 1)
    test_gt, test_results = make_case(images, 200, seed=seed)
    paths = {name: out / f"{name}.json" for name in ("val_gt", "val_results", "test_gt", "test_results")}
    for name, obj in zip(paths, (val_gt, val_results, test_gt, test_results), strict=True):
        write_json(obj, paths[name])
    click.echo("[2/3] evaluating (transfer: threshold from val; oracle: chosen on test) ...", err=True)
    transfer = evaluate(paths["test_results"], paths["test_gt"], protocol="transfer",
                        val_results=paths["val_results"], val_gt=paths["val_gt"], method="simulated")
    oracle = evaluate(paths["test_results"], paths["test_gt"], protocol="oracle", method="simulated")
    report = "\n\n".join(["# rpc-metrics on a generated RPC-like case (simulated detector)",
                          transfer.to_markdown(), oracle.to_markdown(),
                          f"{images} test images, seed {seed}, {time.perf_counter() - start:.1f} s"])
    (out / "report.md").write_text(report + "\n")
    click.echo(f"[3/3] report written to {out / 'report.md'}", err=True)
    click.echo(report)


if __name__ == "__main__":
    main()
