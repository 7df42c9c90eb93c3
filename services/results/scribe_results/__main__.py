"""Entry point: ``python -m scribe_results``."""

from scribe_libs.server import serve_main
from scribe_results import SERVICE_NAME
from scribe_results.config import Settings
from scribe_results.servicer import create_server


def main() -> None:
    """Serve until SIGTERM."""
    serve_main(SERVICE_NAME, Settings, create_server)


if __name__ == "__main__":
    main()
