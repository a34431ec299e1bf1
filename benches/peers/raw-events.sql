-- The raw baselines' table: the store's `events` shape (the same columns and indexes),
-- positions from an identity column. Used by peers/postgres.sh and benches/growth.
CREATE TABLE raw_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream         text COLLATE "C" NOT NULL,
    category       text COLLATE "C" NOT NULL,
    revision       bigint NOT NULL,
    id             uuid NOT NULL UNIQUE,
    type           text COLLATE "C" NOT NULL,
    schema_version integer NOT NULL,
    data           text NOT NULL,
    metadata       text,
    recorded_at    timestamptz NOT NULL,
    UNIQUE (stream, revision)
);
CREATE INDEX ON raw_events (category, position);
CREATE INDEX ON raw_events (type, position);
