"""Errors that mean "the user asked for something that cannot work".

The CLI prints these as one clear message and exits non-zero, without a traceback. Each message
says which input is wrong, what is wrong with it, and what to do instead.
"""


class UserError(ValueError):
    """A mistake in user input (config, data, model, search space, sweep name)."""


class ConfigError(UserError):
    """An invalid hyperparameter or sweep setting."""


class DataError(UserError):
    """A dataset that cannot be used as given."""


class ModelLoadError(UserError):
    """A model that cannot be found or loaded."""


class CheckpointError(ModelLoadError):
    """A checkpoint folder that is missing, incomplete, corrupt, or holds more than tensors and
    plain values (which is never loaded: unpickling arbitrary objects can run code)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the trial cannot give a meaningful result."""
