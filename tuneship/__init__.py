"""tuneship: fine-tune, export, serve and evaluate LLMs, end to end.

The import root holds the contracts the stages share (errors, artifact names,
lineage, base-model resolution, settings). The stages live in ``tuneship.train``,
``tuneship.export``, ``tuneship.serve`` and ``tuneship.clients`` and meet through
artifacts on disk.
"""

__version__ = "0.1.0"
