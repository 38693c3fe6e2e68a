"""The operator console (Textual). Talks to the daemon only through its control API."""
