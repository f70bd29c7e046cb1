"""``coglens web`` in a real headless Chromium: upload, ask, watch the answer stream, see the boxes.

Needs Debian's chromium and chromium-driver (``bash .ci/browser.sh``).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from chat_helpers import GROUNDING_ANSWER
from PIL import Image, ImageChops

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1280,1100")
# Records every text the last answer bubble shows, however fast the stream goes.
WATCH_ANSWER_JS = """
window.seenAnswers = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('#chatbot [data-testid=bot]');
  const text = bubbles.length ? bubbles[bubbles.length - 1].innerText.trim() : '';
  if (text && window.seenAnswers[window.seenAnswers.length - 1] !== text) window.seenAnswers.push(text);
}).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "chromium and chromedriver are not installed; run: bash .ci/browser.sh"
        if os.environ.get("CI") == "true":  # CI installs them: a missing browser must not pass silently
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield session
    session.quit()


@contextmanager
def web_demo(model: str | Path) -> Iterator[str]:
    from coglens.chat.web import MAX_QUEUE, build_demo
    from coglens.engine.scheduler import Scheduler
    from coglens.pipeline import Pipeline

    pipe = Pipeline.load(model)
    scheduler = Scheduler(pipe.engine, max_queue=MAX_QUEUE, request_timeout_s=120)
    scheduler.start()
    demo = build_demo(pipe, scheduler).queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True)
    try:
        yield url
    finally:
        demo.close()
        scheduler.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def find(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def answers(browser) -> list[str]:
    """The answer bubbles' texts, read in one script (the chat re-renders while it streams)."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#chatbot [data-testid=bot]')].map(b => b.innerText.trim())")


def image_sources(browser, selector: str) -> list[str]:
    return browser.execute_script(
        f"return [...document.querySelectorAll('{selector}')].map(i => i.src).filter(Boolean)")


def upload_and_ask(browser, url: str, media: Path, question: str, preview: str) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.get(url)
    upload = wait_for(lambda: find(browser, "#media input[type=file]"), what="the upload field")[0]
    upload.send_keys(str(media))
    wait_for(lambda: find(browser, preview), what="the uploaded media's preview")
    browser.execute_script(WATCH_ANSWER_JS)
    box = find(browser, "#question textarea")[0]
    box.send_keys(question)
    box.send_keys(Keys.ENTER)


def test_grounding_answer_streams_and_shows_the_boxed_image(browser, grounding_model, scene_image,
                                                            artifacts_dir):
    from coglens.grounding import draw_boxes, parse_boxes

    with web_demo(grounding_model) as url:
        upload_and_ask(browser, url, scene_image, "Where are the animals?", "#media img")
        wait_for(lambda: GROUNDING_ANSWER in answers(browser), what="the whole answer")
        seen = browser.execute_script("return window.seenAnswers")
        partial = [text for text in seen if text != GROUNDING_ANSWER]
        assert partial and all(GROUNDING_ANSWER.startswith(text) for text in partial), seen  # streamed

        source = wait_for(lambda: image_sources(browser, "#boxes img"), what="the boxed image")[0]
        with urllib.request.urlopen(source) as response:
            shown = Image.open(io.BytesIO(response.read())).convert("RGB")
        scene = Image.open(scene_image).convert("RGB")
        expected = draw_boxes(scene, parse_boxes(GROUNDING_ANSWER))
        assert ImageChops.difference(shown, expected).getbbox() is None
        shown.save(artifacts_dir / "web_grounding_boxes.png")
        browser.save_screenshot(str(artifacts_dir / "web_demo_grounding.png"))

        find(browser, "#clear")[0].click()
        wait_for(lambda: not answers(browser) and not image_sources(browser, "#boxes img"),
                 what="the cleared chat")


def test_video_upload_and_answer_on_the_tiny_video_model(browser, video_clip, artifacts_dir):
    with web_demo("tiny:cogvlm2-video") as url:
        upload_and_ask(browser, url, video_clip, "What happens in the video?", "#media video")
        wait_for(lambda: [text for text in answers(browser) if text], what="an answer")
        stable = wait_for(lambda: settled(browser), what="the answer to finish")
        assert stable
        browser.save_screenshot(str(artifacts_dir / "web_demo_video.png"))


def settled(browser) -> list[str] | None:
    """The answers, once they have not changed for a second (the stream has ended)."""
    before = answers(browser)
    time.sleep(1.0)
    return before if before and answers(browser) == before else None
