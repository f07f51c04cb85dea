"""Static checks of docker/: hadolint on every Dockerfile, the compose file against the
compose specification, and the one place versions are pinned."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def versions() -> dict[str, str]:
    from tuneship.serve.container import pinned_versions

    return pinned_versions(DOCKER / "versions.env")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def value(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


def test_there_are_three_images():
    assert [p.name for p in DOCKERFILES] == ["serve-cpu.Dockerfile", "serve.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_unprivileged_checked_and_pinned_in_one_place(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001$", text, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in text and "OFFLINE" in text and "/wheelhouse" in text
    assert not re.search(r"(API_KEY|TOKEN|PASSWORD)\s*=", text), "no secrets baked in"
    pinned = versions()
    for arg, default in re.findall(r"^ARG (\w+)=(\S+)$", text, re.M):
        if arg in pinned:
            assert default == pinned[arg], (
                f"{dockerfile.name}: ARG {arg}={default}, versions.env says {pinned[arg]}"
            )
    assert pinned["VLLM_IMAGE"].endswith(f"v{pinned['VLLM_VERSION']}")


def test_compose_file_validates_against_the_compose_specification():
    from compose_spec import PyCompose

    env = {**versions(), "TUNESHIP_API_KEY": "k", "MODEL_DIR": "/models/m", "EVAL_ADAPTER": "tickets"}
    compose = PyCompose.from_yaml(interpolate((DOCKER / "compose.yaml").read_text(), env))
    compose.validate()
    services = compose.to_dict()["services"]
    assert set(services) == {"server", "server-cpu", "eval", "eval-cpu"}
    assert services["server"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["server-cpu"]["profiles"] == ["cpu"] and services["server"]["profiles"] == ["gpu"]
    assert services["eval-cpu"]["depends_on"]["server-cpu"]["condition"] == "service_healthy"
    assert "healthcheck" in services["server"] and "reports:/reports" in str(services["eval"]["volumes"])
    with pytest.raises(ValueError, match="TUNESHIP_API_KEY"):
        interpolate((DOCKER / "compose.yaml").read_text(), {**env, "TUNESHIP_API_KEY": ""})
    broken = interpolate((DOCKER / "compose.yaml").read_text(), env).replace("service_healthy", "when_ready")
    with pytest.raises(ValueError):
        PyCompose.from_yaml(broken).validate()


def test_every_compose_variable_is_documented_once():
    used = set(re.findall(r"\$\{(\w+)", (DOCKER / "compose.yaml").read_text()))
    readme = (DOCKER / "README.md").read_text()
    missing = sorted(v for v in used if f"`{v}`" not in readme)
    assert not missing, f"not in docker/README.md: {missing}"
