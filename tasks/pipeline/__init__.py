"""The export pipeline: plan the requests, parse the stream, partition, write, commit; people."""
