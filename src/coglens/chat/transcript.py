"""A chat session as JSON (``/save FILE``): every turn, its media, how it ended, and its grounding boxes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .session import ChatSession, Turn

TRANSCRIPT_FORMAT = "coglens-chat-transcript/1"


def transcript(session: ChatSession) -> dict[str, Any]:
    return {
        "format": TRANSCRIPT_FORMAT,
        "model": str(session.pipe.model_path),
        "variant": session.pipe.config.variant,
        "template": session.template,
        "multi_image": session.multi_image,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "turns": [turn_record(turn) for turn in session.turns],
    }


def turn_record(turn: Turn) -> dict[str, Any]:
    media = turn.media
    return {
        "conversation": turn.conversation,
        "query": turn.query,
        "answer": turn.answer,
        "finish_reason": turn.finish_reason,
        "image": media.source if media is not None and media.kind == "image" else None,
        "video": media.source if media is not None and media.kind == "video" else None,
        "boxes": [{"phrase": box.phrase, "box": list(box.box_rel)} for box in turn.grounding.boxes],
    }


def save_transcript(session: ChatSession, path: str | Path) -> Path:
    """Write the session's transcript as UTF-8 JSON; the folder must exist (a typo should not create one)."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save the transcript to {path}: folder {path.parent} does not exist")
    path.write_text(json.dumps(transcript(session), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
