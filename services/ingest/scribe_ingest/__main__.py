"""Entry point: ``python -m scribe_ingest``."""

from scribe_ingest import SERVICE_NAME
from scribe_ingest.config import Settings
from scribe_ingest.servicer import create_server
from scribe_libs.server import serve_main


def main() -> None:
    """Serve until SIGTERM."""
    serve_main(SERVICE_NAME, Settings, create_server)


if __name__ == "__main__":
    main()
