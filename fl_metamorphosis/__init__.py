"""fl-metamorphosis: privacy-aware multi-task features (MetaMorphosis) trained with DP, audited by attacks."""

from ._third_party import quiet_third_party

quiet_third_party()  # before any submodule imports opacus: see _third_party.py

__version__ = "0.1.0"
