"""How prompts are read (ldm.models.prompt_options): the named syntaxes, the switches, the task keywords."""

import pytest

from ldm.core import defaults
from ldm.models.prompt_options import (
    PromptOptions,
    PromptSyntaxError,
    prompt_options,
    syntax_options,
    take_prompt_options,
)


def test_syntaxes_and_the_default():
    assert defaults.PROMPT_SYNTAX == "plain" and syntax_options() == PromptOptions() == syntax_options("plain")
    assert syntax_options("a1111") == PromptOptions(long_prompts=True, emphasis=True, prompt_editing=True)
    with pytest.raises(PromptSyntaxError, match="unknown prompt syntax 'sd'; known: plain, a1111"):
        syntax_options("sd")


def test_switches_given_override_the_syntax():
    assert prompt_options(syntax="a1111", emphasis=False) == PromptOptions(True, False, True)
    assert prompt_options(long_prompts=True, emphasis=None) == PromptOptions(long_prompts=True)
    assert prompt_options(PromptOptions(emphasis=True), prompt_editing=True) == PromptOptions(False, True, True)
    with pytest.raises(PromptSyntaxError, match="emphasis must be True or False"):
        prompt_options(emphasis="yes")
    with pytest.raises(PromptSyntaxError, match="not both"):
        prompt_options(PromptOptions(), "plain")


def test_task_keywords_are_taken_out_of_the_sampling_options():
    overrides = {"steps": 3, "prompt_syntax": "a1111", "long_prompts": False}
    assert take_prompt_options(overrides) == PromptOptions(False, True, True) and overrides == {"steps": 3}
    overrides = {"prompt_options": PromptOptions(emphasis=True), "sampler": "euler"}
    assert take_prompt_options(overrides) == PromptOptions(emphasis=True) and overrides == {"sampler": "euler"}
    assert take_prompt_options({}) == PromptOptions()
    with pytest.raises(PromptSyntaxError, match="prompt_options must be a PromptOptions"):
        take_prompt_options({"prompt_options": {"emphasis": True}})
    assert PromptOptions(emphasis=True).record() == {"long_prompts": False, "emphasis": True, "prompt_editing": False}
