"""The production loop's first half: versions behind an alias, promote/rollback with an audit, a gated
canary rollout, and /metrics, against one real `tuneship service` driven by the openai SDK and the CLI.

Three adapter versions of the tiny base (different seeds, so different answers) are added to the
service's registry with `tuneship adapters add`; the tests run in file order and share it.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import CLI, make_adapter
from service.conftest import StreamingLoad, wait_until_version

ALIAS = "tickets"
PROMPT = [{"role": "user", "content": "My invoice is wrong, I was charged twice."}]


# --- units: no server ---------------------------------------------------------------------------


def test_the_split_is_sticky_and_grows_without_moving_users():
    from tuneship.entrypoints.service.routing import Split, bucket, choose

    users = [f"user-{i}" for i in range(2000)]
    at10 = {u for u in users if choose(Split(7, "a@1", "a@2", 10), u) == "a@2"}
    at50 = {u for u in users if choose(Split(7, "a@1", "a@2", 50), u) == "a@2"}
    assert at10 < at50 and 150 < len(at10) < 250 and 900 < len(at50) < 1100
    assert bucket(7, "user-1") == bucket(7, "user-1") != bucket(8, "user-1")  # stable; per rollout


def test_a_stream_is_measured_as_it_passes():
    from tuneship.entrypoints.service.metrics import Meter

    meter = Meter("tickets", "tickets@2", streamed=True, status=200)
    for piece in (
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\ndata: {"choices":[{"delta":{"con',
        b'tent":"Hi"}}]}\n\ndata: {"choices":[{"delta":{"content":" there"}}]}\n\n',
        b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\ndata: [DONE]\n\n',
    ):
        meter.feed(piece)
    meter.finish()
    assert meter.tokens == 2 and meter.output_tokens == 3 and not meter.error
    assert meter.ttft is not None and 0 <= meter.ttft <= meter.latency
    broken = Meter("tickets", "tickets@2", streamed=True, status=200)
    broken.feed(b'data: {"error": {"message": "engine died"}}\n\n')
    broken.finish()
    assert broken.error


def test_the_live_gate_needs_requests_then_compares_rates_and_p95():
    from tuneship.entrypoints.service.gate import FAILED, NOT_MEASURED, PASSED, GateSettings, live_checks

    def stats(version, requests, errors, p95):
        return {"version": version, "requests": requests, "error_rate": errors / requests,
                "latency_p95_ms": p95, "ttft_count": 0}  # fmt: skip

    settings = GateSettings(min_requests=100)
    few = live_checks(settings, stats("a@1", 500, 0, 100), stats("a@2", 40, 0, 100))
    assert [c.status for c in few] == [NOT_MEASURED, NOT_MEASURED] and "a@2 40" in few[0].detail
    ok = live_checks(settings, stats("a@1", 500, 5, 100), stats("a@2", 200, 3, 120))  # 1.5% <= 2.5%
    assert [c.status for c in ok] == [PASSED, PASSED]
    bad = live_checks(settings, stats("a@1", 500, 0, 100), stats("a@2", 200, 6, 140))  # 3% > 1%; 1.4x
    assert [c.status for c in bad] == [FAILED, FAILED]


# --- the service --------------------------------------------------------------------------------


def tuneship(service, *args: str, home: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, on the service's records (``--home``)."""
    extra = ["--home", str(service.home)] if home else []
    done = subprocess.run([*CLI, *args, *extra], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def versions(service, tiny_base, tmp_path_factory):
    """tickets@1..3 in the service's registry (the alias points at tickets@1)."""
    work = tmp_path_factory.mktemp("versions")
    for seed in (1, 2, 3):
        adapter = make_adapter(tiny_base, work / f"seed{seed}", seed=seed)
        registry = str(service.home / "registry")
        tuneship(service, "adapters", "add", ALIAS, str(adapter), "--registry", registry, home=False)
    service.wait_ready()
    return [f"{ALIAS}@{n}" for n in (1, 2, 3)]


def ask(client, model: str = ALIAS, user: str | None = None, max_tokens: int = 6) -> tuple[str, str, str]:
    """(response's model field, x-tuneship-model-version header, answer) of one greedy request."""
    extra = {"user": user} if user else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0, **extra
    )
    answer = raw.parse()
    return answer.model, raw.headers.get("x-tuneship-model-version"), answer.choices[0].message.content


def wait_for_version(client, version: str) -> None:
    """Until the alias answers from ``version`` (:func:`service.conftest.wait_until_version`)."""
    wait_until_version(lambda: ask(client)[0], version, ALIAS)


def test_an_alias_is_answered_by_its_version(service, versions):
    client = service.client(service.user_key)
    model, header, answer = ask(client)
    assert model == header == "tickets@1"
    assert answer == ask(client, "tickets@1")[2] != ask(client, "tickets@2")[2]
    listed = {m.id: m for m in client.models.list().data}
    assert listed[ALIAS].model_extra["version"] == "tickets@1" and set(versions) <= set(listed)


def test_promote_rollback_and_history(service, versions):
    client = service.client(service.user_key)
    tuneship(service, "adapters", "promote", "tickets@2", "--actor", "alice", "--reason", "better on refunds")
    wait_for_version(client, "tickets@2")
    done = tuneship(service, "adapters", "rollback", ALIAS, "--actor", "bob", "--reason", "complaints")
    assert "tickets@1 (was tickets@2)" in done.stdout
    wait_for_version(client, "tickets@1")
    history = tuneship(service, "adapters", "history", ALIAS).stdout.splitlines()
    assert re.search(r"bob +rollback +tickets@2 -> tickets@1 +complaints$", history[0])
    assert re.search(r"alice +promote +tickets@1 -> tickets@2 +better on refunds$", history[1])
    refused = tuneship(service, "adapters", "promote", "tickets@1", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == "Error: tickets already points at tickets@1"


def test_a_rollout_splits_traffic_sticky_per_end_user(service, versions):
    from tuneship.entrypoints.service.routing import Split, choose

    client = service.client(service.user_key)
    users = [f"customer-{i}" for i in range(60)]

    def versions_of(users: list[str]) -> dict[str, str]:
        with ThreadPoolExecutor(8) as pool:
            return dict(
                zip(users, pool.map(lambda u: ask(client, user=u, max_tokens=1)[1], users), strict=True)
            )

    seen = {}
    for percent in (10, 50):
        started = tuneship(
            service, "rollout", "start", ALIAS, "--candidate", "tickets@2", "--percent", str(percent)
        )
        rollout_id = int(re.search(r"Rollout (\d+):", started.stdout)[1])
        time.sleep(1.5)
        split = Split(rollout_id, "tickets@1", "tickets@2", percent)
        seen[percent] = versions_of(users)
        assert seen[percent] == {u: choose(split, u) for u in users}  # every replica computes the same
    had = {u for u, v in seen[10].items() if v == "tickets@2"}
    assert had and had < {u for u, v in seen[50].items() if v == "tickets@2"}  # nobody moved back
    header = httpx.post(f"{service.url}/chat/completions", headers={
        "Authorization": f"Bearer {service.user_key}", "x-tuneship-user": users[0]},
        json={"model": ALIAS, "messages": PROMPT, "max_tokens": 1}, timeout=60)  # fmt: skip
    assert header.headers["x-tuneship-model-version"] == seen[50][users[0]] == header.json()["model"]
    anonymous = {ask(client, max_tokens=1)[1] for _ in range(16)}
    assert anonymous == {"tickets@1", "tickets@2"}  # split at random: both, all but surely (2 * 0.5^16)
    tuneship(service, "rollout", "abort", ALIAS, "--reason", "split checked")
    wait_for_version(client, "tickets@1")


def test_sixteen_streaming_clients_see_no_failure_through_rollout_changes(service, versions):
    steps = {}

    def step(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        began = time.monotonic()
        done = tuneship(service, *args, check=check)
        steps[name] = (began, time.monotonic())  # the change is made between the two
        return done

    with StreamingLoad(service, ALIAS, PROMPT) as load:
        time.sleep(3)
        step(
            "start",
            "rollout",
            "start",
            ALIAS,
            "--candidate",
            "tickets@3",
            "--percent",
            "50",
            "--min-requests",
            "20",
        )
        time.sleep(5)
        step("abort", "rollout", "abort", ALIAS)
        time.sleep(5)
        step(
            "restart",
            "rollout",
            "start",
            ALIAS,
            "--candidate",
            "tickets@3",
            "--percent",
            "50",
            "--min-requests",
            "20",
        )
        time.sleep(6)
        refused = step("refused", "rollout", "promote", ALIAS, check=False)
        no_reason = tuneship(service, "rollout", "promote", ALIAS, "--force", check=False)
        step(
            "promote", "rollout", "promote", ALIAS, "--force", "--reason", "canary clean, no held-out set yet"
        )
        time.sleep(5)
        step("rollback", "adapters", "rollback", ALIAS, "--reason", "drill")
        time.sleep(5)
    assert load.failures == [] and len(load.answers) > 100
    for answer in load.answers:
        assert answer["finish"] and answer["models"] == {answer["header"]}  # whole, one version each
    assert {a["header"] for a in load.answers} == {"tickets@1", "tickets@3"}  # never tickets@2
    # Within a second and a half of a change's command, every answer that began follows it.
    settled = [("start", "abort", {"tickets@1", "tickets@3"}), ("abort", "restart", {"tickets@1"}),
               ("promote", "rollback", {"tickets@3"}), ("rollback", None, {"tickets@1"})]  # fmt: skip
    for change, following, expected in settled:
        end = steps[following][0] if following else time.monotonic()
        assert {a["header"] for a in load.between(steps[change][1] + 1.5, end)} == expected, change

    assert refused.returncode == 1
    assert "offline A/B: not measured (no held-out set given (--eval))" in refused.stderr
    assert no_reason.returncode == 1 and "--force needs a --reason" in no_reason.stderr
    history = tuneship(service, "adapters", "history", ALIAS).stdout.splitlines()
    assert re.search(r"rollback +tickets@3 -> tickets@1 +drill$", history[0])
    assert re.search(
        r"rollout_promote +tickets@1 -> tickets@3 +canary clean, no held-out set yet$", history[1]
    )
    status = tuneship(service, "rollout", "status", ALIAS).stdout
    assert "(promoted)" in status and "live errors    passed" in status
    rows = {line.split()[0]: line.split() for line in status.splitlines() if line.startswith("  tickets@")}
    assert int(rows["tickets@1"][1]) >= 20 and int(rows["tickets@3"][1]) >= 20
    assert rows["tickets@3"][2] == "0.00%"
    print(status)


def test_the_gate_runs_the_offline_ab_and_refuses_without_fidelity(service, versions, validation_file):
    started = tuneship(
        service, "rollout", "start", ALIAS, "--candidate", "tickets@2", "--percent", "10",
        "--eval", str(validation_file), "--eval-limit", "6", "--eval-max-tokens", "8",
        "--endpoint", service.url, "--api-key", service.admin_key,
    )  # fmt: skip
    ab = r"offline A/B +(passed|failed) +\w+ [0-9.]+ \(current\) -> [0-9.]+ \(candidate\) on 6 items"
    assert re.search(ab, started.stdout), started.stdout
    refused = tuneship(service, "rollout", "promote", ALIAS, check=False)
    assert refused.returncode == 1 and "fidelity: not measured" in refused.stderr
    assert "live errors: not measured (too few live requests" in refused.stderr
    tuneship(service, "rollout", "abort", ALIAS)


def test_metrics_per_alias_and_version_beside_vllms(service, versions):
    assert httpx.get(f"{service.url.removesuffix('/v1')}/metrics", timeout=30).status_code == 401
    text = httpx.get(f"{service.url.removesuffix('/v1')}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {service.user_key}"}).text  # fmt: skip
    for version in ("tickets@1", "tickets@3"):
        labels = f'alias="tickets",status="200",version="{version}"'
        assert float(re.search(rf"tuneship_requests_total\{{{labels}\}} (\S+)", text)[1]) >= 20
        count = re.search(
            rf'tuneship_time_to_first_token_seconds_count\{{alias="tickets",version="{version}"\}} (\S+)',
            text,
        )
        assert float(count[1]) >= 20
        assert re.search(
            rf'tuneship_output_tokens_total\{{alias="tickets",version="{version}"\}} [1-9]', text
        )
    assert 'tuneship_request_duration_seconds_bucket{alias="tickets",le="0.3",version="tickets@1"}' in text
    assert "vllm:num_requests_running" in text  # the managed vLLM's own metrics follow
