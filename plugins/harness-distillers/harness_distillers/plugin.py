"""Entry point of harness-distillers: registers every distiller of this distribution.

Method modules import torch at module level, so they are imported inside the hook: loading this
entry point (e.g. for `harness --help`) stays instant.
"""

from harness import hookimpl


@hookimpl
def register_distillers(register):
    from .baselines import Full, RandomSubset
    from .dc import DC, DCWithDSA
    from .dd import DD
    from .dm import DM
    from .ld import LD
    from .ld_base import LDBase
    from .ld_rr import LDRR
    from .sldd import SLDD

    register(RandomSubset)
    register(Full)
    register(SLDD)
    register(DD)
    register(LD)
    register(LDBase)
    register(LDRR)
    register(DM)
    register(DC)
    register(DCWithDSA)
