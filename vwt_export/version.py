"""The package version, in a module of its own: the graphs, engine sidecars and reports stamp it, and none of
them may import the package root (which imports the whole pipeline). pyproject.toml states it too."""

__version__ = "0.1.0"
