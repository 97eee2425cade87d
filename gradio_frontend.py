"""Start the Gradio web UI (talks to the backend over HTTP). See README.md for flags."""

import sys

from videoserve.ui.app import main

if __name__ == "__main__":
    sys.exit(main())
