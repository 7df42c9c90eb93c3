"""scribe postprocess: turns raw transcripts into the final outputs and completes the job."""

SERVICE_NAME = "scribe-postprocess"
