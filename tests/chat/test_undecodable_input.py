"""Bytes that are not UTF-8, typed into `coglens chat` or passed to `coglens ask`, get one clear line: the chat
goes on, ask stops before the model loads."""

from __future__ import annotations

import os
import subprocess

import pexpect
from chat_helpers import child_env, coglens_argv

PROMPT = "You: "


def test_chat_says_an_undecodable_line_could_not_be_decoded_and_goes_on(tiny_pipelines):
    program, *argv = coglens_argv("chat", "--model", "tiny:cogvlm2", "--max-new-tokens", "4")
    child = pexpect.spawn(program, argv, env=child_env(), encoding="utf-8", codec_errors="replace", timeout=90)
    child.expect_exact(PROMPT)
    os.write(child.child_fd, b"caf\xe9 \xff?\n")  # Latin-1 bytes from a misconfigured terminal
    child.expect(r"error: the line could not be decoded: it is not UTF-8 \(the byte 0x[0-9a-f]{2} at character \d+\)")
    child.expect_exact(PROMPT)
    child.sendline("Still there?")  # the session goes on
    child.expect_exact("Model: ")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


def test_ask_refuses_an_undecodable_question_in_one_line():
    argv = [os.fsencode(part) for part in coglens_argv("ask", "--model", "tiny:cogvlm2")] + [b"caf\xe9?"]
    out = subprocess.run(argv, capture_output=True, env=child_env(), timeout=120)
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines() == [
        "error: the question could not be decoded: it is not UTF-8 (the byte 0xe9 at character 3); set the "
        "terminal to UTF-8 (e.g. LANG=C.UTF-8) or retype it"
    ]
