"""Studies that test the paper's claims with seeds and intervals (``growlm experiment NAME``).

How a study plugs in: see ``growlm.experiments.framework``. Studies: ``substrates`` (1), ``grown-vs-monolithic`` (2),
``insertion-spike`` (3), ``depth`` (5), ``continual`` (6), and any other study module of this package.
"""

from growlm.experiments.framework import STUDIES, SeedContext, Study, get_study, load_studies, register, run_study

__all__ = ["STUDIES", "SeedContext", "Study", "get_study", "load_studies", "register", "run_study"]
