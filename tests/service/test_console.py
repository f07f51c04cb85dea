"""The web console in a real browser: Debian's headless Chromium driven by Playwright, against one real
`tuneship service` subprocess (its vLLM, training subprocesses and reports).

The tests run in file order and share the service. A failing test leaves ``failure.png`` in its
tmp directory. With ``TUNESHIP_SCREENSHOTS=DIR`` set, the main pages are saved there as small PNGs
(the README's screenshots: ``TUNESHIP_SCREENSHOTS=docs/screenshots pytest tests/service/test_console.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import TICKETS
from service.test_service import bad_rows

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright cannot download its own here
WIDTH = 1000  # screenshots' width in pixels
JOB_TIMEOUT = 600_000  # ms: a job trains, then its A/B and fidelity reports run


def _ensure_chromium() -> None:
    """Install Debian's ``chromium`` package when it is missing (root, apt-get)."""
    if CHROMIUM.is_file():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"no {CHROMIUM}; install Debian's chromium package (needs root)")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0 or not CHROMIUM.is_file():
        pytest.fail(f"apt-get install chromium failed: {done.stderr[-300:]}")


@pytest.fixture(scope="module")
def browser():
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request, tmp_path):
    """A fresh browser context (no cookies) and its page; a screenshot of it when the test fails."""
    context = browser.new_context(viewport={"width": WIDTH, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def ui(service) -> str:
    return service.url.removesuffix("/v1") + "/ui"


def shot(page, name: str) -> None:
    """Save the page as ``TUNESHIP_SCREENSHOTS/NAME.png`` (palette PNG, a few tens of KB), when asked."""
    folder = os.environ.get("TUNESHIP_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    image = Image.open(path).convert("RGB")
    if image.height > 1500:  # a long page: its top is what a reader needs
        image = image.crop((0, 0, image.width, 1500))
    image.quantize(colors=32, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def login(page, ui: str, key: str, then: str = "/ui/playground") -> None:
    page.goto(f"{ui}/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"**{then}")


def nav_links(page) -> list[str]:
    return page.get_by_role("navigation", name="Console").get_by_role("link").all_inner_texts()


def test_login_roles_cookie_flags_csrf_and_logout(page, ui, service):
    # Not logged in: a page sends you to the login form, and back after it.
    page.goto(f"{ui}/jobs")
    assert "/ui/login?next=/ui/jobs" in page.url
    page.get_by_label("API key").fill("sk-ts-not-a-key")
    with page.expect_response(f"{ui}/login") as refused:
        page.get_by_role("button", name="Log in").click()
    assert refused.value.status == 401
    assert "frame-ancestors 'none'" in refused.value.headers["content-security-policy"]  # not framed
    assert "Incorrect API key" in page.get_by_role("alert").inner_text()

    login(page, ui, service.user_key)
    assert nav_links(page) == ["Playground", "Models"]  # a user key calls models: no jobs
    assert "Registry (coming later)" in page.get_by_role("navigation").inner_text()
    page.goto(f"{ui}/jobs")
    assert "for admin keys" in page.get_by_role("alert").inner_text()

    cookie = next(c for c in page.context.cookies() if c["name"] == "tuneship_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert service.user_key not in cookie["value"]  # the key itself is never in the cookie
    assert "tuneship_session" not in page.evaluate("document.cookie")  # scripts cannot read it

    # A POST without the session's CSRF token is refused, with the session cookie sent along.
    no_token = page.request.post(f"{ui}/logout", form={"x": "1"})
    assert no_token.status == 403 and "CSRF" in no_token.text()
    wrong = page.request.post(f"{ui}/logout", form={"csrf": "forged"})
    assert wrong.status == 403
    chat = page.request.post(f"{ui}/api/chat", data={"model": "tiny-base", "messages": []})
    assert chat.status == 403 and chat.json()["error"]["message"]
    page.goto(f"{ui}/models")
    assert "Log out" in page.get_by_role("button", name="Log out").inner_text()  # still logged in

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/ui/login")
    page.goto(f"{ui}/jobs")
    assert "/ui/login" in page.url
    page.get_by_label("API key").fill(service.admin_key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/ui/jobs")  # back where it was going
    assert nav_links(page) == ["Playground", "Models", "Jobs"]


def unlabelled_fields(page) -> list[str]:
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea'))
             .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
             .map(e => e.outerHTML)"""
    )


def test_keyboard_only_login_and_every_field_labelled(page, ui, service):
    page.goto(f"{ui}/login")
    assert unlabelled_fields(page) == []
    page.locator("body").focus()
    for _ in range(5):  # the skip link, then the key field
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "key":
            break
    assert page.evaluate("document.activeElement.id") == "key"
    page.keyboard.type(service.admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/playground")
    assert unlabelled_fields(page) == []
    # The nav's links are reachable by Tab and followed with Enter.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Jobs":
            break
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/jobs")
    assert unlabelled_fields(page) == []


def upload(page, ui: str, path: Path) -> str:
    """Upload ``path`` from the jobs page; its file page's URL."""
    page.goto(f"{ui}/jobs")
    page.get_by_label("File (JSONL").set_input_files(str(path))
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/ui/files/file-*")
    return page.url


def test_a_bad_upload_shows_its_line_errors(page, ui, service, tmp_path):
    login(page, ui, service.admin_key)
    upload(page, ui, bad_rows(tmp_path / "bad.jsonl"))
    refused = page.get_by_text("Refused by the preflight")
    refused.wait_for(timeout=180_000)  # the page follows the check live
    problems = page.locator(".problems li").all_inner_texts()
    assert any(p.startswith("bad.jsonl:2:") for p in problems), problems
    assert any(p.startswith("bad.jsonl:4:") for p in problems), problems
    assert str(service.home) not in page.content()  # the client's filename, never the stored path
    shot(page, "upload-errors")


def test_a_job_created_from_the_page_succeeds_with_its_loss_chart_and_reports(
    page, ui, service, train_file, validation_file
):
    login(page, ui, service.admin_key)
    for path in (train_file, validation_file):
        upload(page, ui, path)
        page.get_by_text("Passed the preflight").wait_for(timeout=180_000)
    page.goto(f"{ui}/jobs")
    page.get_by_label("Training file", exact=True).select_option(_file_id(page, "train.jsonl"))
    page.get_by_label("Validation file (gives").select_option(_file_id(page, "valid.jsonl"))
    page.get_by_label("Method").select_option("supervised")
    page.get_by_label("Epochs").fill("2")  # 16 steps: its greedy answers move off the base's
    page.get_by_label("Suffix").fill("console")
    page.get_by_label("Seed (blank: random)").fill("7")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url("**/ui/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    page.locator("#job-status", has_text="running").wait_for(timeout=180_000)
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=JOB_TIMEOUT)  # followed live

    assert f"ft:tiny-base:console:{job_id}" in page.locator(".facts").inner_text()
    series = page.locator("#loss-chart polyline").evaluate_all("ps => ps.map(p => p.dataset.series)")
    assert series == ["train loss", "validation loss"]
    assert page.locator("#loss-chart polyline").first.get_attribute("points").count(",") == 16  # steps
    assert page.locator("table").first.locator("tbody tr").count() >= 1  # checkpoints
    assert "The job has successfully completed" in page.locator(".events").inner_text()
    shot(page, "job")

    page.get_by_role("link", name="A/B report").click()
    page.wait_for_url(f"**/ui/jobs/{job_id}/ab")
    assert page.locator("#interval-chart svg circle").count() >= 1  # the reports' own chart
    assert page.locator(".items tbody tr").count() == 12  # every validation item, both answers
    verdict = json.loads(service.client().files.content(_result(service, job_id, "ab_results.json")).text)
    first = verdict["comparisons"][job_id][0]
    assert first["verdict"] in page.locator("table").first.inner_text()
    shot(page, "ab-report")
    improved = first["improved"]
    page.get_by_label("Outcome").select_option("improved")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**outcome=improved**")
    assert page.locator(".items tbody tr.improved").count() == improved

    page.goto(f"{ui}/jobs/{job_id}/fidelity")
    fidelity = json.loads(service.client().files.content(_result(service, job_id, "fidelity.json")).text)
    assert f"Verdict: {fidelity['verdict']}" in page.locator(".verdict").inner_text()
    shot(page, "fidelity-report")


def _file_id(page, filename: str) -> str:
    return page.locator("#training_file option", has_text=filename).first.get_attribute("value")


def _result(service, job_id: str, filename: str) -> str:
    client = service.client()
    job = client.fine_tuning.jobs.retrieve(job_id)
    return next(f for f in job.result_files if client.files.retrieve(f).filename == filename)


def test_the_playground_streams_base_and_fine_tuned_answers_side_by_side(page, ui, service, tmp_path):
    service.wait_ready()
    jobs = service.client().fine_tuning.jobs.list().data
    model = next(j.fine_tuned_model for j in jobs if j.status == "succeeded")
    login(page, ui, service.user_key)  # a user key may call every model
    page.goto(f"{ui}/models")
    page.locator(f'a[href="/ui/playground?model={quote(model, safe="")}"]').click()
    page.wait_for_url("**/ui/playground?model=*")
    assert page.get_by_label("Model 1", exact=True).input_value() == "tiny-base"
    assert page.get_by_label("Model 2", exact=True).input_value() == model
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("12")
    stats = [page.locator(f"#panel-{k} .stats") for k in (0, 1)]
    rows = (TICKETS / "train.jsonl").read_text().splitlines()[:3]
    for row in rows:  # training prompts, until the two answers differ (the first one, as a rule)
        prompt = json.loads(row)["messages"][0]["content"]
        page.get_by_role("button", name="New chat").click()
        page.get_by_label("Message", exact=True).fill(prompt)
        page.get_by_role("button", name="Send").click()
        for stat in stats:
            page.wait_for_function("e => e.dataset.finish !== ''", arg=stat.element_handle(), timeout=60_000)
        answers = [page.locator(f"#panel-{k} .turn.assistant").inner_text() for k in (0, 1)]
        if answers[0] != answers[1]:
            break
    # The tiny random base may end its answer at once; the fine-tuned model answers, differently.
    assert answers[1].strip() and answers[0] != answers[1], answers
    for stat in stats:
        assert stat.get_attribute("data-finish") in ("length", "stop")
        assert float(stat.get_attribute("data-ttft")) > 0 and float(stat.get_attribute("data-tps")) > 0
        assert "TTFT" in stat.inner_text() and "tokens/s" in stat.inner_text()
    assert stats[1].get_attribute("data-finish") == "length"  # 12 tokens, as asked

    # A second turn, sent from the keyboard: each panel keeps its own conversation.
    page.get_by_label("Message", exact=True).fill("And then?")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        """() => [0, 1].every(k => document.querySelectorAll(`#panel-${k} .turn.assistant`).length === 2
                 && document.getElementById(`panel-${k}`).getAttribute('aria-busy') === 'false')"""
    )
    assert page.locator("#panel-0 .turn.user").count() == 2
    shot(page, "playground")

    # "Copy as OpenAI SDK code" writes a script that runs unchanged against the service.
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Model 1", exact=True).select_option(model)
    page.get_by_label("Message", exact=True).fill(prompt)
    page.get_by_role("button", name="Copy as OpenAI SDK code").click()
    code = page.get_by_label("OpenAI SDK code").input_value()
    assert f'model="{model}"' in code and "temperature=0" in code and "max_tokens=12" in code
    script = tmp_path / "chat.py"
    script.write_text(code)
    env = {**os.environ, "TUNESHIP_API_KEY": service.user_key}
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    direct = service.client(service.user_key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0, top_p=1
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == direct.choices[0].message.content.strip() != ""


def test_cancel_a_job_from_its_page(page, ui, service):
    login(page, ui, service.admin_key)
    page.goto(f"{ui}/jobs")
    page.get_by_label("Epochs").fill("0")  # refused as the API refuses it, the form kept
    page.get_by_label("Suffix").fill("again")
    page.get_by_role("button", name="Create job").click()
    assert "Job refused" in page.get_by_role("alert").inner_text() and "n_epochs" in page.content()
    assert page.get_by_label("Suffix").input_value() == "again"
    page.get_by_label("Epochs").fill("3")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url("**/ui/jobs/ftjob-*")
    page.get_by_role("button", name="Cancel job").click()
    page.locator("#job-status", has_text="cancelled").wait_for()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    page.goto(f"{ui}/jobs")
    shot(page, "jobs")
