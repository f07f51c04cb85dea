"""Front doors: the CLI, the demo, verify (and next the service, console and monitor).

They compose the stages (``tuneship.train``, ``export``, ``serve``, ``clients``) and may
import any of them; nothing imports this package. The import linter in ``make lint``
checks both rules (``[tool.importlinter]`` in pyproject.toml).
"""
