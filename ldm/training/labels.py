"""Class labels for class-conditional training: which field holds an image's class, and the class names.

`data.label_field` names a captions.jsonl field (e.g. the emoji data's `group`) or "caption" (the caption
itself, e.g. the shapes data's "red square"); `data.classes` lists the class names, or is null to take
the values found in the data, sorted. `with_classes` writes the names into the model node
(`model.params.class_names`) and sizes the U-Net's label embedding to them plus one null label
(`num_classes` = classes + 1; the last index means "no label"), so the run's config.yaml and the exported
model.yaml carry the names and `ldm txt2img --label NAME` knows them.

Why a reserved last index rather than a separate null embedding: the U-Net's `label_emb` stays the plain
`nn.Embedding(num_classes, ...)` of the original layout, so checkpoints, key maps and the U-Net itself are
unchanged; the null label is just one more learnt row.
"""

from __future__ import annotations

import copy

from torch.utils.data import ConcatDataset, Dataset, Subset

from ldm.core.errors import LdmError
from ldm.data.folder import CaptionedImageFolder

CAPTION = "caption"  # label_field value meaning "the caption is the class"


class LabelError(LdmError, ValueError):
    """Class labels that the data or the model config cannot give."""


def _values(dataset: Dataset, field: str) -> list:
    """Each item's value of `field` (None where missing), read from the folder's captions, not its images."""
    if isinstance(dataset, Subset):
        values = _values(dataset.dataset, field)
        return [values[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [v for part in dataset.datasets for v in _values(part, field)]
    if isinstance(dataset, LabelledDataset):
        return _values(dataset.dataset, field)
    if field == CAPTION:
        return list(dataset.captions)  # type: ignore[attr-defined]
    return [extra.get(field) for extra in dataset.extras]  # type: ignore[attr-defined]


def _files(dataset: Dataset) -> list[str]:
    if isinstance(dataset, Subset):
        files = _files(dataset.dataset)
        return [files[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [f for part in dataset.datasets for f in _files(part)]
    return list(getattr(dataset, "files", [str(i) for i in range(len(dataset))]))  # type: ignore[arg-type]


class LabelledDataset(Dataset):
    """Adds "label" (the index of the item's class in `classes`) to each item of a captioned folder (or a
    Subset / ConcatDataset of folders). Every item must have a known class: a missing or unknown one is an
    error naming the image, found when the data is set up, not hours into a run."""

    def __init__(self, dataset: Dataset, field: str, classes: list[str]):
        self.dataset, self.field, self.classes = dataset, field, list(classes)
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels: list[int] = []
        for file, value in zip(_files(dataset), _values(dataset, field)):
            if value is None:
                raise LabelError(f"data.label_field {field!r}: {file} has no such field")
            if str(value) not in index:
                raise LabelError(
                    f"data.label_field {field!r}: {file} is {str(value)!r}, not one of data.classes "
                    f"({', '.join(self.classes)})"
                )
            self.labels.append(index[str(value)])

    @property
    def extras(self) -> list[dict]:  # what ldm.data.folder.folder_extras reads (weights, keywords)
        from ldm.data.folder import folder_extras

        return folder_extras(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "label": self.labels[index]}


def classes_in_data(data: dict) -> list[str]:
    """The sorted distinct values of data.label_field over the data folder(s) (training and validation)."""
    field = data["label_field"]
    roots = data["root"] if isinstance(data["root"], (list, tuple)) else [data["root"]]
    roots = [r for r in roots if r is not None] + ([data["val_root"]] if data.get("val_root") else [])
    values: set[str] = set()
    for root in roots:
        folder = CaptionedImageFolder(
            root, data["size"], caption_column=data.get("caption_column"), more_fields=(field,)
        )
        found = _values(folder, field)
        missing = [f for f, v in zip(folder.files, found) if v is None]
        if missing:
            raise LabelError(f"data.label_field {field!r}: {root}/{missing[0]} has no such field")
        values |= {str(v) for v in found}
    return sorted(values)


def with_classes(cfg: dict) -> dict:
    """The resolved training config with its class names fixed (read from the data if data.classes is null) and
    written into the model node: `class_names`, and the U-Net's `num_classes` = len(classes) + 1 (null label).
    A config without data.label_field is returned as it is; so is one already fixed (a resumed run's)."""
    data = cfg["data"]
    if data.get("label_field") is None:
        if (cfg["model"].get("params") or {}).get("class_names"):
            raise LabelError(
                "the model has class_names but data.label_field is not set: name the field that holds "
                "each image's class"
            )
        return cfg
    cfg = copy.deepcopy(cfg)
    classes = list(cfg["data"]["classes"] or classes_in_data(cfg["data"]))
    params = cfg["model"].setdefault("params", {})
    if params.get("class_names") not in (None, classes):
        raise LabelError(f"model.params.class_names {params['class_names']} differ from the data's classes {classes}")
    unet = params.setdefault("unet_config", {}).setdefault("params", {})
    rows = unet.get("num_classes")
    if rows is not None and rows != len(classes) + 1:
        raise LabelError(
            f"{len(classes)} classes need unet num_classes: {len(classes) + 1} (the last is the null "
            f"label), got {rows!r}; leave it out to have it set"
        )
    cfg["data"]["classes"], params["class_names"], unet["num_classes"] = classes, classes, len(classes) + 1
    return cfg
