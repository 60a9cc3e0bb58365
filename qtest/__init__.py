"""qtest: the qtest protocol server, client library, launcher and pytest plugin."""
