"""Entry point: ``python -m scribe_postprocess``."""

from scribe_libs.server import serve_main
from scribe_postprocess import SERVICE_NAME
from scribe_postprocess.config import Settings
from scribe_postprocess.servicer import create_server


def main() -> None:
    """Serve until SIGTERM."""
    serve_main(SERVICE_NAME, Settings, create_server)


if __name__ == "__main__":
    main()
