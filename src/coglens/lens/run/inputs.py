"""Where a lens run's samples come from: a folder of images, a VLM-Lens ``dataset``, a JSONL/CSV manifest, or
a prompt alone. Every source yields :class:`LensSample` items with a stable, unique ``key`` (what resume and
merge match on), in a deterministic order.

- ``input_dir``: walked recursively, files with VLM-Lens's extensions (any case), sorted by relative path;
  key = the path relative to the folder, every image asked the config's ``prompt``.
- ``dataset``: ``local_dataset_path`` (``datasets.load_from_disk``) or a hub ``dataset_path``; rows carry
  ``id``, ``prompt``, optional ``image`` (a decoded image, or a path joined onto ``image_dataset_path``) and
  optional ``label``; key = ``id`` (else the row index).
- ``manifest``: ``.jsonl`` (one object a line) or ``.csv`` with the columns ``image``, ``video``, ``prompt``,
  ``label``, ``id`` (all optional; other columns are kept as the sample's extra metadata); relative paths are
  relative to the manifest's folder; key = ``id`` (else the row index); rows without ``prompt`` use the
  config's.

Images are only opened later, by the batch preparer, so a broken file is reported there (and skipped), not
here.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from coglens.lens.run.config import DatasetSource, LensConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff")  # VLM-Lens's list
MANIFEST_COLUMNS = ("image", "video", "prompt", "label", "id")
PROMPT_ONLY_KEY = "prompt"

ImageRef = str | Path | bytes | Image.Image | Callable[[], Any]  # a callable decodes on demand (dataset rows)


class LensInputError(ValueError):
    """An input source that is missing, empty or malformed; the message names the source and the fix."""


@dataclass(frozen=True)
class LensSample:
    """One model input before loading: its key, prompt and (unloaded) image or video."""

    key: str
    prompt: str
    image: ImageRef | None = field(default=None, repr=False)
    video: str | None = None
    label: str | None = None
    row_id: str | None = None  # dataset / manifest row id (VLM-Lens's image_id)
    image_path: str | None = None  # what the database records as the image's path
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """How to name this sample's input in messages."""
        return self.image_path or self.video or self.key


def collect_samples(config: LensConfig) -> list[LensSample]:
    """Every sample of the config's input source, in a deterministic order, keys checked unique."""
    if config.input_dir is not None:
        samples = folder_samples(config.input_dir, config.prompt or "")
    elif config.dataset is not None:
        samples = dataset_samples(config.dataset, config.prompt)
    elif config.manifest is not None:
        samples = manifest_samples(config.manifest, config.prompt)
    elif config.prompt is not None:
        samples = [LensSample(PROMPT_ONLY_KEY, config.prompt)]
    else:
        raise LensInputError("no input: give input_dir (with prompt), dataset, manifest, or a prompt alone")
    _check_unique(samples)
    return samples


def folder_samples(folder: Path, prompt: str) -> list[LensSample]:
    """The images under `folder` (recursively), sorted by their path relative to it."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise LensInputError(f"input_dir {str(folder)!r} {what}; give the folder that holds the images")
    found = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    if not found:
        raise LensInputError(
            f"input_dir {str(folder)!r} holds no images (looked recursively for {' '.join(IMAGE_EXTENSIONS)})"
        )
    return [LensSample(key, prompt, image=path, image_path=str(path)) for key, path in found]


def manifest_samples(path: Path, prompt: str | None) -> list[LensSample]:
    """The rows of a JSONL or CSV manifest (see the module docstring)."""
    rows = _read_manifest(path)
    if not rows:
        raise LensInputError(f"manifest {str(path)!r} has no rows")
    base = path.parent
    samples = []
    for index, row in enumerate(rows):
        where = f"manifest {str(path)!r} row {index + 1}"
        image, video = _text(row, "image", where), _text(row, "video", where)
        if image is not None and video is not None:
            raise LensInputError(f"{where}: give an image or a video, not both")
        row_prompt = _text(row, "prompt", where) or prompt
        if row_prompt is None:
            raise LensInputError(f"{where} has no prompt, and the config gives no default `prompt`")
        row_id = _text(row, "id", where)
        image_path = None if image is None else str(_relative_to(base, image))
        samples.append(
            LensSample(
                key=row_id if row_id is not None else str(index),
                prompt=row_prompt,
                image=image_path,
                video=None if video is None else str(_relative_to(base, video)),
                label=_text(row, "label", where),
                row_id=row_id if row_id is not None else str(index),
                image_path=image_path,
                extra={k: v for k, v in row.items() if k not in MANIFEST_COLUMNS and v not in (None, "")},
            )
        )
    return samples


def dataset_samples(source: DatasetSource, prompt: str | None) -> list[LensSample]:
    """The rows of a VLM-Lens ``dataset`` source; images decode lazily, one row at a time."""
    dataset = _load_dataset(source)
    columns = set(dataset.column_names)
    where = source.local_dataset_path or source.dataset_path
    if "prompt" not in columns and prompt is None:
        raise LensInputError(f"dataset {where!r} has no `prompt` column and the config gives no `prompt`")
    count = len(dataset)
    ids = list(dataset["id"]) if "id" in columns else [str(i) for i in range(count)]
    prompts = list(dataset["prompt"]) if "prompt" in columns else [prompt] * count
    labels = list(dataset["label"]) if "label" in columns else [None] * count
    images = _dataset_images(dataset, source) if "image" in columns else [None] * count
    samples = []
    for index, (row_id, row_prompt, label, image) in enumerate(
        zip(ids, prompts, labels, images, strict=True)
    ):
        if row_prompt is None and prompt is None:
            raise LensInputError(f"dataset {where!r} row {index} has no prompt and the config gives none")
        samples.append(
            LensSample(
                key=str(row_id),
                prompt=str(row_prompt if row_prompt is not None else prompt),
                image=image,
                label=None if label is None else str(label),
                row_id=str(row_id),
                image_path=image if isinstance(image, str) else None,
            )
        )
    return samples


def _load_dataset(source: DatasetSource) -> Any:
    try:
        import datasets
    except ImportError:
        raise LensInputError(
            "a `dataset` input needs the datasets package: pip install 'coglens[datasets]'"
        ) from None
    if source.local_dataset_path is not None:
        try:
            loaded = datasets.load_from_disk(source.local_dataset_path)
        except FileNotFoundError as error:
            raise LensInputError(
                f"local_dataset_path {source.local_dataset_path!r} is not a dataset saved with "
                f"save_to_disk ({error})"
            ) from None
    else:
        try:
            loaded = datasets.load_dataset(source.dataset_path, split=source.dataset_split)
        except (ConnectionError, FileNotFoundError, ValueError) as error:  # offline, unknown id, bad split
            raise LensInputError(
                f"cannot load the hub dataset {source.dataset_path!r}: {error}. Offline? On a machine with "
                "internet run `datasets.load_dataset(...).save_to_disk(DIR)` and use local_dataset_path: DIR"
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return _split(loaded, source)
    return loaded


def _split(splits: Mapping[str, Any], source: DatasetSource) -> Any:
    name = source.dataset_split
    if name is None and len(splits) == 1:
        return next(iter(splits.values()))
    if name not in splits:
        raise LensInputError(
            f"dataset {source.local_dataset_path or source.dataset_path!r} has the splits "
            f"{', '.join(splits)}; choose one with dataset_split"
            + ("" if name is None else f" ({name!r} is not one of them)")
        )
    return splits[name]


def _dataset_images(dataset: Any, source: DatasetSource) -> list[ImageRef | None]:
    """Per row: a path (string column, joined onto image_dataset_path), or a loader that decodes the row's
    image when the batch preparer needs it (an Image column), or None."""
    import datasets

    if not isinstance(dataset.features["image"], datasets.Image):
        base = source.image_dataset_path
        return [
            None if value in (None, "") else str(Path(base) / value if base else Path(value))
            for value in dataset["image"]
        ]
    column = dataset.select_columns(["image"])
    return [_row_image(column, index) for index in range(len(column))]


def _row_image(column: Any, index: int) -> Callable[[], Any]:
    return lambda: column[index]["image"]


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise LensInputError(f"cannot read manifest {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise LensInputError(
            f"manifest {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    if path.suffix.lower() == ".csv":
        try:
            return [
                {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(text.splitlines())
            ]
        except csv.Error as error:
            raise LensInputError(f"manifest {str(path)!r} is not a readable CSV file: {error}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LensInputError(f"manifest {str(path)!r} line {number} is not valid JSON: {error}") from None
        if not isinstance(row, dict):
            raise LensInputError(f"manifest {str(path)!r} line {number} must be a JSON object, not {line!r}")
        rows.append(row)
    return rows


def _text(row: Mapping[str, Any], column: str, where: str) -> str | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        raise LensInputError(f"{where}: `{column}` must be a string, got {value!r}")
    return str(value)


def _relative_to(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _check_unique(samples: Iterable[LensSample]) -> None:
    counts = Counter(sample.key for sample in samples)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(map(repr, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        raise LensInputError(
            f"{len(repeated)} sample keys occur more than once ({shown}); keys identify samples for resume "
            "and merge: give every row a unique `id`"
        )
