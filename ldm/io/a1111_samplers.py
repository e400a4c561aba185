"""A1111's sampler names and schedule types, mapped onto our sampler names and sigma grids (for ldm.io.infotext).

A1111 names a sampler with a label ("DPM++ 2M", "Euler a") and, since 1.9, a separate "Schedule type" ("Karras",
"Exponential", "Uniform", or "Automatic": the sampler's own default). Before 1.9 the schedule was part of the label
("DPM++ 2M Karras", "DPM++ 2M SDE Exponential") and a bare label meant the uniform schedule. The rules here are those
of A1111's sd_samplers.get_sampler_and_scheduler and KDiffusionSampler.get_sigmas, read from its source:

- Karras: karras_sigmas between the model's sigma_min and sigma_max (rho 7), our karras=True;
- Exponential: evenly in log sigma between them, our spacing "exponential";
- Uniform: k-diffusion's DiscreteSchedule.get_sigmas, timesteps evenly from T - 1 to 0, our spacing "linspace";
- DDIM, PLMS and UniPC are A1111 "timestep" samplers that ignore the schedule type: DDIM and PLMS step through
  range(0, T, T // steps) + 1 (our "leading", left as the model's default here), UniPC evenly in time from T - 1 to
  0 (nearest to our "linspace"; A1111 ends its grid at t = 0 where ours takes a last step to sigma = 0).

A1111 runs DPM2, DPM2 a and DPM++ 3M SDE on steps + 1 sigmas with the next-to-last dropped
(discard_next_to_last_sigma); so do we (ldm.sampling.samplers_extra.DISCARD_NEXT_TO_LAST_SIGMA,
ldm.tasks.base.model_sigmas).
"""

from __future__ import annotations

from typing import Any

# A1111 label -> (our sampler, the schedule type "Automatic" picks for it; None: a timestep sampler, which ignores it)
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "DPM++ 2M": ("dpmpp_2m", "Karras"),
    "DPM++ SDE": ("dpmpp_sde", "Karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "Exponential"),
    "DPM++ 2S a": ("dpmpp_2s_ancestral", "Karras"),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", "Exponential"),
    "Euler a": ("euler_ancestral", "Uniform"),
    "Euler": ("euler", "Uniform"),
    "LMS": ("lms", "Uniform"),
    "Heun": ("heun", "Uniform"),
    "DPM2": ("dpm_2", "Karras"),
    "DPM2 a": ("dpm_2_ancestral", "Karras"),
    "LCM": ("lcm", "Uniform"),
    "DDIM": ("ddim", None),
    "PLMS": ("plms", None),
    "UniPC": ("unipc", None),
    "DDPM": ("ddpm", None),  # not A1111's: the name our own texts give it
}
# A schedule type -> our settings for it. "Automatic" resolves through A1111_SAMPLERS first.
SCHEDULE_SETTINGS: dict[str, dict[str, Any]] = {
    "Karras": {"karras": True},
    "Exponential": {"spacing": "exponential"},
    "Uniform": {"spacing": "linspace"},
}
# The timestep samplers' own grids, which the schedule type does not change (see the module docstring).
TIMESTEP_SAMPLER_SETTINGS: dict[str, dict[str, Any]] = {"unipc": {"spacing": "linspace"}}


def split_schedule(label: str) -> tuple[str, str | None]:
    """A pre-1.9 label's schedule suffix: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); others -> (label, None)."""
    for schedule in SCHEDULE_SETTINGS:
        if label.endswith(" " + schedule) and label[: -len(schedule) - 1] in A1111_SAMPLERS:
            return label[: -len(schedule) - 1], schedule
    return label, None


def sampler_settings(label: str, schedule_type: str | None, from_a1111: bool) -> dict[str, Any] | None:
    """Our settings ({"sampler", and "karras" or "spacing" where the schedule says}) for an A1111 sampler label and
    "Schedule type" field (None: absent). from_a1111: the text is A1111's own (it has a Version field), where an
    absent schedule type means the uniform schedule (A1111 before 1.9); in ours it means our own spacing.

    None where the label or the schedule type has no counterpart here (the caller says which)."""
    name, suffix = split_schedule(label)
    if name not in A1111_SAMPLERS:
        return None
    sampler, automatic = A1111_SAMPLERS[name]
    if automatic is None:  # a timestep sampler: its own grid, whatever the schedule type says
        return {"sampler": sampler, **TIMESTEP_SAMPLER_SETTINGS.get(sampler, {})}
    schedule = suffix or schedule_type
    if schedule == "Automatic":
        schedule = automatic
    if schedule is None:
        schedule = "Uniform" if from_a1111 else None
    if schedule is not None and schedule not in SCHEDULE_SETTINGS:
        return None
    return {"sampler": sampler, **(SCHEDULE_SETTINGS[schedule] if schedule else {})}


def schedule_type_of(settings: dict[str, Any]) -> str | None:
    """The A1111 schedule type our settings ran with, for writing: Karras, Exponential, Uniform, or None where A1111
    has no name for the grid (our leading and trailing spacings)."""
    if settings.get("karras"):
        return "Karras"
    return {"exponential": "Exponential", "linspace": "Uniform"}.get(settings.get("spacing") or "")
