"""Version of torchopt-core (all torchopt distributions move in lockstep)."""

__version__ = '0.8.0'
__license__ = 'Apache License, Version 2.0'
__author__ = 'TorchOpt Contributors'
__release__ = True
