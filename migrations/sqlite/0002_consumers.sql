-- 0002_consumers: how far each projection process got, as it reports it, so that lag is
-- visible in one place and a reader can wait until a read model has reached its own write.
-- `updated_at` is microseconds since the Unix epoch, UTC.

CREATE TABLE consumers (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
