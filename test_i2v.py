"""End-to-end check of a running backend: health, T2V, I2V, response formats, cleanup.

    python test_i2v.py                                 # starts a tiny backend itself
    python test_i2v.py --backend_url http://host:8000  # checks a running backend
    python test_i2v.py --api_key KEY                   # ... that requires an API key
                                                       # (or $VIDEOSERVE_API_KEY)

Exits 0 only when every check passes. Also collected by pytest.
"""

from __future__ import annotations

import sys

from videoserve.devtools.smoke import main, run_checks  # noqa: F401 - run_checks is used by pytest


def test_i2v_script_with_its_own_tiny_backend_requiring_a_key(capsys):
    assert main(["--api_key", "smoke-test-key"]) == 0
    out = capsys.readouterr().out
    for check in ("health", "api key", "t2v", "i2v", "response format", "cleanup"):
        assert f"PASS {check}" in out


if __name__ == "__main__":
    sys.exit(main())
