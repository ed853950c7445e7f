"""The chat page at / in headless Chromium: type a message, send it, watch the reply stream in.

Needs the `playwright` package and a Chromium binary (Debian's `chromium` package, or
CORELM_CHROMIUM=/path/to/chrome); playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from test_server import KEY, ServerProcess

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def chromium_path() -> str:
    for candidate in (os.environ.get("CORELM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.skip("no Chromium binary found (apt-get install chromium, or set CORELM_CHROMIUM)")


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--api-key", KEY, "--parallel", "2", "--ctx", "512")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page():
    executable = chromium_path()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser.new_page()
        browser.close()


def test_chat_page_streams_a_reply(page, server):
    # Count the text updates of the reply as they happen: more than one means it streamed.
    page.add_init_script(
        """window.__updates = 0;
        new MutationObserver(() => {
          const m = document.querySelector('.msg.assistant');
          if (m && m.textContent) window.__updates++;
        }).observe(document, {subtree: true, childList: true, characterData: true});"""
    )
    page.goto(server.url + "/")
    page.fill("#key", KEY)
    page.dispatch_event("#key", "change")
    sync_api.expect(page.locator("#model")).to_have_text("stories260K", timeout=10_000)
    page.fill("#max_tokens", "200")
    page.fill("#input", "Tell me a story about a cat.")
    page.click("#send")
    reply = page.locator(".msg.assistant").first
    sync_api.expect(reply).to_have_attribute("data-done", "true", timeout=20_000)
    assert page.locator(".msg.user").first.text_content() == "Tell me a story about a cat."
    assert len(reply.text_content().strip()) > 20
    assert page.evaluate("window.__updates") > 2
    # stories260K has no chat template: the reply ends at 200 tokens or at a turn boundary (a blank line)
    stats = page.locator(".stats").first.text_content()
    assert re.search(r"\b\d+ tokens, [\d.]+ tok/s .*finish: (length|stop)", stats), stats
    assert page.locator(".msg.error").count() == 0


def test_chat_page_keeps_a_conversation_within_the_context(page, server):
    # Two long replies overflow the 512-token context: the page retries with the room left,
    # then without the oldest turns, instead of showing an error.
    page.goto(server.url + "/")
    page.fill("#key", KEY)
    page.dispatch_event("#key", "change")
    page.fill("#max_tokens", "240")
    page.fill("#temperature", "0")  # greedy: a sampled reply may stop at a turn boundary before it fills the context
    for i, text in enumerate(["Tell me a story.", "And then?", "What happened next?"]):
        page.fill("#input", text)
        page.press("#input", "Enter")
        sync_api.expect(page.locator(".msg.assistant").nth(i)).to_have_attribute("data-done", "true", timeout=20_000)
    assert page.locator(".msg.error").count() == 0
    assert all(len(t) > 20 for t in page.locator(".msg.assistant").all_text_contents())
    assert "oldest messages no longer fit the context" in " ".join(page.locator(".stats").all_text_contents())


def test_chat_page_shows_errors(page, server):
    page.goto(server.url + "/")
    page.fill("#key", "wrong-key")
    page.dispatch_event("#key", "change")
    page.fill("#input", "Hello")
    page.click("#send")
    sync_api.expect(page.locator(".msg.error")).to_contain_text("API key", timeout=10_000)
