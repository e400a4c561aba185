"""A1111's prompt editing and alternation: a prompt whose text changes during sampling.

    [from:to:when]   "from" up to step `when`, "to" after it      [to:when]    "to" after step `when` only
    [from::when]     "from" up to step `when` only                 [a|b|c]      a, b, c, a, ... one per step

`when` is a step number, or with a decimal point a fraction of the steps ("[cat:dog:0.4]": the first 40%). The
parts nest ("a[b:[c:d:2]:1]e"), and () / [] emphasis around them is kept as written for the text encoder. The rules
are those of A1111's modules/prompt_parser.py (get_learned_conditioning_prompt_schedules), read from its grammar:

    start:     (prompt | any of "[](): ")*       stray brackets and colons at the top level are plain text
    prompt:    (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    plain:     (any character but \\ [ ] ( ) : | , or \\ and any character)+

A prompt that does not fit (a "|" outside brackets, a trailing backslash) is used as written, as A1111 does.
The step of each part, with `steps` steps: a `when` with a decimal point is int(when * steps), an integer one is
itself, either capped at `steps`; a step at which nothing changes (below 1) is left out of the schedule. A1111's
"old prompt editing timelines" option (any when < 1 is a fraction) is `old_timelines`; its hires-fix pass
(`hires_steps`: integers count on from the first pass's steps, fractions from 1.0) likewise.

The result is the list of (last step, text) pairs A1111 conditions on (`text_at_step`). How A1111 indexes it: its
CFG denoiser counts its own calls from 0 and call k uses the first pair whose last step is >= k
(prompt_parser.reconstruct_cond_batch), so "[cat:dog:4]" over 10 steps is "cat" for calls 0 to 4; every model call
counts, and for second-order samplers (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE) the schedule is made over
steps * 2 (SamplerData.total_steps). The negative prompt is scheduled the same way.

How it is wired here (`texts_by_step`, ldm.tasks.prompts.prompt_conditioning, ldm.sampling.denoisers.
ScheduledDenoiser): step i of the run, counted from 0, reads A1111's text for k = i, so first-order samplers match
A1111 call for call; each call's step is found from its noise level (a midpoint of step i reads step i's text,
Heun's end point at the next step's level the next step's), so an integer `when` is a step for every sampler
(A1111's, over its doubled schedule, is half a step there). Img2img counts from its first step against the
schedule of all steps, as A1111. The hires fix's second pass reads the schedule with `hires_steps` over the steps
it runs (ldm.tasks.img2img.img2img_latents' first_pass_steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ldm.core.errors import LdmError

NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.DOTALL)
WHITESPACE = re.compile(r"\s+")
TOP_LEVEL_LITERALS = "[]():"


@dataclass
class Scheduled:
    before: list | None  # None: "[to:when]", nothing before
    after: list
    when: str  # as written; its step is computed per schedule (`_step_of`)


@dataclass
class Alternate:
    options: list[list]


class _Parser:
    """Recursive descent with backtracking over the grammar above; a node list holds text, Scheduled, Alternate."""

    def __init__(self, text: str):
        self.text = text
        # Each position's longest prompt and bracketed item, parsed once: without these, nested brackets that fail
        # to parse would be retried by every alternative around them (exponential in the nesting).
        self.prompts: dict[int, tuple[list, int]] = {}
        self.brackets: dict[int, tuple[list, int] | None] = {}

    def start(self) -> list | None:
        items, pos = [], 0
        while pos < len(self.text):
            parsed = self.prompt(pos)
            if parsed is not None and parsed[1] > pos:
                items += parsed[0]
                pos = parsed[1]
            elif self.text[pos] in TOP_LEVEL_LITERALS:
                items.append(self.text[pos])
                pos += 1
            else:  # "|" outside brackets or a trailing backslash: the grammar has no parse
                return None
        return items

    def prompt(self, pos: int) -> tuple[list, int]:
        """The longest run of items from pos (possibly none)."""
        if pos not in self.prompts:
            self.prompts[pos] = self._prompt(pos)
        return self.prompts[pos]

    def _prompt(self, pos: int) -> tuple[list, int]:
        items = []
        while pos < len(self.text):
            match = PLAIN.match(self.text, pos) or WHITESPACE.match(self.text, pos)
            if match:
                items.append(match.group())
                pos = match.end()
                continue
            parsed = self.bracketed(pos)
            if parsed is None:
                break
            items += parsed[0]
            pos = parsed[1]
        return items, pos

    def bracketed(self, pos: int) -> tuple[list, int] | None:
        if pos not in self.brackets:
            self.brackets[pos] = self._bracketed(pos)
        return self.brackets[pos]

    def _bracketed(self, pos: int) -> tuple[list, int] | None:
        char = self.text[pos]
        if char == "[":
            return self.scheduled(pos) or self.alternate(pos) or self.enclosed(pos, "[", "]")
        if char == "(":
            return self.enclosed(pos, "(", ")") or self.weighted(pos)
        return None

    def enclosed(self, pos: int, opening: str, closing: str) -> tuple[list, int] | None:
        inner, end = self.prompt(pos + 1)
        if end < len(self.text) and self.text[end] == closing:
            return [opening, *inner, closing], end + 1
        return None

    def weighted(self, pos: int) -> tuple[list, int] | None:
        first, end = self.prompt(pos + 1)
        if end >= len(self.text) or self.text[end] != ":":
            return None
        second, end = self.prompt(end + 1)
        if end < len(self.text) and self.text[end] == ")":
            return ["(", *first, ":", *second, ")"], end + 1
        return None

    def number_end(self, pos: int) -> tuple[str, int] | None:
        """[ws] NUMBER [ws] "]" from pos: the number as written and the position after the bracket."""
        match = WHITESPACE.match(self.text, pos)
        pos = match.end() if match else pos
        number = NUMBER.match(self.text, pos)
        if not number:
            return None
        pos = number.end()
        match = WHITESPACE.match(self.text, pos)
        pos = match.end() if match else pos
        if pos < len(self.text) and self.text[pos] == "]":
            return number.group(), pos + 1
        return None

    def scheduled(self, pos: int) -> tuple[list, int] | None:
        first, end = self.prompt(pos + 1)
        if end >= len(self.text) or self.text[end] != ":":
            return None
        only = self.number_end(end + 1)
        if only:  # [to:when]
            return [Scheduled(None, first, only[0])], only[1]
        second, end = self.prompt(end + 1)
        if end >= len(self.text) or self.text[end] != ":":
            return None
        both = self.number_end(end + 1)
        return ([Scheduled(first, second, both[0])], both[1]) if both else None

    def alternate(self, pos: int) -> tuple[list, int] | None:
        options = []
        option, end = self.prompt(pos + 1)
        options.append(option)
        while end < len(self.text) and self.text[end] == "|":
            option, end = self.prompt(end + 1)
            options.append(option)
        if len(options) > 1 and end < len(self.text) and self.text[end] == "]":
            return [Alternate(options)], end + 1
        return None


def _walk(items: list):
    for item in items:
        if isinstance(item, Scheduled):
            yield item
            yield from _walk(item.before or [])
            yield from _walk(item.after)
        elif isinstance(item, Alternate):
            yield item
            for option in item.options:
                yield from _walk(option)


def _step_of(when: str, steps: int, base_steps: int | None, old_timelines: bool) -> int:
    value = float(when)
    if old_timelines:
        value = value * steps if value < 1 else value
    elif "." in when:
        value = (value - (1.0 if base_steps is not None else 0.0)) * steps
    else:
        value = value - (base_steps or 0)
    return min(steps, int(value))


def _render(items: list, step: int, whens: dict[int, int]) -> str:
    parts = []
    for item in items:
        if isinstance(item, Scheduled):
            chosen = item.before or [] if step <= whens[id(item)] else item.after
            parts.append(_render(chosen, step, whens))
        elif isinstance(item, Alternate):
            parts.append(_render(item.options[(step - 1) % len(item.options)], step, whens))
        else:
            parts.append(item)
    return "".join(parts)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, old_timelines: bool = False
) -> list[tuple[int, str]]:
    """[(last step, text), ...] for `prompt` over `steps` sampling steps (or over a hires-fix pass of `hires_steps`
    steps after a first pass of `steps`), by A1111's rules (module docstring). A prompt without the syntax gives
    [(steps, prompt)]."""
    total, base = (steps, None) if hires_steps is None or old_timelines else (hires_steps, steps)
    try:
        items = _Parser(prompt).start()
    except RecursionError:  # brackets nested hundreds deep: used as written
        items = None
    if items is None:
        return [(total, prompt)]
    whens: dict[int, int] = {}
    change_steps = {total}
    for node in _walk(items):
        if isinstance(node, Scheduled):
            whens[id(node)] = _step_of(node.when, total, base, old_timelines)
            if whens[id(node)] >= 1:
                change_steps.add(whens[id(node)])
        else:
            change_steps.update(range(1, total + 1))
    return [(step, _render(items, step, whens)) for step in sorted(change_steps)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text for `step`: the first entry whose last step is >= step, else the last (A1111 passes its denoiser's
    call count from 0: module docstring)."""
    for last, text in schedule:
        if step <= last:
            return text
    return schedule[-1][1]


def has_schedule(prompt: str) -> bool:
    """Whether the prompt holds prompt editing or alternation that A1111 would act on (for any step count)."""
    try:
        items = _Parser(prompt).start()
    except RecursionError:
        return False
    return items is not None and any(True for _ in _walk(items))


def texts_by_step(prompt: str, steps: int, hires_steps: int | None = None) -> list[str]:
    """The text each sampling step conditions on, step 0 first: `steps` texts (or `hires_steps` for a hires-fix
    pass after a first pass of `steps`, whose integer `when`s count on from the first pass and fractions from 1.0).

    Step i takes the first schedule entry whose last step is >= i (A1111's CFG denoiser, its step count from 0), so
    "[red:blue:2]" is red for steps 0, 1 and 2 and blue from step 3, and "[cat|dog]", whose schedule starts at 1,
    is cat for steps 0 and 1, then dog, cat, dog, ... A prompt without the syntax is itself at every step.
    """
    if not has_schedule(prompt):
        return [prompt] * (steps if hires_steps is None else hires_steps)
    schedule = prompt_schedule(prompt, steps, hires_steps)
    return [text_at_step(schedule, step) for step in range(steps if hires_steps is None else hires_steps)]


class CompositionError(LdmError, ValueError):
    """A prompt with A1111's AND (composable diffusion), which is not implemented."""


AND_WORD = re.compile(r"\bAND\b")  # A1111's separator of composable prompts (modules/prompt_parser.py)


def check_no_composition(prompt: str) -> None:
    """Refuse AND in a prompt read with A1111's syntax: A1111 would guide on each part apart, which we do not."""
    if AND_WORD.search(prompt):
        raise CompositionError(
            "the prompt uses AND (A1111's composable diffusion), which is not supported; "
            'write "and", or read the prompt with --prompt-syntax plain'
        )
