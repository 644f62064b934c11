"""The browser chat page in headless Chromium (Debian's ``chromium``, driven by Playwright): a typed
message gets a streamed reply, the history goes back with the next turn, the settings reach the
request, the stop button cancels the generation on the server. Screenshots are saved as test
artefacts in ``test-artifacts/`` (or ``$LMFORGE_TEST_ARTIFACTS``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from serve_helpers import health, slowed, wait_until

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LMFORGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("LMFORGE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def engine(dense_ckpt):
    """The tiny model, slowed to ~100 tokens/s so that a click on Stop lands mid-reply whatever
    the machine's speed (the real model decodes a 90-token reply in a fraction of a second)."""
    from lmforge.infer import Engine

    return slowed(Engine.from_checkpoint(dense_ckpt, device="cpu", dtype="float32", overflow="error"), 0.01)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        # A persistent context with a fresh profile directory: nothing of the machine's own profile.
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 760},
        )
        yield context
        context.close()


def _open(browser, server):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests = []

    def capture(route, request):
        body = json.loads(request.post_data)
        requests.append(body)
        body["ignore_eos"] = True  # replies run to max_tokens, so the stop button has time to act
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", capture)
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.startsWith('tiny')", timeout=15000)
    return page, requests, errors


def _finish(page, errors, screenshot: str | None = None):
    """Save the artefact, check the page raised no script errors, close it."""
    if screenshot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    page.close()
    assert not errors, errors


def test_typed_message_gets_a_streamed_reply_and_history_carries_over(browser, server):
    page, requests, errors = _open(browser, server)
    page.fill("#system", "Be brief.")
    page.fill("#max-tokens", "12")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.fill("[data-testid=input]", "Hello, 你好!")
    page.click("[data-testid=send]")
    reply = page.locator(".message.assistant").nth(0)
    page.wait_for_selector(".message.assistant[data-finish]", timeout=30000)
    text = reply.locator(".content").inner_text()
    assert text.strip(), "the reply is empty"
    assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces, as streamed
    assert reply.get_attribute("data-finish") == "length"
    first = requests[0]
    assert first["stream"] is True and first["max_tokens"] == 12 and first["temperature"] == 0
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, 你好!"}]

    page.fill("[data-testid=input]", "Again")
    page.locator("[data-testid=input]").press("Enter")  # Enter sends
    page.wait_for_function("document.querySelectorAll('.message.assistant[data-finish]').length === 2", timeout=30000)
    second = requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == text  # the first reply, exactly as shown
    _finish(page, errors, "chat_page.png")


def test_a_conversation_that_outgrows_the_context_forgets_its_oldest_exchange(browser, server):
    page, requests, errors = _open(browser, server)
    page.fill("#system", "")  # settings persist in the browser's storage: clear the last test's
    page.fill("#max-tokens", "60")  # two exchanges no longer fit the 128-token context
    for i, text in enumerate(["Hi", "Go on"], start=1):
        page.fill("[data-testid=input]", text)
        page.click("[data-testid=send]")
        page.wait_for_function(f"document.querySelectorAll('.message.assistant[data-finish]').length === {i}", timeout=30000)
    assert [len(r["messages"]) for r in requests] == [1, 3, 1]  # refused with the history, answered without it
    assert requests[2]["messages"] == [{"role": "user", "content": "Go on"}]
    assert page.locator(".message.dropped").count() == 2
    assert page.locator(".message.error").count() == 0
    _finish(page, errors)


def test_stop_button_ends_the_reply_and_cancels_on_the_server(browser, server):
    cancelled = health(server)["cancelled"]
    page, _requests, errors = _open(browser, server)
    page.fill("#max-tokens", "90")
    page.fill("[data-testid=input]", "Go")
    page.click("[data-testid=send]")
    page.wait_for_function("Number(document.querySelector('.message.assistant')?.dataset.chunks) >= 2", timeout=30000)
    page.click("[data-testid=stop]")
    page.wait_for_selector(".message.assistant[data-finish=stopped]", timeout=15000)
    assert "(stopped)" in page.locator(".message.assistant").inner_text()
    assert page.is_enabled("[data-testid=send]") and not page.is_enabled("[data-testid=stop]")
    assert wait_until(lambda: health(server)["cancelled"] == cancelled + 1), health(server)
    _finish(page, errors, "chat_page_stopped.png")


def test_errors_from_the_server_are_shown(browser, server):
    page, requests, errors = _open(browser, server)
    page.fill("#system", "")
    page.fill("#max-tokens", "120")  # fits the 128-token context alone, not with this message
    page.fill("[data-testid=input]", "hello " * 12)
    page.click("[data-testid=send]")
    page.wait_for_selector(".message.error", timeout=15000)
    assert "maximum context length" in page.locator(".message.error").inner_text()
    assert page.locator(".message.assistant").count() == 0 and len(requests) == 1
    page.fill("#max-tokens", "5000")  # beyond the context whatever the message: refused before sending
    page.fill("[data-testid=input]", "hi")
    page.click("[data-testid=send]")
    page.wait_for_function("document.querySelectorAll('.message.error').length === 2", timeout=15000)
    assert "below the model's context of 128" in page.locator(".message.error").nth(1).inner_text()
    assert len(requests) == 1
    _finish(page, errors)
