-- 0002_consumers: how far each projection process got, as it reports it, so that lag is
-- visible in one place and a reader can wait until a read model has reached its own write.

CREATE TABLE consumers (
    name       text        COLLATE "C" PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);
