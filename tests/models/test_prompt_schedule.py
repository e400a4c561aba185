"""Prompt editing and alternation by A1111's rules: the examples of its modules/prompt_parser.py, reproduced.

Out of these tests the parser was also compared with A1111's own (its lark grammar and schedule code) on 21,000
random prompts of brackets, colons, bars, numbers and words: all agreed but one family, stray unbalanced runs like
"x[[b" at the top level, on which A1111's parser gives up and uses the whole prompt as written (ours parses it)."""

import time

import pytest

from ldm.models.prompt_schedule import (
    CompositionError,
    check_no_composition,
    has_schedule,
    prompt_schedule,
    text_at_step,
    texts_by_step,
)


def g(prompt):
    return [list(entry) for entry in prompt_schedule(prompt, 10)]


@pytest.mark.parametrize(
    "prompt, expected",
    [  # A1111's doctests of get_learned_conditioning_prompt_schedules, 10 steps
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a|(b:1.1)]", [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]),
        ("[fe|]male", [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
        ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
        # Its doctest expects [[5, 'a  c'], [10, 'a {b|d{ c']] under the comment "not handling this right now"; its
        # grammar has no parse for a "|" there, and A1111's code (lark 1.3) uses the prompt as written, as we do.
        ("a [{b|d{:.5] c", [[10, "a [{b|d{:.5] c"]]),
    ],
)
def test_a1111_doctests(prompt, expected):
    assert g(prompt) == expected


def test_a1111_header_example_over_100_steps():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
        "[ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_when_is_a_step_or_with_a_decimal_point_a_fraction():
    assert prompt_schedule("a [cat:dog:0.4] b", 10) == [(4, "a cat b"), (10, "a dog b")]
    assert prompt_schedule("[cat:dog:4]", 10) == [(4, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:1.0]", 10) == [(10, "cat")]  # the whole run: 1.0 * 10
    assert prompt_schedule("[cat:dog:25]", 10) == [(10, "cat")]  # capped at the steps
    assert prompt_schedule("[cat:dog:0]", 10) == [(10, "dog")]  # from the first step
    assert prompt_schedule("[cat::3] on a mat", 10) == [(3, "cat on a mat"), (10, " on a mat")]
    # A1111's "old prompt editing timelines": every when below 1 is a fraction, every other one a step.
    assert prompt_schedule("[cat:dog:0.5]", 10, old_timelines=True) == [(5, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:1.5]", 10, old_timelines=True) == [(1, "cat"), (10, "dog")]


def test_a_hires_pass_counts_on_from_the_first_pass():
    """A1111's doctests with hires_steps = 10 after 10 base steps, and its integer offset."""
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("[cat:dog:14]", 10, hires_steps=10) == [(4, "cat"), (10, "dog")]


def test_text_at_step_picks_the_first_entry_reaching_the_step():
    schedule = prompt_schedule("a [cat:dog:0.4] b", 10)
    # A1111's call count from 0: calls 0 to 4 read "cat" (its off-by-one, kept), 5 to 9 "dog".
    assert [text_at_step(schedule, s) for s in (0, 4, 5, 9)] == ["a cat b", "a cat b", "a dog b", "a dog b"]
    assert text_at_step(schedule, 11) == "a dog b"


def test_has_schedule():
    assert has_schedule("a [cat:dog:0.4]") and has_schedule("[a|b]") and has_schedule("[x:2]")
    assert not has_schedule("a (cat:1.2) [dog] photo") and not has_schedule("a|b") and not has_schedule("")


def test_deep_or_failing_brackets_stay_fast_and_bounded():
    start = time.perf_counter()
    failing = prompt_schedule("[(" * 60 + "a", 10)  # every bracket fails, each tried once per position (memoised)
    assert time.perf_counter() - start < 2
    assert failing == [(10, "[(" * 60 + "a")]
    nested = "[" * 50 + "a:b:3" + "]" * 50  # emphasis around an edit, 50 deep
    assert prompt_schedule(nested, 10) == [(3, "[" * 49 + "a" + "]" * 49), (10, "[" * 49 + "b" + "]" * 49)]
    # Hundreds deep: beyond Python's recursion, used as written rather than failing.
    assert prompt_schedule("[" * 2000 + "a:b:3" + "]" * 2000, 10) == [(10, "[" * 2000 + "a:b:3" + "]" * 2000)]


# --- the text of each sampling step (texts_by_step), step 0 first, as sampling reads it -------------------------


def test_each_step_reads_the_first_text_while_step_is_at_most_when():
    # Hand-derived over 4 steps: when = 2 holds the first text for steps 0, 1, 2.
    assert texts_by_step("[red:blue:2] heart", 4) == ["red heart"] * 3 + ["blue heart"]
    assert texts_by_step("[red:blue:0.5] heart", 4) == ["red heart"] * 3 + ["blue heart"]  # int(0.5 * 4) = 2
    assert texts_by_step("[blue:2] heart", 4) == [" heart"] * 3 + ["blue heart"]  # [to:when]
    assert texts_by_step("[red::2] heart", 4) == ["red heart"] * 3 + [" heart"]  # [from::when]
    # An integer is a step, a decimal point makes a fraction: 1 is step 1, 1.0 the whole run.
    assert texts_by_step("[a:b:1]", 4) == ["a", "a", "b", "b"]
    assert texts_by_step("[a:b:1.0]", 4) == ["a"] * 4
    assert texts_by_step("[a:b:0]", 4) == ["b"] * 4  # from the first step
    assert texts_by_step("plain (text:1.2) [x]", 3) == ["plain (text:1.2) [x]"] * 3


def test_each_step_of_an_alternation():
    # The schedule counts from 1 (option (step - 1) % n), the steps from 0: the first option holds twice.
    assert texts_by_step("[cat|dog]", 5) == ["cat", "cat", "dog", "cat", "dog"]
    assert texts_by_step("[fe|]male", 4) == ["female", "female", "male", "female"]  # an empty alternative
    assert texts_by_step("[a|b|c] [x:y:2]", 4) == ["a x", "a x", "b x", "c y"]


def test_each_step_of_a_hires_pass():
    # A hires pass of 4 steps after a first pass of 4: integers count on from the first pass, fractions from 1.0.
    assert texts_by_step("[a:b:6]", 4, hires_steps=4) == ["a", "a", "a", "b"]  # 6 - 4 = step 2 of the pass
    assert texts_by_step("[a:b:1.5]", 4, hires_steps=4) == ["a", "a", "a", "b"]  # (1.5 - 1) * 4 = 2
    assert texts_by_step("[a:b:3]", 4, hires_steps=4) == ["b"] * 4  # switched during the first pass
    assert texts_by_step("[a:b:0.5]", 4, hires_steps=4) == ["b"] * 4
    assert texts_by_step("[a:b:0.5]", 4) == ["a", "a", "a", "b"]  # the first pass itself
    assert texts_by_step("[a|b]", 4, hires_steps=2) == ["a", "a"]
    assert texts_by_step("plain", 4, hires_steps=3) == ["plain"] * 3


def test_and_is_refused_by_name():
    with pytest.raises(CompositionError, match="AND"):
        check_no_composition("a cat AND a dog")
    check_no_composition("a cat and a dog, ANDROID, BAND")  # only the word AND, as A1111's \bAND\b
