"""A Hugging Face hub cache laid out as ``huggingface_hub`` lays it out, for offline hub-id tests."""

from __future__ import annotations

import shutil


def hf_cache_layout(root, repo_id, source, revision="main", commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face hub cache as huggingface_hub lays it out: blobs, refs/<revision>, snapshots/<commit>."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in source.iterdir():
        blob = repo / "blobs" / f"{abs(hash(file.name)):x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    return snapshot
