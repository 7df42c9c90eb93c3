"""Entry point: ``python -m scribe_http_gateway``."""

from scribe_http_gateway.server import serve_main


def main() -> None:
    """Serve until SIGTERM."""
    serve_main()


if __name__ == "__main__":
    main()
