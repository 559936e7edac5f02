"""Building the learner named by ``learner.path``: its keyword arguments checked against its constructor's
signature first, so a misspelt ``learner.kwargs`` key is a config error before any round runs."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from kd_loop.config import ConfigError
from kd_loop.protocols import Learner


def learner_class(path: str) -> type:
    """The class ``module:Class`` names; a malformed or unknown path is a :class:`ConfigError`."""
    module_name, sep, class_name = path.partition(":")
    if not sep:
        raise ConfigError(f"learner.path {path!r} should look like 'package.module:Class'")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"unknown learner path {path!r} ({err}); install the package that provides it") from None


def check_learner_kwargs(cls: type, path: str, tables: Iterable[Mapping[str, Any]]) -> None:
    """Raise a :class:`ConfigError` naming the first key of ``tables`` that ``cls``'s constructor does not take
    (nothing is checked when it takes ``**kwargs`` or its signature cannot be read)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)]
    for table in tables:
        unknown = sorted(set(table) - set(valid))
        if unknown:
            raise ConfigError(f"learner.kwargs.{unknown[0]}: {path} takes no such argument; valid: "
                              f"{', '.join(valid) or 'none'}")


def load_learner(path: str, kwargs: dict[str, Any]) -> Learner:
    """Import ``module:Class`` and construct it with ``kwargs``; a constructor refusing them is a ConfigError."""
    cls = learner_class(path)
    check_learner_kwargs(cls, path, [kwargs])
    try:
        learner = cls(**kwargs)
    except (TypeError, ValueError, OSError) as err:  # e.g. a bad value, or a file it names that is missing
        reason = (str(err).strip().splitlines() or [repr(err)])[0]
        raise ConfigError(f"learner {path!r} refused learner.kwargs: {reason}; fix them in the config") from None
    missing = [m for m in ("fit", "predict") if not callable(getattr(learner, m, None))]
    if missing:
        raise ConfigError(f"learner {path!r} lacks {missing[0]}(); it must implement kd_loop.Learner")
    return learner
