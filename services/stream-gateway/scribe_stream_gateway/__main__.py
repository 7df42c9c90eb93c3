"""Entry point: ``python -m scribe_stream_gateway``."""

from scribe_libs.server import serve_main
from scribe_stream_gateway import SERVICE_NAME
from scribe_stream_gateway.config import Settings
from scribe_stream_gateway.servicer import create_server


def main() -> None:
    """Serve until SIGTERM."""
    serve_main(SERVICE_NAME, Settings, create_server)


if __name__ == "__main__":
    main()
