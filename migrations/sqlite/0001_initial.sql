-- 0001_initial: the log, the stream heads and the log head.
--
-- `events` is the append-only log. Positions are assigned by the one writer inside the
-- committing transaction (BEGIN IMMEDIATE holds SQLite's write lock), so they are gap-free
-- and commit-ordered. `position` is the rowid: reads by position are B-tree walks.
-- `data` and `metadata` are the JSON text the client sent, kept as text so they come back
-- byte for byte. `recorded_at` is microseconds since the Unix epoch, UTC.

CREATE TABLE events (
    position       INTEGER PRIMARY KEY CHECK (position > 0),
    stream         TEXT    NOT NULL,
    category       TEXT    NOT NULL,
    revision       INTEGER NOT NULL CHECK (revision >= 0),
    id             BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL CHECK (schema_version > 0),
    data           TEXT    NOT NULL,
    metadata       TEXT,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream, revision)
) STRICT;

-- Category reads and type-filtered reads walk these in position order.
CREATE INDEX events_category_position ON events (category, position);
CREATE INDEX events_type_position ON events (type, position);

-- The last revision of every stream: one row read per stream an append touches.
CREATE TABLE streams (
    name     TEXT    PRIMARY KEY,
    revision INTEGER NOT NULL CHECK (revision >= 0)
) STRICT, WITHOUT ROWID;

-- The last position in the log.
CREATE TABLE log_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    position  INTEGER NOT NULL CHECK (position >= 0)
) STRICT;
INSERT INTO log_head (singleton, position) VALUES (1, 0);
