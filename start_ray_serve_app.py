"""Start the backend and the Gradio UI together; Ctrl-C stops both. See README.md for flags."""

import sys

from videoserve.serve.launcher import main

if __name__ == "__main__":
    sys.exit(main())
