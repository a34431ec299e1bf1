-- 0006_catalog: the counts `GET /categories` and `GET /types` answer, kept exact by every
-- commit (which adds what it writes) and every scavenger step (which takes off what it
-- removes), in the same transaction. A handful of rows change per commit, whatever the
-- size of the store. Stores older than this migration are counted once, here.

CREATE TABLE category_counts (
    category TEXT    PRIMARY KEY,
    streams  INTEGER NOT NULL CHECK (streams >= 0),
    events   INTEGER NOT NULL CHECK (events >= 0)
) STRICT, WITHOUT ROWID;

CREATE TABLE type_counts (
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    events         INTEGER NOT NULL CHECK (events >= 0),
    PRIMARY KEY (type, schema_version)
) STRICT, WITHOUT ROWID;

INSERT INTO category_counts (category, streams, events)
SELECT category, sum(streams), sum(events) FROM (
    SELECT CASE WHEN instr(name, '-') > 0 THEN substr(name, 1, instr(name, '-') - 1)
                ELSE name END AS category, 1 AS streams, 0 AS events
    FROM streams
    UNION ALL
    SELECT category, 0, count(*) FROM events GROUP BY category)
GROUP BY category;

INSERT INTO type_counts (type, schema_version, events)
SELECT type, schema_version, count(*) FROM events GROUP BY type, schema_version;
