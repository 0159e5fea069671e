"""trichat: a many-user chat server and terminal client on Trio.

The package's own names are the protocol layer's (``trichat.protocol``);
the server, the client and the load generator are its subpackages.
"""

from . import protocol
from .protocol import *  # noqa: F403 - its names are the package's, listed once there

__version__ = "2.0.0.dev0"

__all__ = [*protocol.__all__, "__version__"]
