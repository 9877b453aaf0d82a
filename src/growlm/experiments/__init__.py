"""Studies that test the paper's claims with seeds and intervals (``growlm experiment NAME``), and the composition
study behind ``growlm compose-study`` and ``growlm demo``.

How a study plugs in: see ``growlm.experiments.framework``. Studies: ``substrates`` (1), ``grown-vs-monolithic`` (2),
``insertion-spike`` (3), ``depth`` (5), ``continual`` (6), and any other study module of this package.
"""

from growlm.experiments.compose import (
    ComposeOptions,
    compose_experiment,
    expert_recipe,
    load_compose_recipe,
    run_demo,
)
from growlm.experiments.framework import STUDIES, SeedContext, Study, get_study, load_studies, register, run_study

__all__ = ["ComposeOptions", "STUDIES", "SeedContext", "Study", "compose_experiment", "expert_recipe", "get_study",
           "load_compose_recipe", "load_studies", "register", "run_demo", "run_study"]
