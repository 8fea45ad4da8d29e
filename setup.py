"""The package list, found rather than listed (everything else is in pyproject.toml).

Every `liver_pcr*` package under liver_pcr/ (subpackages need no `__init__.py`), and the two data packages
that pyproject.toml maps from outside liver_pcr/ (`package-dir`): the sample cohort (data_samples/) and the
course's notebooks (nbs/tutorials). liver_pcr/templates/ holds data of `liver_pcr` (its package-data).
"""
from setuptools import find_namespace_packages, setup

code = find_namespace_packages(
    include=['liver_pcr', 'liver_pcr.*'],
    exclude=['*__pycache__*', 'liver_pcr.templates*'],
)
setup(packages=code + ['liver_pcr.data_samples', 'liver_pcr.tutorials'])
