"""The one chat template a vLLM server applies to all its models, and its text.

vLLM takes one template per server (``--chat-template``, a file or the template itself);
without it, the base's own applies. :func:`served_chat_template` checks it against the
adapters' own (see :func:`tuneship.adapters.plan_chat_template`); :func:`applied_chat_template`
gives its text, from which the server's stop ids are derived (:mod:`tuneship.serve.stopping`).
"""

from __future__ import annotations

from pathlib import Path

from tuneship.adapters import TemplatePlan, plan_chat_template
from tuneship.chat import model_chat_template
from tuneship.errors import ArtifactError
from tuneship.models import ResolvedBase
from tuneship.serve.config import ServeConfig


def given_chat_template(extra_args: list[str]) -> tuple[str, str] | None:
    """A ``--chat-template`` among vLLM's extra arguments: (as given, its text); None when absent."""
    extra = list(extra_args)
    given = next((a.split("=", 1)[1] for a in extra if a.startswith("--chat-template=")), None)
    if "--chat-template" in extra[:-1]:
        given = extra[extra.index("--chat-template") + 1]
    if given is None:
        return None
    try:
        text = Path(given).read_text(encoding="utf-8") if Path(given).is_file() else given
    except OSError:  # too long for a file name: the template itself
        text = given
    return given, text


def served_chat_template(config: ServeConfig, base: ResolvedBase, adapters: dict[str, str]) -> TemplatePlan:
    """The chat template this server applies (one for all its models), checked against ``adapters``.

    The default is a ``--chat-template`` among ``extra_args`` (a file or the template itself, as
    vLLM takes it), else the base's own. Raises ArtifactError when the adapters need another.
    """
    given = given_chat_template(config.extra_args)
    if given is None:
        return plan_chat_template(adapters, model_chat_template(base.path))
    plan = plan_chat_template(adapters, given[1], default=f"the --chat-template given ({given[0][:60]})")
    if plan.file:
        raise ArtifactError(
            f"{', '.join(plan.adapters)}: trained with chat template {plan.file} "
            f"(sha256 {(plan.sha256 or '')[:12]}), not the --chat-template given; "
            "leave it out and tuneship passes theirs"
        )
    return plan


def applied_chat_template(config: ServeConfig, base: ResolvedBase, plan: TemplatePlan) -> str | None:
    """The text of the template ``plan`` makes the server apply (None: the server has none)."""
    if plan.file:
        return plan.file.read_text(encoding="utf-8")
    given = given_chat_template(config.extra_args)
    return given[1] if given else model_chat_template(base.path)
