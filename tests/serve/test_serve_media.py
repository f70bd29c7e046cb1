"""Media safety: data URLs in the five image formats, local paths confined to one folder, remote URLs that
never reach private addresses (checked after DNS and at every redirect), and size/time limits."""

from __future__ import annotations

import asyncio
import http.server
import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import IMAGE, data_url, image_bytes

from coglens.processing.image import load_image, preprocess_image
from coglens.serve.errors import (
    ForbiddenMediaError,
    InvalidRequestError,
    LimitExceededError,
    MediaFetchError,
    ServeError,
    UnsupportedMediaTypeError,
)
from coglens.serve.fetch import RemoteFetcher, is_public_address
from coglens.serve.limits import ServeLimits
from coglens.serve.media import MediaBudget, MediaLoader
from coglens.serve.messages import MediaRef

SIZE = 56


def _image(loader: MediaLoader, url: str) -> torch.Tensor:
    return asyncio.run(loader.image(MediaRef("image", url, "messages[0].content[1]"), SIZE))


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                 ("WEBP", "image/webp"), ("BMP", "image/bmp")])
def test_data_urls_of_every_format_decode_like_load_image(fmt, media_type):
    data = image_bytes(fmt)
    expected = preprocess_image(load_image(data), SIZE)
    assert torch.equal(_image(MediaLoader(ServeLimits()), data_url(data, media_type)), expected)


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((250, 0, 0), (0, 0, 250))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    first = io.BytesIO()
    frames[0].save(first, format="GIF")
    got = _image(MediaLoader(ServeLimits()), data_url(out.getvalue(), "image/gif"))
    assert torch.equal(got, preprocess_image(load_image(first.getvalue()), SIZE))
    assert got[0].mean() > got[2].mean()  # red, not the blue second frame


def test_other_formats_and_non_images_are_refused_before_decoding():
    loader = MediaLoader(ServeLimits())
    with pytest.raises(UnsupportedMediaTypeError, match="PNG, JPEG, WebP, GIF or BMP"):
        _image(loader, data_url(image_bytes("TIFF"), "image/tiff"))
    with pytest.raises(UnsupportedMediaTypeError, match="where an image was expected"):
        _image(loader, data_url(image_bytes("PNG"), "video/mp4"))


def test_pixel_limit_names_its_flag():
    loader = MediaLoader(ServeLimits(max_image_pixels=1000))
    with pytest.raises(LimitExceededError, match="--max-image-pixels"):
        _image(loader, data_url(image_bytes("PNG", size=(40, 30)), "image/png"))


def test_local_paths_stay_inside_the_allowed_folder(media_dir: Path):
    loader = MediaLoader(ServeLimits(), local_root=media_dir)
    expected = preprocess_image(load_image(IMAGE), SIZE)
    assert torch.equal(_image(loader, "red.png"), expected)
    assert torch.equal(_image(loader, str(media_dir / "red.png")), expected)
    assert torch.equal(_image(loader, (media_dir / "red.png").as_uri()), expected)
    for escape in ("../secret.png", str(media_dir.parent / "secret.png"), "escape.png", "/etc/passwd",
                   "sub/../../secret.png"):
        with pytest.raises(ForbiddenMediaError, match="outside the folder"):
            _image(loader, escape)


def test_local_and_remote_media_are_off_unless_enabled():
    loader = MediaLoader(ServeLimits())
    with pytest.raises(ForbiddenMediaError, match="--allow-local-media"):
        _image(loader, str(IMAGE))
    with pytest.raises(ForbiddenMediaError, match="--allow-remote-media"):
        _image(loader, "https://example.com/cat.png")


def test_local_file_size_limit(media_dir: Path):
    loader = MediaLoader(ServeLimits(max_image_bytes=100), local_root=media_dir)
    with pytest.raises(LimitExceededError, match="--max-image-mb"):
        _image(loader, "red.png")


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("127.0.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False), ("::1", False), ("fe80::1", False),
    ("fc00::1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False), ("ff02::1", False),
])
def test_address_policy(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes, float]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0.0))
        time.sleep(delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    png = IMAGE.read_bytes()
    _Handler.routes = {
        "/red.png": (200, {"Content-Type": "image/png"}, png, 0.0),
        "/big.png": (200, {}, png * 50, 0.0),
        "/slow.png": (200, {}, png, 3.0),
        "/hop": (302, {"Location": "/red.png"}, b"", 0.0),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"", 0.0),
        "/loop": (302, {"Location": "/loop"}, b"", 0.0),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield url
    httpd.shutdown()


def _fetch(url: str, *, allow_loopback: bool = True, max_bytes: int = 1 << 20, timeout_s: float = 5.0) -> bytes:
    def policy(address):
        return address == ipaddress.ip_address("127.0.0.1") if allow_loopback else is_public_address(address)

    fetcher = RemoteFetcher(timeout_s=timeout_s, max_redirects=2, allowed=policy)
    return asyncio.run(fetcher.fetch(url, max_bytes=max_bytes, limit_name="max_image_bytes", where="image_url"))


def test_remote_fetch_follows_redirects_within_the_policy(origin):
    assert _fetch(f"{origin}/hop") == IMAGE.read_bytes()
    with pytest.raises(ForbiddenMediaError, match="169.254.169.254"):
        _fetch(f"{origin}/to-metadata")  # a redirect to the cloud metadata address is checked like any hop
    with pytest.raises(MediaFetchError, match="--max-redirects"):
        _fetch(f"{origin}/loop")
    with pytest.raises(MediaFetchError, match="HTTP 404"):
        _fetch(f"{origin}/missing.png")


def test_remote_fetch_limits(origin):
    with pytest.raises(LimitExceededError, match="--max-image-mb"):
        _fetch(f"{origin}/big.png", max_bytes=10_000)
    with pytest.raises(MediaFetchError, match="--fetch-timeout"):
        _fetch(f"{origin}/slow.png", timeout_s=0.5)


def test_private_targets_are_refused_after_resolving(origin):
    port = origin.rsplit(":", 1)[1]
    for url in (f"{origin}/red.png", f"http://localhost:{port}/red.png", "http://10.0.0.1/x.png",
                f"http://[::1]:{port}/red.png", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(ForbiddenMediaError, match="private, loopback"):
            _fetch(url, allow_loopback=False)


def test_server_refuses_loopback_media_urls_and_path_escapes(server, origin):
    for url, words in ((f"{origin}/red.png", "127.0.0.1"), ("../secret.png", "outside the folder"),
                       ("escape.png", "outside the folder"), ("ftp://host/x.png", "unsupported URL scheme")):
        body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                          {"type": "image_url", "image_url": {"url": url}}]}]}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=server.headers)
        assert response.status_code in (400, 403), response.text
        assert words in response.json()["error"]["message"]
        assert response.json()["error"]["param"] == "messages[0].content[1]"


@pytest.mark.parametrize("url", ["red\x00.png", "file:///red%00.png", "sub/%00/../red.png\x00"])
def test_nul_in_a_local_path_is_a_400_naming_the_part(media_dir: Path, url: str):
    loader = MediaLoader(ServeLimits(), local_root=media_dir)
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[1\]: the image path .* NUL") as caught:
        _image(loader, url)
    assert caught.value.param == "messages[0].content[1]"


@pytest.mark.parametrize("url", ["\ud800.png", "x" * 5000 + ".png"], ids=["lone-surrogate", "name-too-long"])
def test_paths_the_os_cannot_take_are_a_400(media_dir: Path, url: str):
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[1\]: cannot use the image path"):
        _image(MediaLoader(ServeLimits(), local_root=media_dir), url)


def test_png_signature_with_a_garbage_body_is_a_400():
    loader = MediaLoader(ServeLimits())
    for data in (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * 5):
        with pytest.raises(InvalidRequestError, match="corrupt or truncated"):
            _image(loader, data_url(data, "image/png"))


def _budgeted(loader: MediaLoader, budget: MediaBudget, data: bytes) -> torch.Tensor:
    ref = MediaRef("image", data_url(data, "image/png"), "messages[0].content[1]")
    return asyncio.run(loader.image(ref, SIZE, budget=budget))


def test_request_pixel_budget_counts_every_image_of_the_request():
    loader = MediaLoader(ServeLimits(max_image_pixels=2000, max_request_pixels=3000))
    budget = loader.budget()
    _budgeted(loader, budget, image_bytes("PNG", size=(40, 30)))  # 1200 pixels
    _budgeted(loader, budget, image_bytes("PNG", size=(40, 30)))  # 2400
    assert budget.used == 2400
    with pytest.raises(LimitExceededError, match=r"1200 more pixels .* after 2400 already decoded .*"
                                                  r"limit of 3000 pixels \(raise it with --max-request-pixels\)"):
        _budgeted(loader, budget, image_bytes("PNG", size=(40, 30)))
    assert budget.used == 2400  # a refused image is not counted
    _budgeted(loader, budget, image_bytes("PNG", size=(20, 30)))  # exactly the 600 left
    assert budget.remaining == 0
    # A fresh budget per request; an image over the per-image limit still names that limit.
    with pytest.raises(LimitExceededError, match="--max-image-pixels"):
        _budgeted(loader, loader.budget(), image_bytes("PNG", size=(50, 50)))


def test_request_budget_is_checked_from_the_header_before_decoding():
    # A PNG that declares 100x100 but holds no pixel data: decoding it would fail as corrupt.
    header_only = Image.new("RGB", (100, 100))
    data = io.BytesIO()
    header_only.save(data, "PNG")
    truncated = data.getvalue()[:60]
    loader = MediaLoader(ServeLimits(max_request_pixels=9999))
    with pytest.raises(LimitExceededError, match="--max-request-pixels"):
        _budgeted(loader, loader.budget(), truncated)


# --- property tests: any URL string or payload ends in pixels or a ServeError (a 4xx), never a 500 -------------

_SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"BM",
               b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3", b"RIFF\x00\x01\x00\x00AVI LIST"]
_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load_any(loader: MediaLoader, kind: str, url: str) -> None:
    ref = MediaRef(kind, url, "messages[0].content[1]")
    try:
        pixels = asyncio.run(loader.image(ref, SIZE) if kind == "image" else loader.video(ref, SIZE))
    except ServeError as exc:
        assert 400 <= exc.status_code < 500 and exc.param == "messages[0].content[1]"
        return
    assert pixels.shape[-3:] == (3, SIZE, SIZE) and pixels.dtype == torch.float32


@_FUZZ
@given(kind=st.sampled_from(["image", "video"]),
       payload=st.tuples(st.sampled_from(_SIGNATURES), st.binary(max_size=300)).map(b"".join) | st.binary(max_size=64),
       media_type=st.sampled_from(["image/png", "video/mp4", "application/octet-stream", ""]))
def test_any_data_url_payload_is_pixels_or_a_4xx(kind, payload, media_type):
    _load_any(MediaLoader(ServeLimits()), kind, data_url(payload, media_type))


@_FUZZ
@given(kind=st.sampled_from(["image", "video"]),
       url=st.text(max_size=80) | st.text(max_size=80).map(lambda text: "data:" + text)
       | st.text(max_size=80).map(lambda text: "file://" + text))
def test_any_url_string_is_pixels_or_a_4xx(media_dir: Path, kind, url):
    _load_any(MediaLoader(ServeLimits(), local_root=media_dir), kind, url)


def test_malformed_urls_are_a_400():
    loader = MediaLoader(ServeLimits())
    with pytest.raises(InvalidRequestError, match=r"malformed URL 'http://\[::1' \(Invalid IPv6 URL\)"):
        _image(loader, "http://[::1")
    for url, words in (("http://example.com:port/x.png", "Port could not be cast"),
                       ("http://example.com:99999/x.png", "Port out of range")):
        with pytest.raises(MediaFetchError, match=f"malformed URL .*{words}"):
            _fetch(url)
