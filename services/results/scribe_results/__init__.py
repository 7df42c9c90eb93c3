"""scribe results: answers clients about jobs, transcripts and workers."""

SERVICE_NAME = "scribe-results"
