"""The three floors stay true: every module of the import root is under the import linter's rule."""

import tomllib
from helpers import REPO


def test_every_contract_module_is_forbidden_to_import_stages():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = next(c for c in config["contracts"] if c["type"] == "forbidden")
    root_modules = {f"tuneship.{p.stem}" for p in (REPO / "tuneship").glob("*.py") if p.stem != "__init__"}
    assert root_modules == set(forbidden["source_modules"]), "add new root modules to [tool.importlinter]"
    floors = {
        "tuneship.train",
        "tuneship.export",
        "tuneship.serve",
        "tuneship.clients",
        "tuneship.entrypoints",
    }
    assert floors == set(forbidden["forbidden_modules"])
