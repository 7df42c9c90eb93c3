"""What more than one scribe service uses, kept once (CONVENTIONS.md, "Layout")."""

__version__ = "0.1.0"
