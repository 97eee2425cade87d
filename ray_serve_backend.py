"""Start the video generation backend (Ray Serve + FastAPI). See README.md for flags."""

import sys

from videoserve.serve.backend_cli import main

if __name__ == "__main__":
    sys.exit(main())
