"""End-to-end check of a running backend: health, T2V, I2V, response formats, cleanup.

    python test_i2v.py                                 # starts a tiny backend itself
    python test_i2v.py --backend_url http://host:8000  # checks a running backend

Exits 0 only when every check passes. Also collected by pytest.
"""

from __future__ import annotations

import sys

from videoserve.smoke import main, run_checks  # noqa: F401 - run_checks is used by pytest


def test_i2v_script_with_its_own_tiny_backend(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for check in ("health", "t2v", "i2v", "response format", "cleanup"):
        assert f"PASS {check}" in out


if __name__ == "__main__":
    sys.exit(main())
