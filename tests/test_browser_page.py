"""The web page in headless Chromium (Playwright): chat streams, an arena vote lands in SQLite, results show.

Debian's Chromium is used (`apt-get install chromium libatomic1`); `playwright install` is never needed.
Without /usr/bin/chromium the test is skipped with the reason; CI installs it.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time

import pytest

CHROMIUM = os.environ.get("QUILL_CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} "
                       "(apt-get install -y --no-install-recommends chromium libatomic1)"),
]
pytest.importorskip("playwright")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture()
def live(tiny_llama, tiny_gpt2, tmp_path):
    from quill.apps.live import serve_in_thread
    from quill.apps.server import create_app
    from quill.decoding.engine import Engine
    gen = {"temperature": 0.8, "max_new_tokens": 24, "seed": 0}
    poet = Engine(*tiny_llama, name="poet", context_length=512, generation=gen, fast=False)
    step = poet.decoder.step
    poet.decoder.step = lambda t: (time.sleep(0.02), step(t))[1]  # slow enough to watch it stream
    base = Engine(*tiny_gpt2, name="base", context_length=512, generation=gen, fast=False)
    db = tmp_path / "arena.sqlite"
    with serve_in_thread(create_app({"poet": poet, "base": base}, arena_db=db)) as url:
        yield url, db


def test_chat_arena_vote_results(page, live, tmp_path):
    from playwright.sync_api import expect
    url, db = live
    page.goto(url)
    expect(page.locator("#model-select option")).to_have_count(2)
    page.select_option("#model-select", "poet")
    page.fill("#chat-input", "Write a poem about the sea")
    expect(page.locator("#chat-form-select option")).to_have_count(7)  # the form picker: none, auto, sonnet, …
    page.select_option("#chat-form-select", "sonnet")
    page.select_option("#chat-form-select", "off")  # plain decoding keeps this test quick (poems: engine tests)
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#chat-send")
    assert sent.value.post_data_json["form"] == "off"
    expect(page.locator(".msg.user")).to_have_text("Write a poem about the sea")
    # streamed: text shows while the answer is still being written (the Stop button is live)
    page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 0 && "
                           "!document.querySelector('#chat-stop').disabled", timeout=20000)
    expect(page.locator(".msg.assistant[data-done=true]")).to_have_count(1, timeout=20000)

    page.click("#tab-arena")
    expect(page.locator("#arena-notice")).to_be_hidden()
    expect(page.locator("#arena-votes")).to_be_hidden()  # nothing to vote on before a battle
    page.fill("#arena-prompt", "The moon over the harbour")
    page.click("#arena-go")
    expect(page.locator("#arena-votes")).to_be_visible(timeout=20000)
    assert page.locator("#arena-name-a").text_content() == ""  # blind until the vote
    page.click("#vote-a")
    expect(page.locator("#arena-reveal")).to_contain_text("Vote saved", timeout=10000)
    shown_a = page.locator("#arena-name-a").text_content().removeprefix("— ")
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT prompt, vote, model_a, model_b FROM battles").fetchall()
    assert rows == [("The moon over the harbour", "a", shown_a, ({"poet", "base"} - {shown_a}).pop())]

    page.click("#tab-results")
    expect(page.locator("#results-table tbody tr")).to_have_count(1)
    expect(page.locator("#results-table tbody tr")).to_contain_text(re.compile(r"base\s*poet\s*1"))
    pairs = re.compile(r"Usable preference pairs \(data.source: arena:DB\): [01]")
    expect(page.locator("#results-pairs")).to_contain_text(pairs)
    page.screenshot(path=str(os.environ.get("QUILL_SCREENSHOT", tmp_path / "page.png")), full_page=True)
