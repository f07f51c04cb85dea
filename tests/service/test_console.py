"""The web console in a real browser: Debian's headless Chromium driven by Playwright, against one real
`tuneship service` subprocess (its vLLM, training subprocesses and reports).

The tests run in file order and share the service; the registry's tests add two adapter versions
behind the alias ``tickets`` with `tuneship adapters add`, the monitoring test runs `tuneship
monitor`. A failing test leaves ``failure.png`` in its tmp directory. With
``TUNESHIP_SCREENSHOTS=DIR`` set, the main pages are saved there as small PNGs (the README's
screenshots: ``TUNESHIP_SCREENSHOTS=docs/screenshots pytest tests/service/test_console.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import CLI, TICKETS, make_adapter, write_rows
from service.conftest import wait_until_version
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
    assert nav_links(page) == ["Playground", "Models", "Registry", "Monitoring"]  # no jobs for a user key
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
    assert nav_links(page) == ["Playground", "Models", "Jobs", "Registry", "Monitoring"]


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


# --- the registry and its rollouts, the canary's monitoring -----------------------------------------

ALIAS = "tickets"
PROMPT = [{"role": "user", "content": "My invoice is wrong, I was charged twice."}]
NEVER = "(?!)"  # a regex that matches nothing: with an empty reference (matches anything), a known score
CANARY_ROWS = [{"prompt": f"Ticket {i}: my order never arrived.", "reference": ""} for i in range(3)] + [
    {"prompt": f"Ticket {i}: I was charged twice.", "reference": NEVER} for i in range(3, 5)
]  # 3 of 5 match: score 0.6, whatever the tiny model answers


@pytest.fixture(scope="module")
def versions(service, tiny_base, tmp_path_factory):
    """tickets@1 and tickets@2 (different seeds: different answers) added with the CLI; tickets -> @1."""
    work = tmp_path_factory.mktemp("versions")
    for seed in (1, 2):
        adapter = make_adapter(tiny_base, work / f"seed{seed}", seed=seed)
        registry = str(service.home / "registry")
        done = cli(service, "adapters", "add", ALIAS, str(adapter), "--registry", registry, home=False)
        assert done.returncode == 0, done.stdout + done.stderr
    service.wait_ready()
    return [f"{ALIAS}@1", f"{ALIAS}@2"]


def cli(service, *args: str, home: bool = True) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, on the service's records (``--home``)."""
    extra = ["--home", str(service.home)] if home else []
    return subprocess.run([*CLI, *args, *extra], capture_output=True, text=True, timeout=300)


def answered_by(service, user: str | None = None) -> str:
    """The version that answers a request for the alias (its ``x-tuneship-model-version``)."""
    raw = service.client(service.user_key).chat.completions.with_raw_response.create(
        model=ALIAS, messages=PROMPT, max_tokens=2, temperature=0, **({"user": user} if user else {})
    )
    assert raw.parse().model == raw.headers["x-tuneship-model-version"]
    return raw.headers["x-tuneship-model-version"]


def wait_for_version(service, version: str) -> None:
    """Until the alias answers from ``version`` (:func:`service.conftest.wait_until_version`)."""
    wait_until_version(lambda: answered_by(service), version, ALIAS)


def newest_change(page) -> list[str]:
    """Who, what and why of the alias's newest audit row, as the registry page shows it."""
    row = page.locator("table.history tbody tr").first
    return [row.locator(f".{cell}").inner_text() for cell in ("actor", "action", "reason")]


def test_an_admin_promotes_and_rolls_back_from_the_registry_page(page, ui, service, versions):
    key = service.create_key("release-manager", "admin")  # the audit names the key
    assert answered_by(service) == "tickets@1"
    login(page, ui, key)
    page.get_by_role("link", name="Registry").click()
    page.wait_for_url("**/ui/registry")
    assert unlabelled_fields(page) == []
    assert page.locator("#alias-tickets .current").inner_text() == "tickets@1"
    row = page.locator('table.versions tr[data-version="tickets@2"]').inner_text()
    lineage = json.loads((service.home / "registry" / "tickets@2" / "tuneship.json").read_text())
    base = lineage["base_model"]
    assert "lora" in row and base["name"] in row and base["weights_sha256"][:12] in row  # its lineage

    page.get_by_role("button", name="Promote tickets@2").click()
    page.wait_for_url("**/ui/registry/confirm?**")
    assert page.locator(".changes li").first.inner_text() == "tickets: tickets@1 → tickets@2"
    assert "not gated" in page.locator(".note").inner_text()  # the gate's word comes first
    assert unlabelled_fields(page) == []
    page.get_by_role("button", name="Promote", exact=True).click()  # no reason: the browser keeps it
    assert "/ui/registry/confirm" in page.url and page.evaluate(
        "document.getElementById('reason').validity.valueMissing"
    )
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    blank = page.request.post(
        f"{ui}/registry/promote", form={"csrf": token, "version": "tickets@2", "reason": " "}
    )
    assert blank.status == 400 and "A reason is required" in blank.text()  # and so does the server
    no_token = page.request.post(f"{ui}/registry/promote", form={"version": "tickets@2", "reason": "x"})
    assert no_token.status == 403 and answered_by(service) == "tickets@1"

    page.evaluate("document.activeElement.blur()")  # keyboard only: Tab to the reason, type, Enter
    for _ in range(30):
        if page.evaluate("document.activeElement.id") == "reason":
            break
        page.keyboard.press("Tab")
    page.keyboard.type("better on refunds")
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/registry?changed=tickets*")
    done = page.get_by_role("status").inner_text()
    assert "Done: promote tickets@1 → tickets@2 by release-manager (better on refunds)" in done
    assert newest_change(page) == ["release-manager", "promote", "better on refunds"]
    wait_for_version(service, "tickets@2")
    history = cli(service, "adapters", "history", ALIAS).stdout.splitlines()
    assert re.search(r"release-manager +promote +tickets@1 -> tickets@2 +better on refunds$", history[0])

    # The playground asks for the alias and is answered by the version it now points at.
    page.goto(f"{ui}/playground?model={ALIAS}")
    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message", exact=True).fill(PROMPT[0]["content"])
    page.get_by_role("button", name="Send").click()
    stats = page.locator("#panel-1 .stats")
    page.wait_for_function("e => e.dataset.finish !== ''", arg=stats.element_handle(), timeout=60_000)
    assert stats.get_attribute("data-model") == "tickets@2" and "answered by tickets@2" in stats.inner_text()

    page.goto(f"{ui}/registry")
    page.get_by_role("button", name="Roll back tickets").click()
    page.wait_for_url("**/ui/registry/confirm?**")
    assert page.locator(".changes li").first.inner_text() == "tickets: tickets@2 → tickets@1"
    page.get_by_label("Reason").fill("complaints")
    page.get_by_role("button", name="Roll back", exact=True).click()
    page.wait_for_url("**/ui/registry?changed=tickets*")
    assert newest_change(page) == ["release-manager", "rollback", "complaints"]
    assert page.locator("#alias-tickets .current").inner_text() == "tickets@1"
    wait_for_version(service, "tickets@1")


def test_a_canary_from_the_page_shows_its_live_numbers_and_gate_and_aborts(page, ui, service, versions):
    login(page, ui, service.admin_key)
    page.goto(f"{ui}/registry")
    page.get_by_label("Canary candidate").select_option("tickets@2")
    page.get_by_label("Share of traffic (%)").fill("50")
    page.get_by_role("button", name="Start canary").click()
    page.wait_for_url("**/ui/registry/confirm?**")
    changes = page.locator(".changes").inner_text()
    assert "tickets: 50% of its traffic → tickets@2, the rest stays on tickets@1" in changes
    assert page.locator(".verdict").inner_text() == "Gate: does not pass"  # offline checks: CLI-only
    assert page.locator("table.gate").inner_text().count("not measured") == 2
    page.get_by_label("Reason").fill("canary from the console")
    page.get_by_role("button", name="Start canary").click()
    page.wait_for_url("**/ui/registry?changed=tickets*")
    assert newest_change(page) == ["admin", "rollout_start", "canary from the console"]

    time.sleep(1.5)  # the front door reads the rollout within a second
    served = [answered_by(service, user=f"customer-{i}") for i in range(12)]  # sticky per end user
    assert set(served) == {"tickets@1", "tickets@2"}  # both, all but surely (2 * 0.5^12)
    deadline = time.monotonic() + 15
    while True:  # request records are written in batches, within about half a second
        page.reload()
        shown = {
            v: int(page.locator(f'table.live-stats tr[data-version="{v}"] .requests').inner_text())
            for v in versions
        }
        if sum(shown.values()) >= len(served) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shown == {v: served.count(v) for v in versions}
    status = cli(service, "rollout", "status", ALIAS).stdout  # the CLI shows the same numbers
    for version in versions:
        assert re.search(rf"^  {re.escape(version)} +{shown[version]} ", status, re.M), status
    assert "too few live requests" in page.locator("table.gate").inner_text()
    assert page.get_by_role("button", name="Roll back tickets").count() == 0  # not during a canary
    shot(page, "registry")

    page.get_by_role("button", name="Abort canary").click()
    page.wait_for_url("**/ui/registry/confirm?**")
    assert "every request back to tickets@1" in page.locator(".changes").inner_text()
    page.get_by_label("Reason").fill("enough")
    page.get_by_role("button", name="Abort canary").click()
    page.wait_for_url("**/ui/registry?changed=tickets*")
    assert newest_change(page) == ["admin", "rollout_abort", "enough"]
    assert (
        "Rollout" in page.locator("#alias-tickets ~ h3").first.inner_text() and "(aborted)" in page.content()
    )
    time.sleep(1.5)
    assert {answered_by(service, user=f"customer-{i}") for i in range(12)} == {"tickets@1"}


def test_a_user_key_sees_no_changes_and_a_forged_change_is_refused(page, ui, service, versions):
    login(page, ui, service.user_key)
    page.goto(f"{ui}/registry")
    assert page.locator("#alias-tickets .current").inner_text() == "tickets@1"  # read-only, but shown
    assert page.get_by_role("button").all_inner_texts() == ["Log out"]  # no promote/canary/rollback
    page.goto(f"{ui}/registry/confirm?action=rollback&alias={ALIAS}")
    assert "for admin keys" in page.get_by_role("alert").inner_text()
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")  # the user's own session
    forged = page.request.post(
        f"{ui}/registry/promote", form={"csrf": token, "version": "tickets@2", "reason": "mine"}
    )
    assert forged.status == 403 and "for admin keys" in forged.text()
    assert answered_by(service) == "tickets@1"
    assert "mine" not in cli(service, "adapters", "history", ALIAS).stdout


def test_the_monitoring_page_charts_a_monitor_run_and_its_alert(page, ui, service, versions, tmp_path):
    data = write_rows(tmp_path / "canary.jsonl", CANARY_ROWS)
    args = ["monitor", "--once", "--eval", str(data), "--scorers", "regex",
            "--endpoint", service.url, "--api-key", service.user_key]  # fmt: skip
    first = cli(service, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    second = cli(service, *args, "--min-score", "0.9")
    assert second.returncode == 3, second.stdout + second.stderr  # an alert fired

    login(page, ui, service.user_key)
    page.get_by_role("link", name="Monitoring").click()
    page.wait_for_url("**/ui/monitoring")
    score = page.locator("#score-chart-tickets")
    assert score.locator("polyline").evaluate_all("ps => ps.map(p => p.dataset.series)") == ["tickets@1"]
    heights = {xy.split(",")[1] for xy in score.locator("polyline").get_attribute("points").split()}
    assert (
        len(score.locator("polyline").get_attribute("points").split()) == 2 and len(heights) == 1
    )  # 0.6 twice
    assert "tickets@1 last 0.600" in score.locator("svg").get_attribute("aria-label")
    assert page.locator("#latency-chart-tickets polyline").get_attribute("points").count(",") == 2
    alert = page.locator("table.alerts tbody tr").first.inner_text()
    assert "tickets (tickets@1): regex 0.600" in alert and "below the minimum 0.9" in alert
    assert page.locator("table.points tbody tr").first.locator(".score").inner_text().startswith("0.600 [")
    shot(page, "monitoring")
