"""``coglens chat`` driven through a pseudo-terminal, as a person would use it."""

from __future__ import annotations

import json

import pexpect
from chat_helpers import GROUNDING_ANSWER, LOOPING_ANSWER, child_env, coglens_argv
from PIL import Image, ImageChops
from testkit import default_sigint

from coglens.engine import SamplingParams
from coglens.grounding import draw_boxes, parse_boxes

PROMPT = "You: "


def spawn_chat(*args: str) -> pexpect.spawn:
    program, *argv = coglens_argv("chat", *args)
    child = pexpect.spawn(program, argv, env=child_env(), encoding="utf-8", timeout=90, dimensions=(40, 400),
                          preexec_fn=default_sigint)
    child.expect_exact(PROMPT)
    return child


def ask(child: pexpect.spawn, question: str) -> str:
    """Send a question and return what was printed after 'Model: ' up to the next prompt."""
    child.sendline(question)
    child.expect_exact("Model: ")
    child.expect_exact(PROMPT)
    return child.before


def finish(child: pexpect.spawn) -> int:
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_chat_session_history_commands_and_errors(scene_image, tmp_path, tiny_pipelines):
    other = tmp_path / "other.png"
    Image.new("RGB", (50, 40), (10, 200, 30)).save(other)
    transcript = tmp_path / "chat.json"
    child = spawn_chat("--model", "tiny:cogvlm2", "--image", str(scene_image), "--max-new-tokens", "12")
    first = ask(child, "What is in the image?")
    follow_up = ask(child, "And what colour is it?")
    assert first.strip() and follow_up.strip()

    child.sendline(f"/image {tmp_path / 'missing.png'}")
    child.expect(r"error: [^\r\n]*missing\.png' does not exist")  # a clear line, and the session goes on
    child.expect_exact(PROMPT)
    child.sendline(f"/image {other}")
    child.expect_exact("a new conversation starts")
    child.expect_exact(PROMPT)
    ask(child, "Describe it.")
    child.sendline("clear")
    child.expect_exact("(history cleared)")
    child.expect_exact(PROMPT)
    ask(child, "Describe it again.")
    child.sendline("/bogus")
    child.expect_exact("error: unknown command '/bogus'")
    child.expect_exact(PROMPT)
    child.sendline(f"/save {transcript}")
    child.expect_exact("transcript saved")
    child.expect_exact(PROMPT)
    assert finish(child) == 0

    saved = json.loads(transcript.read_text())
    turns = saved["turns"]
    assert [t["query"] for t in turns] == ["What is in the image?", "And what colour is it?", "Describe it.",
                                          "Describe it again."]
    assert [t["conversation"] for t in turns] == [1, 1, 2, 3]
    assert [t["image"] for t in turns] == [str(scene_image)] * 2 + [str(other)] * 2
    assert all(t["finish_reason"] == "length" for t in turns)

    # the same prompts in-process give the same greedy answers: history was kept, then dropped as asked
    pipe = tiny_pipelines("cogvlm2", device=None)  # the device `coglens chat` picks
    params = SamplingParams(max_new_tokens=12)
    expected = [
        pipe.ask("What is in the image?", images=[scene_image], params=params).text,
        pipe.ask("And what colour is it?", images=[scene_image], params=params,
                 history=[("What is in the image?", turns[0]["answer"])]).text,
        pipe.ask("Describe it.", images=[other], params=params).text,
        pipe.ask("Describe it again.", images=[other], params=params).text,
    ]
    assert [t["answer"] for t in turns] == expected


def test_ctrl_c_stops_a_long_answer_but_not_the_session(looping_model, tmp_path):
    transcript = tmp_path / "interrupted.json"
    child = spawn_chat("--model", str(looping_model), "--max-new-tokens", "60000")
    child.sendline("Count for me.")
    child.expect_exact("Model: ")
    child.expect_exact(LOOPING_ANSWER * 3)  # streamed: seen while the answer is still being written
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(PROMPT)
    child.sendintr()  # at the prompt, Ctrl-C only explains how to quit
    child.expect_exact("type stop or press Ctrl-D to quit")
    child.sendline(f"/save {transcript}")
    child.expect_exact(PROMPT)
    child.sendline("stop")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    (turn,) = json.loads(transcript.read_text())["turns"]
    assert turn["finish_reason"] == "abort"
    assert turn["answer"].startswith(LOOPING_ANSWER * 3)
    assert len(turn["answer"]) < len(LOOPING_ANSWER) * 60000 / 11  # far from the full answer


def test_grounding_lists_and_draws_the_boxes_of_the_answer(grounding_model, scene_image, tmp_path):
    boxes_png = tmp_path / "boxes.png"
    child = spawn_chat("--model", str(grounding_model), "--grounding", "--image", str(scene_image),
                       "--boxes-out", str(boxes_png))
    child.sendline("Where are the animals?")
    child.expect_exact("Model: " + GROUNDING_ANSWER)
    child.expect_exact("[1] a cat [[086,560,400,900]] = pixels (55, 269)-(256, 432)")
    child.expect_exact("[2] a dog [[520,150,880,600]] = pixels (333, 72)-(563, 288)")
    child.expect_exact(f"2 box(es) drawn to {boxes_png}")
    child.expect_exact(PROMPT)
    child.sendline("stop")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    drawn = Image.open(boxes_png).convert("RGB")
    scene = Image.open(scene_image).convert("RGB")
    assert drawn.size == scene.size
    assert ImageChops.difference(drawn, draw_boxes(scene, parse_boxes(GROUNDING_ANSWER))).getbbox() is None
    assert ImageChops.difference(drawn, scene).getbbox() is not None


def test_video_chat_on_the_tiny_video_model(video_clip, scene_image, tmp_path):
    transcript = tmp_path / "video.json"
    child = spawn_chat("--model", "tiny:cogvlm2-video", "--video", str(video_clip), "--max-new-tokens", "6")
    answer = ask(child, "What happens in the video?")
    assert answer.strip()
    child.sendline(f"/image {scene_image}")
    child.expect_exact("is a video model")
    child.expect_exact(PROMPT)
    child.sendline(f"/save {transcript}")
    child.expect_exact(PROMPT)
    assert finish(child) == 0
    (turn,) = json.loads(transcript.read_text())["turns"]
    assert turn["video"] == str(video_clip) and turn["image"] is None
