"""Entry point of harness-distillers: registers every distiller of this distribution."""

from harness import hookimpl

from .baselines import Full, RandomSubset


@hookimpl
def register_distillers(register):
    register(RandomSubset)
    register(Full)
