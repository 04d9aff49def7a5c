"""dlrd: the Connection Software delivery-receipt daemon."""

__version__ = "0.1.0"
