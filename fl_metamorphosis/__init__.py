"""fl-metamorphosis: privacy-aware multi-task features (MetaMorphosis) trained with DP, audited by attacks."""

__version__ = "0.1.0"
