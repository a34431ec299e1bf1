-- 0008_groups: consumer groups. A group's settings; per partition the position its events
-- are acknowledged up to, the member that owns it (at most one) and the one it goes to
-- next; the members' leases (a lapsed lease frees its partitions); parked events. Every
-- change of a group runs under its row's lock (SELECT … FOR UPDATE), across instances.

CREATE TABLE groups (
    name       text        COLLATE "C" PRIMARY KEY,
    category   text        COLLATE "C",
    types      text        NOT NULL,  -- a JSON array of type names, sorted
    partitions integer     NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    start      bigint      NOT NULL CHECK (start >= 0),
    created_at timestamptz NOT NULL
);

CREATE TABLE group_partitions (
    group_name     text    COLLATE "C" NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    partition      integer NOT NULL CHECK (partition >= 0),
    position       bigint  NOT NULL CHECK (position >= 0),
    owner          text    COLLATE "C",
    wanted         text    COLLATE "C",
    redeliver_from bigint,
    PRIMARY KEY (group_name, partition)
);

CREATE TABLE group_members (
    group_name text        COLLATE "C" NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    member     text        COLLATE "C" NOT NULL,
    session    text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_name, member)
);

CREATE TABLE group_parked (
    group_name text        COLLATE "C" NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    position   bigint      NOT NULL,
    partition  integer     NOT NULL,
    parked_at  timestamptz NOT NULL,
    replay     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (group_name, position)
);
