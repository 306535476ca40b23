"""Model initialisation schemes, applied by the harness after an architecture is built.

Initialisation is part of a method: the Dataset Distillation code (Wang et al. 2018) and its SLDD
fork build every network with ``--init xavier`` (``init_weights`` in ``networks/utils.py``), and a
set distilled for one init distribution transfers worst to another. So the scheme is a recorded
setting: a distiller's Config names the init it distils with (``model_init``), ``[eval] model_init``
the init evaluation models get, and both are params and part of the trial key.

Schemes (every ``Conv*`` and ``Linear`` module; normalisation layers get weight 1, bias 0):

- ``default``: whatever the architecture's constructor did (PyTorch's own init); nothing is touched.
- ``xavier``: ``xavier_normal_`` with gain 1 and zero bias — the DD/SLDD codes' ``--init xavier``
  with their default ``--init_param 1.0``.
- ``kaiming``: ``kaiming_normal_`` (fan_in, ReLU gain sqrt(2)) and zero bias — He et al. 2015.
  (The DD code's ``kaiming`` passes ``--init_param`` as the leaky slope ``a``; with its default 1.0
  that is gain 1, i.e. a Gaussian xavier-like fan-in init. Ours is the standard He init.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

INIT_SCHEMES = ("default", "xavier", "kaiming")


def check_init_scheme(scheme: object, where: str = "model_init") -> str:
    """Return ``scheme`` if it names a scheme, else raise ValueError with the choices."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"{where} must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}")
    return scheme  # type: ignore[return-value]


def init_model(model: "nn.Module", scheme: str) -> "nn.Module":
    """Re-initialise ``model`` in place with ``scheme`` (uses the global torch RNG); returns it."""
    check_init_scheme(scheme)
    if scheme == "default":
        return model
    import torch
    from torch.nn import init

    with torch.no_grad():
        for m in model.modules():
            kind = type(m).__name__
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if kind.startswith("Conv") or kind == "Linear":
                if isinstance(bias, torch.Tensor):
                    init.zeros_(bias)
                if isinstance(weight, torch.Tensor):
                    if scheme == "xavier":
                        init.xavier_normal_(weight, gain=1.0)
                    else:
                        init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
            elif "Norm" in kind:
                if isinstance(weight, torch.Tensor):
                    init.ones_(weight)
                if isinstance(bias, torch.Tensor):
                    init.zeros_(bias)
    return model


def distill_init(config: object) -> str:
    """The init a distiller's Config distils with: its ``model_init`` field, else ``default``."""
    return check_init_scheme(getattr(config, "model_init", "default"), "model_init")
