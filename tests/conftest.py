"""Fixtures every test file shares."""
import sys

import pytest


@pytest.fixture(autouse=True)
def _drop_last_traceback():
    """pytest keeps the last exception (sys.last_traceback, for post-mortem debugging), and with
    it the tensors of an xfailed test: their records would stay live at the front of the tape
    for the rest of the session. Drop it once the test is over."""
    yield
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
