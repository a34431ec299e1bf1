-- 0008_groups: consumer groups. A group's settings; per partition the position its events
-- are acknowledged up to, the member that owns it (at most one) and the one it goes to
-- next; the members' leases (a lapsed lease frees its partitions); parked events.
-- Times are microseconds since the Unix epoch, UTC.

CREATE TABLE groups (
    name       TEXT    PRIMARY KEY,
    category   TEXT,
    types      TEXT    NOT NULL,  -- a JSON array of type names, sorted
    partitions INTEGER NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    start      INTEGER NOT NULL CHECK (start >= 0),
    created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE group_partitions (
    group_name     TEXT    NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    partition      INTEGER NOT NULL CHECK (partition >= 0),
    position       INTEGER NOT NULL CHECK (position >= 0),
    owner          TEXT,
    wanted         TEXT,
    redeliver_from INTEGER,
    PRIMARY KEY (group_name, partition)
) STRICT, WITHOUT ROWID;

CREATE TABLE group_members (
    group_name TEXT    NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    member     TEXT    NOT NULL,
    session    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
) STRICT, WITHOUT ROWID;

CREATE TABLE group_parked (
    group_name TEXT    NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    partition  INTEGER NOT NULL,
    parked_at  INTEGER NOT NULL,
    replay     INTEGER NOT NULL DEFAULT 0 CHECK (replay IN (0, 1)),
    PRIMARY KEY (group_name, position)
) STRICT, WITHOUT ROWID;
