"""Entry point: ``python -m scribe_transcriber``."""

from scribe_libs.server import serve_main
from scribe_transcriber import SERVICE_NAME
from scribe_transcriber.config import Settings
from scribe_transcriber.servicer import create_server


def main() -> None:
    """Serve until SIGTERM."""
    serve_main(SERVICE_NAME, Settings, create_server)


if __name__ == "__main__":
    main()
