"""Errors subclass builtins, carry their context and survive pickling (worker processes)."""

from __future__ import annotations

import pickle

import pytest

from trt_runtime import errors


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(errors.ConfigurationError, ValueError), (errors.BackendUnavailableError, ImportError),
     (errors.EngineBuildError, RuntimeError), (errors.EngineRunError, RuntimeError),
     (errors.ValidationError, ArithmeticError), (errors.CacheError, OSError),
     (errors.UnkeyableInputError, TypeError)],
)
def test_error_types_subclass_builtins(cls, builtin):
    err = cls("it broke", component="unet", shapes=[(2, 4, 64, 64)], path="/tmp/x", hint="do this")
    assert isinstance(err, builtin) and isinstance(err, errors.TrtRuntimeError)
    text = str(err)
    assert "[unet] it broke" in text and "(2, 4, 64, 64)" in text and "/tmp/x" in text and "do this" in text
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and str(copy) == text and copy.component == "unet" and copy.path == "/tmp/x"
