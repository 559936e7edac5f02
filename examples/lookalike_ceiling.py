"""The best checkout accuracy the mini world allows: how many look-alike products show nothing of their twin.

Each checkout product of a look-alike pair (same shape, size and design; two letters and the logo colour apart)
is drawn again as its twin in the same pose, and its visible pixels are compared
(:func:`rpc_synth.world.lookalike_evidence`). A product showing fewer than ``min_px`` pixels that differ by more
than ``contrast`` grey levels is a coin toss within its pair for any model, so the table gives, per setting,
those "blind" products and the resulting ceiling of cAcc (:func:`rpc_synth.world.lookalike_ceiling`). The
camera's blur, noise and JPEG come later and only make it harder.

    python examples/lookalike_ceiling.py --split test
"""

from __future__ import annotations

import click

from rpc_synth.world import WorldConfig, lookalike_ceiling, lookalike_evidence


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seed", type=int, default=0, show_default=True, help="World seed (as `rpc-synth world --seed`).")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--images", type=click.IntRange(1), default=None, help="Only the first N images of the split.")
@click.option("--contrast", "contrasts", type=click.FloatRange(0, 255), multiple=True, default=(40.0, 80.0),
              show_default=True, help="Grey-level difference that counts as evidence (repeatable).")
@click.option("--min-px", "min_pxs", type=click.IntRange(1), multiple=True, default=(1, 10, 30), show_default=True,
              help="Evidence pixels a product needs to be told from its twin (repeatable).")
def main(seed, split, images, contrasts, min_pxs) -> None:
    """Print the look-alike ceiling of the default mini world's checkout images."""
    config = WorldConfig(seed=seed)
    n = min(images or 10**9, config.val_images if split == "val" else config.test_images)
    click.echo(f"mini world seed {seed}, {split} split, {n} images")
    click.echo("| contrast | min px | blind look-alike products | cAcc ceiling |\n| ---: | ---: | ---: | ---: |")
    for contrast in contrasts:
        rows = [lookalike_evidence(config, split, i, contrast=contrast)[1] for i in range(n)]
        twins = [r for image in rows for r in image if r["twin"] is not None]
        for min_px in min_pxs:
            blind = sum(r["evidence_px"] < min_px for r in twins)
            click.echo(f"| {contrast:g} | {min_px} | {blind} of {len(twins)} | "
                       f"{100 * lookalike_ceiling(rows, min_px):.1f}% |")


if __name__ == "__main__":
    main()
