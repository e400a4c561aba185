"""How prompts are read: a record of its own, apart from the sampling options (issues 37 and 41).

Three switches, each off in the "plain" syntax (the default, ldm.core.defaults.PROMPT_SYNTAX), where a prompt is
read as the reference Stable Diffusion code reads it: cut at 77 tokens, brackets and colons are text. The "a1111"
syntax turns all three on, as AUTOMATIC1111 reads every prompt:

- long_prompts: prompts over 75 tokens in chunks of 75, and the word BREAK ending a chunk (ldm.models.long_prompts);
- emphasis: (word:1.2), (word) and [word] weights (ldm.models.long_prompts);
- prompt_editing: [from:to:when] and [a|b] change the text during sampling (ldm.models.prompt_schedule); the
  negative prompt too. AND (composable diffusion) is refused while it is on.

The tasks take them as keywords (`txt2img(model, p, prompt_syntax="a1111")`, `long_prompts=True`, ..., or
`prompt_options=PromptOptions(...)`); `take_prompt_options` sorts them from the sampling options' keywords.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError


class PromptSyntaxError(InvalidOptionError):
    """An unknown prompt syntax, or a prompt switch that is not true or false."""


@dataclass(frozen=True)
class PromptOptions:
    long_prompts: bool = False
    emphasis: bool = False
    prompt_editing: bool = False

    def record(self) -> dict[str, bool]:
        """The switches as an image's settings record them (the keys are the PNG metadata's)."""
        return asdict(self)

    @property
    def reads_a1111(self) -> bool:
        """Whether any part of A1111's syntax is on (plain encoding otherwise)."""
        return self.long_prompts or self.emphasis or self.prompt_editing


PROMPT_SYNTAXES = {"plain": PromptOptions(), "a1111": PromptOptions(True, True, True)}
PROMPT_SWITCHES = tuple(f.name for f in fields(PromptOptions))


def syntax_options(syntax: str | None = None) -> PromptOptions:
    """The switches of a named syntax (None: the default one)."""
    name = defaults.PROMPT_SYNTAX if syntax is None else syntax
    if name not in PROMPT_SYNTAXES:
        raise PromptSyntaxError(f"unknown prompt syntax {name!r}; known: {', '.join(PROMPT_SYNTAXES)}")
    return PROMPT_SYNTAXES[name]


def prompt_options(
    base: PromptOptions | None = None, syntax: str | None = None, **switches: bool | None
) -> PromptOptions:
    """`base` (else the named `syntax`'s switches, else the default syntax's), with each switch given (not None)
    set to its value."""
    if base is not None and syntax is not None:
        raise PromptSyntaxError("give prompt_options or prompt_syntax, not both")
    options = base if base is not None else syntax_options(syntax)
    for name, value in switches.items():
        if name not in PROMPT_SWITCHES:
            raise PromptSyntaxError(f"unknown prompt switch {name!r}; known: {', '.join(PROMPT_SWITCHES)}")
        if value is not None and not isinstance(value, bool):
            raise PromptSyntaxError(f"{name} must be True or False, got {value!r:.40}")
    given = {name: value for name, value in switches.items() if value is not None}
    return replace(options, **given)


def take_prompt_options(overrides: dict[str, Any]) -> PromptOptions:
    """The prompt options among a task's keyword overrides (prompt_options=, prompt_syntax=, long_prompts=,
    emphasis=, prompt_editing=), removed from `overrides` so that the rest are sampling options."""
    base = overrides.pop("prompt_options", None)
    if base is not None and not isinstance(base, PromptOptions):
        raise PromptSyntaxError(f"prompt_options must be a PromptOptions, got {type(base).__name__}")
    syntax = overrides.pop("prompt_syntax", None)
    switches = {name: overrides.pop(name) for name in PROMPT_SWITCHES if name in overrides}
    return prompt_options(base, syntax, **switches)
