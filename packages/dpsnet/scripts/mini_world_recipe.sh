#!/usr/bin/env bash
# The cpu-small recipe on rpc-synth's mini world, end to end (about 14 minutes on a free 2-core CPU):
# world -> masks -> poses -> synthesized training + held-out images -> backbone pretraining on the synthesized product crops
# -> detector training -> (optionally the counter refined alone) -> predict + evaluate (held-out synthesized; checkout test with transfer/oracle).
# Usage: [DETECTOR_STEPS=N] [COUNT_REFINE_STEPS=N] scripts/mini_world_recipe.sh OUT_DIR [extra dpsnet train key=value ...]
# dpsnet's acceptance run (8 minutes of training on a 2-core CPU with bfloat16 units, e.g. an AMD EPYC of Zen 4):
#   DETECTOR_STEPS=2500 COUNT_REFINE_STEPS=1800 scripts/mini_world_recipe.sh OUT_DIR   (7 min 15 s of training there)
set -euo pipefail
OUT=${1:?usage: mini_world_recipe.sh OUT_DIR [key=value ...]}
shift
mkdir -p "$OUT"
cd "$OUT"

[ -f world/instances_test2019.json ] || rpc-synth world --out world --seed 0 --quiet
[ -f masks/instances_masks.json ] || rpc-synth masks --instances world/instances_train2019.json --images world/train2019 --out masks --quiet
[ -f poses.json ] || rpc-synth poses --masks masks/instances_masks.json --out poses.json
[ -f synth/instances_synth2019.json ] || rpc-synth generate --exemplars poses.json --images world/train2019 --out synth --num-images 800 --seed 0 --quiet
[ -f synth_heldout/instances_synth2019.json ] || rpc-synth generate --exemplars poses.json --images world/train2019 --out synth_heldout --num-images 100 --seed 1 --quiet
[ -f synth_heldout400/instances_synth2019.json ] || rpc-synth generate --exemplars poses.json --images world/train2019 --out synth_heldout400 --num-images 400 --seed 2 --quiet

# The stand-in for ImageNet weights: the small body as a 24-way SKU classifier on the product crops of the
# synthesized images (~3 minutes; made from exemplars only, they show products as the checkout camera does).
[ -f pretrain_synth.pt ] || dpsnet pretrain --instances synth/instances_synth2019.json --images synth/synth2019 --out pretrain_synth.pt --steps 3000 --camera 0.5

# DETECTOR_STEPS (default: the preset's 1500) sets the detector's steps, e.g. 2500 where the CPU computes
# bfloat16 natively (5 min 30 s on a 2-core AMD EPYC with AVX512-BF16).
dpsnet train --config cpu-small --out run \
  data.train_instances=synth/instances_synth2019.json data.train_images=synth/synth2019 \
  data.val_instances=world/instances_val2019.json data.val_images=world/val2019 \
  model.backbone_weights=pretrain_synth.pt ${DETECTOR_STEPS:+train.max_steps=$DETECTOR_STEPS} "$@"

# Optional: the counter refined alone on the trained model's frozen features (train.trainable=counting), a
# new, deeper head (4 convolutions), e.g. COUNT_REFINE_STEPS=1800 (steps of about a third of a full step each),
# AdamW at 0.001, on 2400 more synthesized images (another seed: the head alone overfits the detector's 800);
# detection is unchanged (docs/RESULTS.md, dpsnet: the counter refined alone).
CKPT=run/last.pt
if [ "${COUNT_REFINE_STEPS:-0}" -gt 0 ]; then
  [ -f synth_count/instances_synth2019.json ] || rpc-synth generate --exemplars poses.json --images world/train2019 --out synth_count --num-images 2400 --seed 3 --quiet
  # The extra key=value arguments first (the model must be built as the detector was), then the refinement's.
  dpsnet train --config cpu-small --out run_count \
    data.train_instances=synth_count/instances_synth2019.json data.train_images=synth_count/synth2019 "$@" \
    train.init_checkpoint=run/last.pt train.trainable=counting model.count_convs=4 \
    train.max_steps="$COUNT_REFINE_STEPS" train.optimizer=adamw train.lr=0.001 train.weight_decay=0 \
    train.warmup_steps=20 train.time_limit_min=0
  CKPT=run_count/last.pt
fi

for split in heldout heldout400 val test; do
  case $split in
    heldout) json=synth_heldout/instances_synth2019.json; images=synth_heldout/synth2019 ;;
    heldout400) json=synth_heldout400/instances_synth2019.json; images=synth_heldout400/synth2019 ;;
    val) json=world/instances_val2019.json; images=world/val2019 ;;
    test) json=world/instances_test2019.json; images=world/test2019 ;;
  esac
  dpsnet predict --checkpoint "$CKPT" --instances "$json" --images "$images" \
    --out-results "pred_$split.json" --out-counts "counts_$split.json" --quiet
done

echo "## held-out synthesized images (oracle threshold; mAP50 uses every detection)"
dpsnet evaluate --results pred_heldout.json --gt synth_heldout/instances_synth2019.json --counts counts_heldout.json --json-out metrics_heldout.json
echo "## 400 more held-out synthesized images (another seed)"
dpsnet evaluate --results pred_heldout400.json --gt synth_heldout400/instances_synth2019.json --counts counts_heldout400.json --json-out metrics_heldout400.json
echo "## checkout test, transfer protocol (threshold from checkout val)"
dpsnet evaluate --results pred_test.json --gt world/instances_test2019.json --protocol transfer \
  --val-results pred_val.json --val-gt world/instances_val2019.json --counts counts_test.json --json-out metrics_test_transfer.json
echo "## checkout test, oracle protocol"
dpsnet evaluate --results pred_test.json --gt world/instances_test2019.json --protocol oracle --json-out metrics_test_oracle.json
