"""``python -m videoserve.tiny_models ...`` as before: the builder of random-weight Wan models now
lives in ``videoserve.devtools.tiny_models``; this name forwards to it."""

from videoserve.devtools.tiny_models import main

if __name__ == "__main__":
    raise SystemExit(main())
