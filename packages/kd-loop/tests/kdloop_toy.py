"""A toy learner (no torch) for fast loop tests: it memorizes what it is trained on.

Its teacher knowledge is a fixed file of candidate detections and counts per image (a noisy detector and
counter). ``fit`` memorizes the labels (not the ignore regions) of every training dataset, on top of the
initial checkpoint's memory; ``predict`` answers memorized images with their labels at score 0.99 and the
others with the candidates; its counts are multiplied by ``count_factor`` (a counter biased by a domain gap,
e.g. 1.6: it over-counts everywhere), and ``predict_calls`` lists the pool file of every call. Setting KD_TOY_KILL=<suffix> makes ``fit`` kill its own process (SIGKILL) when
its out_dir ends with that suffix, after writing a partial file: a crash in the middle of a round.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from rpc_metrics.io import write_json


class ToyLearner:
    def __init__(self, candidates: str, counts: str, count_factor: float = 1.0):
        self.candidates = json.loads(Path(candidates).read_text())
        self.view_counts = json.loads(Path(counts).read_text())
        self.count_factor = count_factor
        self.predict_calls: list[str] = []

    def fit(self, datasets, *, init, out_dir, seed):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        memory = json.loads(Path(init).read_text())["memory"] if init else {}
        if os.environ.get("KD_TOY_KILL") and str(out_dir).endswith(os.environ["KD_TOY_KILL"]):
            (out_dir / "partial.bin").write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        for spec in datasets:
            data = json.loads(Path(spec.instances).read_text())
            learned = {str(im["id"]): [] for im in data["images"]}
            for ann in data["annotations"]:
                if not ann.get("iscrowd", 0):
                    learned[str(ann["image_id"])].append({"category_id": ann["category_id"], "bbox": ann["bbox"]})
            memory.update(learned)
        checkpoint = out_dir / "toy.json"
        write_json({"memory": memory, "seed": seed}, checkpoint)
        return checkpoint

    def predict(self, checkpoint, pool, images, *, out_dir):
        self.predict_calls.append(Path(pool).name)
        memory = json.loads(Path(checkpoint).read_text())["memory"]
        pool_ids = [im["id"] for im in json.loads(Path(pool).read_text())["images"]]
        results, counts = [], []
        for image_id in pool_ids:
            known = memory.get(str(image_id))
            if known:
                dets = [{"image_id": image_id, "score": 0.99, **d} for d in known]
                view = Counter(str(d["category_id"]) for d in known)
            else:
                dets = self.candidates.get(str(image_id), [])
                view = self.view_counts.get(str(image_id), {})
            results += dets
            counts.append({"image_id": image_id, "counts": {k: self.count_factor * float(v) for k, v in view.items()}})
        out_dir = Path(out_dir)
        write_json(results, out_dir / "results.json")
        write_json({"count_classes": "category", "images": counts}, out_dir / "counts.json")
        from kd_loop import Prediction

        return Prediction(out_dir / "results.json", out_dir / "counts.json")
