"""Dense correspondence: a fixed-topology template fitted to each surface."""

from ._nicp import FitQuality, fit_template, surface_distances

__all__ = ["fit_template", "FitQuality", "surface_distances"]
