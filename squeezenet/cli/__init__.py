"""The ``squeezenet`` command line: subcommands mapped to library functions."""
