"""``coglens chat``: a terminal conversation with streamed answers, after THUDM's ``cli_demo.py``.

Type a question and press Enter. ``clear`` forgets the history, ``stop`` (or Ctrl-D) quits, Ctrl-C stops the
answer being written (the request is aborted in the engine) and keeps the session.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ..engine import SamplingParams
from .boxes import boxed_picture, describe_boxes
from .session import ChatSession, Turn
from .text import UndecodableTextError, check_decoded
from .transcript import save_transcript

PROMPT = "You: "
ANSWER_PREFIX = "Model: "
HELP = """\
Type a question and press Enter; the answer streams as it is generated.
  clear          forget the conversation (the image stays)
  stop, Ctrl-D   quit
  /image PATH    switch to another image (a new conversation, unless --multi-image)
  /video PATH    switch to another video (CogVLM2-Video models)
  /save FILE     save the session's transcript as JSON
  /help          this text
Ctrl-C stops an answer and keeps the session."""


class UnknownCommandError(ValueError):
    """A line starting with '/' that is not a chat command."""


class ChatRepl:
    def __init__(
        self,
        session: ChatSession,
        params: SamplingParams,
        *,
        grounding: bool = False,
        boxes_out: Path | None = None,
        out: TextIO = sys.stdout,
        read_line: Callable[[str], str] = input,
    ) -> None:
        self.session = session
        self.params = params
        self.grounding = grounding
        self.boxes_out = boxes_out
        self.out = out
        self.read_line = read_line

    def run(self) -> None:
        """Read and answer lines until ``stop`` or end of input."""
        self._say(self._banner())
        while True:
            try:
                line = self.read_line(PROMPT).strip()
                check_decoded(line, "the line")
            except (UnicodeDecodeError, UndecodableTextError) as exc:  # bytes that are not UTF-8: say so, go on
                self._say(f"error: {_decode_failure(exc)}")
                continue
            except EOFError:
                self._say("")
                return
            except KeyboardInterrupt:
                self._say("\n(type stop or press Ctrl-D to quit)")
                continue
            if not line:
                continue
            try:
                if not self.handle(line):
                    return
            except (ValueError, OSError) as exc:  # user mistakes: say what was wrong and carry on
                self._say(f"error: {exc}")

    def handle(self, line: str) -> bool:
        """Run one command or answer one question; False means quit."""
        command, _, argument = line.partition(" ")
        argument = _path_argument(argument)
        if command in ("stop", "/stop", "/quit"):
            return False
        if command in ("clear", "/clear"):
            self.session.clear()
            self._say("(history cleared)")
        elif command == "/help":
            self._say(HELP)
        elif command in ("/image", "/video"):
            self._switch_media(command, argument)
        elif command == "/save":
            if not argument:
                raise UnknownCommandError("/save needs a file name, e.g. /save chat.json")
            self._say(f"(transcript saved to {save_transcript(self.session, argument)})")
        elif command.startswith("/"):
            raise UnknownCommandError(f"unknown command {command!r}; /help lists the commands")
        else:
            self.answer(line)
        return True

    def answer(self, query: str) -> Turn:
        """Write the answer as the engine streams it; Ctrl-C meanwhile aborts it (the engine then ends it with
        an "abort" event) instead of ending the program."""
        interrupted = threading.Event()
        # a prompt too long for the model fails here, before any output
        events = self.session.pipe.engine.stream(self.session.request(query, self.params), stop=interrupted)
        parts: list[str] = []
        finish_reason = None
        with _interrupt_sets(interrupted), contextlib.closing(events):  # closing: an error mid-answer aborts it
            self.out.write(ANSWER_PREFIX)
            self.out.flush()
            for event in events:
                self.out.write(event.text)
                self.out.flush()
                parts.append(event.text)
                finish_reason = event.finish_reason
        self._say(" [stopped]" if finish_reason == "abort" else "")
        turn = self.session.record(query, "".join(parts), finish_reason)
        if self.grounding:
            self._show_boxes(turn)
        return turn

    def _switch_media(self, command: str, argument: str) -> None:
        if not argument:
            raise UnknownCommandError(f"{command} needs a file, e.g. {command} photo.jpg")
        load = self.session.load_image if command == "/image" else self.session.load_video
        media = load(argument)
        new_conversation = self.session.set_media(media)
        note = " - a new conversation starts" if new_conversation else ""
        self._say(f"({media.kind} {media.source} loaded{note})")

    def _show_boxes(self, turn: Turn) -> None:
        picture = turn.media.picture if turn.media is not None else None
        for line in describe_boxes(turn.grounding, picture) or ["(no boxes in this answer)"]:
            self._say(f"  {line}")
        if self.boxes_out is None or not turn.grounding.boxes:
            return
        drawn = boxed_picture(picture, turn.grounding)
        if drawn is None:
            self._say("  (no image to draw the boxes on)")
            return
        try:
            self.boxes_out.parent.mkdir(parents=True, exist_ok=True)
            drawn.save(self.boxes_out)
        except OSError as exc:  # a bad path must not end the conversation
            self._say(f"  (cannot save the boxes: {exc})")
            return
        self._say(f"  ({len(turn.grounding.boxes)} box(es) drawn to {self.boxes_out})")

    def _banner(self) -> str:
        session = self.session
        mode = [f"template {session.template}"]
        if self.grounding:
            mode.append("grounding")
        if session.multi_image:
            mode.append("multi-image")
        media = f"\n({session.media.kind} {session.media.source} loaded)" if session.media else ""
        model = f"{session.pipe.model_path} ({session.pipe.config.variant}; {', '.join(mode)})"
        return (f"CogLens chat with {model}.\n"
                "Commands: clear, stop (or Ctrl-D), /image PATH, /video PATH, /save FILE, /help. "
                f"Ctrl-C stops an answer.{media}")

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


@contextlib.contextmanager
def _interrupt_sets(event: threading.Event) -> Iterator[None]:
    """Within the block, Ctrl-C sets ``event`` instead of raising KeyboardInterrupt (signals reach the main
    thread only: elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _decode_failure(error: ValueError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"the line could not be decoded as {error.encoding} ({error.reason}); retype it"
    return f"{error}"


def _path_argument(argument: str) -> str:
    """The rest of the line as one path; quotes (for names with spaces) are removed."""
    argument = argument.strip()
    if argument[:1] in ("'", '"'):
        try:
            parts = shlex.split(argument)
        except ValueError:
            return argument
        return parts[0] if len(parts) == 1 else argument
    return argument
