"""``trichat bench``, the load generator: imported only by that command."""
