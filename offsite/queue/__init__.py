"""The durable queue of upload and delete items (persist-queue's SQLite ack queue).

One writer, the process that holds the state directory's lock, opens it with `WorkQueue`;
anyone else reads it with `read_items`, through SQLite opened read-only, which never
changes the writer's work (persist-queue resets in-flight items on open: #132, #152).
"""
from .store import (
    CHANGED,
    CORRUPT,
    QueueItem,
    WorkQueue,
    count_rows,
    oldest_upload,
    read_items,
    summary,
)

__all__ = ["CHANGED", "CORRUPT", "QueueItem", "WorkQueue", "count_rows", "oldest_upload", "read_items", "summary"]
