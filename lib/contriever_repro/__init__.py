"""Library behind the Contriever reproduction workflow.

Every piece of logic the Snakemake rules need lives here, importable and unit-tested;
the rules only wire files together and the scripts only parse arguments.
"""

__version__ = "0.1.0"
