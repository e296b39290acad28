"""The package's error types: each carries a message a user can act on."""


class SqueezeNetError(Exception):
    """Base class of every error this package raises on bad user input."""


class FormatError(SqueezeNetError, ValueError):
    """A weight or compressed file is truncated, corrupt, hostile or of the wrong kind."""


class DataError(SqueezeNetError, ValueError):
    """A data folder or mapping file cannot be used as given."""


class ConfigError(SqueezeNetError, ValueError):
    """An option or argument given to the library is invalid (a bad density, bits, budget...)."""
