-- 0001_initial: the log, the stream heads and the log head.
--
-- `events` is the append-only log. Positions are assigned by the writer inside the
-- committing transaction while it holds the `log_head` row lock, never by a sequence:
-- sequences hand out numbers in allocation order, not commit order, and a reader that
-- follows "last position seen" would skip an event that commits late.
-- `data` and `metadata` are the JSON text the client sent, kept as text so they come back
-- byte for byte (jsonb would re-encode numbers and reorder keys).
-- Names use the "C" collation: byte order, as the API compares them, and cheaper.

CREATE TABLE events (
    position       bigint      PRIMARY KEY CHECK (position > 0),
    stream         text        COLLATE "C" NOT NULL,
    category       text        COLLATE "C" NOT NULL,
    revision       bigint      NOT NULL CHECK (revision >= 0),
    id             uuid        NOT NULL UNIQUE,
    type           text        COLLATE "C" NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version > 0),
    data           text        NOT NULL,
    metadata       text,
    recorded_at    timestamptz NOT NULL,
    UNIQUE (stream, revision)
);

-- Category reads and type-filtered reads walk these in position order.
CREATE INDEX events_category_position ON events (category, position);
CREATE INDEX events_type_position ON events (type, position);

-- The last revision of every stream: one row read per stream an append touches.
CREATE TABLE streams (
    name     text   COLLATE "C" PRIMARY KEY,
    revision bigint NOT NULL CHECK (revision >= 0)
);

-- The last position in the log. Its one row is the lock that serialises writers.
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL CHECK (position >= 0)
);
INSERT INTO log_head (singleton, position) VALUES (true, 0);
