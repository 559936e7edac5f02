"""A second opinion on each detection's SKU: the pretrained crop classifier (and its pair specialists) re-score
the box head's detections, as post-processing between the per-class and the class-agnostic NMS.

``dpsnet pretrain`` trains the small body plus a linear layer to name product crops (square, a 10% margin,
64 px, as :func:`dpsnet.training.crops.exemplar_crops` cuts them); its file keeps the whole classifier. At
inference, :class:`CropRescorer` cuts the same crop around every detection of the box head, classifies it in its
four 90-degree rotations (a top view has no up) and multiplies the detection's score by ``p(its SKU) ** power``;
the class-agnostic NMS that follows then keeps, at each place, the SKU that both opinions favour. All crops of a
batch are cut with one ``roi_align`` call. Pair specialists (two-class classifiers of the SKU pairs the
generalist confuses) share out the generalist's probability of their pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from rpc_metrics.io import image_path, read_instances

from ..classifier import CropClassifier, CropClassifierFile, load_crop_classifier
from ..data import coco_to_xyxy, read_image


def crop_boxes(boxes: Tensor, height: int, width: int, margin: float = 0.1) -> Tensor:
    """[N, 4] (x1, y1, x2, y2) -> the squares of side ``max(w, h) * (1 + 2 margin)`` around their centres,
    clipped to the image (as :func:`dpsnet.training.crops.exemplar_crops` cuts its training crops)."""
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values * (1 + 2 * margin)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (side / 2)[:, None]
    low = (centre - half).clamp(min=0)
    high = torch.minimum(centre + half, torch.tensor([float(width), float(height)], device=boxes.device))
    return torch.cat([low, torch.maximum(high, low + 1)], dim=1)


class CropRescorer(nn.Module):
    """Re-score detections with a crop classifier (see the module docstring); pass it as ``model(images,
    rescore=rescorer)``.

    Args:
        classifier: a :class:`dpsnet.classifier.CropClassifier` (eval mode is set here).
        class_of_label: Tensor[num_labels], the classifier's class index for each detection label (-1: a label
            the classifier does not know, whose scores stay as they are).
        power: exponent of the classifier's probability in the new score (0: no change).
        size: crop side in pixels (the classifier's training size); margin: crop margin on each side.
        specialists: ``(classes, classifier)`` pairs: the two classes of the generalist a specialist tells apart.
    """

    def __init__(self, classifier: CropClassifier, class_of_label: Tensor, *, power: float = 0.5, size: int = 64,
                 margin: float = 0.1, specialists: Sequence[tuple[Sequence[int], CropClassifier]] = ()):
        super().__init__()
        if power < 0:
            raise ValueError(f"power should be >= 0, got {power}")
        self.classifier = classifier.eval()
        self.specialists = nn.ModuleList(m.eval() for _, m in specialists)
        self.specialist_classes = [list(map(int, c)) for c, _ in specialists]
        self.register_buffer("class_of_label", torch.as_tensor(class_of_label, dtype=torch.int64))
        self.power, self.size, self.margin = float(power), int(size), float(margin)

    @classmethod
    def from_file(cls, path: str | Path, category_ids: Sequence[int], **kwargs) -> CropRescorer:
        """From a ``dpsnet pretrain`` file; ``category_ids[l - 1]`` is detection label ``l``'s category."""
        return cls.from_saved(load_crop_classifier(path), category_ids, source=str(path), **kwargs)

    @classmethod
    def from_saved(cls, saved: CropClassifierFile, category_ids: Sequence[int], *, source: str = "reclassifier",
                   **kwargs) -> CropRescorer:
        """From a crop classifier file already read (:func:`dpsnet.classifier.crop_classifier_from_state`)."""
        index = {c: i for i, c in enumerate(saved.category_ids)}
        known = [index.get(int(c), -1) for c in category_ids]
        if all(k < 0 for k in known):
            raise ValueError(f"{source}: the classifier knows none of the model's categories "
                             f"(its ids {sorted(index)[:10]}..., the model's {list(category_ids)[:10]}...)")
        return cls(saved.classifier, torch.tensor([-1, *known]), size=saved.size, specialists=saved.specialists,
                   **kwargs)

    @torch.no_grad()
    def probabilities(self, images: Tensor, boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Class probabilities [sum N_i, classes] of the crops around ``boxes`` (per image, in the coordinates of
        ``images``, a [B, 3, H, W] batch of 0-1 RGB), averaged over the four rotations of each crop.

        Where the file has pair specialists, a crop whose probability of a pair is at least 1% gets that
        probability split between the pair's two classes as the specialist sees them (its own four rotations)."""
        rois = [crop_boxes(b.float(), h, w, self.margin) for b, (h, w) in zip(boxes, image_sizes, strict=True)]
        if sum(len(r) for r in rois) == 0:
            return images.new_zeros(0, self.classifier.fc.out_features)
        crops = roi_align(images.float(), rois, (self.size, self.size), spatial_scale=1.0, sampling_ratio=0,
                          aligned=True)
        views = torch.stack([torch.rot90(crops, k, (2, 3)) for k in range(4)])  # [4, N, 3, S, S]
        probs = torch.softmax(self.classifier(views.flatten(0, 1)).float(), dim=1)
        probs = probs.view(4, len(crops), -1).mean(dim=0)
        for classes, specialist in zip(self.specialist_classes, self.specialists, strict=True):
            pair = probs[:, classes].sum(dim=1)
            active = torch.nonzero(pair >= 0.01).squeeze(1)
            if len(active) == 0:
                continue
            own = torch.softmax(specialist(views[:, active].flatten(0, 1)).float(), dim=1)
            own = own.view(4, len(active), -1).mean(dim=0)
            probs[active[:, None], torch.tensor(classes, device=probs.device)[None, :]] = pair[active, None] * own
        return probs

    @torch.no_grad()
    def forward(self, images: Tensor, boxes: list[Tensor], scores: list[Tensor], labels: list[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """New scores per image: ``score * p(label) ** power`` (unchanged for labels the classifier lacks)."""
        if self.power == 0 or not scores:
            return scores
        probs = self.probabilities(images, boxes, image_sizes)
        cls = self.class_of_label[torch.cat(labels)]
        p = probs.gather(1, cls.clamp(min=0)[:, None]).squeeze(1)
        factor = torch.where(cls >= 0, p.clamp(min=1e-12) ** self.power, torch.ones_like(p))
        return list((torch.cat(scores) * factor.to(scores[0].dtype)).split([len(s) for s in scores]))


def crop_accuracy(classifier: str | Path, instances: str | Path, images: str | Path) -> dict:
    """How often a ``dpsnet pretrain`` classifier names the SKU of each annotated product from its true box.

    The crops are cut as :class:`CropRescorer` cuts them at inference (four rotations averaged); crowd regions
    are skipped. Returns ``{"accuracy", "products", "right", "confusions"}`` where ``confusions`` lists
    ``[true category, named category, n]``, most frequent first. Images are read one at a time.
    """
    dataset = read_instances(instances)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    rescorer = CropRescorer.from_file(classifier, category_ids)
    label_of_class = {int(k): category_ids[i] for i, k in enumerate(rescorer.class_of_label[1:].tolist()) if k >= 0}
    boxes: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            boxes.setdefault(ann["image_id"], []).append(ann)
    truth, named = [], []
    for im in sorted(dataset["images"], key=lambda im: im["id"]):
        anns = boxes.get(im["id"])
        if not anns:
            continue
        image = torch.from_numpy(read_image(image_path(images, im["file_name"], source=str(instances))))
        xyxy = torch.tensor([coco_to_xyxy(a["bbox"]) for a in anns], dtype=torch.float32)
        probs = rescorer.probabilities(image.permute(2, 0, 1)[None], [xyxy], [tuple(image.shape[:2])])
        truth += [a["category_id"] for a in anns]
        named += [label_of_class.get(int(k), -1) for k in probs.argmax(dim=1).tolist()]
    if not truth:
        raise ValueError(f"{instances}: no product annotations to classify")
    wrong = Counter((t, n) for t, n in zip(truth, named, strict=True) if t != n)
    right = len(truth) - sum(wrong.values())
    confusions = [[t, n, c] for (t, n), c in sorted(wrong.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"accuracy": right / len(truth), "products": len(truth), "right": right, "confusions": confusions}
