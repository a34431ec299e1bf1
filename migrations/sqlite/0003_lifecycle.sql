-- 0003_lifecycle: deletion, truncation and retention.
--
-- A stream's row keeps how it was deleted and its own retention; `removed_before` is how
-- far the scavenger has physically removed its events (every revision below it is gone,
-- system events aside, which stay so that every reader learns of deletions).
-- `category_retention` holds the defaults of a category's streams.
-- Freed pages go to SQLite's freelist and are reused by later inserts: under a steady
-- append-and-expire load the file stops growing (it does not shrink; VACUUM does that).

ALTER TABLE streams ADD COLUMN deleted TEXT CHECK (deleted IN ('soft', 'hard'));
ALTER TABLE streams ADD COLUMN max_count INTEGER CHECK (max_count > 0);
ALTER TABLE streams ADD COLUMN max_age_seconds INTEGER CHECK (max_age_seconds > 0);
ALTER TABLE streams ADD COLUMN truncate_before INTEGER CHECK (truncate_before >= 0);
ALTER TABLE streams ADD COLUMN removed_before INTEGER NOT NULL DEFAULT 0
    CHECK (removed_before >= 0);

-- What the scavenger looks at each pass, without walking every stream.
CREATE INDEX streams_retained ON streams (name)
    WHERE max_count IS NOT NULL OR max_age_seconds IS NOT NULL
       OR truncate_before > removed_before;

CREATE TABLE category_retention (
    category        TEXT    PRIMARY KEY,
    max_count       INTEGER CHECK (max_count > 0),
    max_age_seconds INTEGER CHECK (max_age_seconds > 0)
) STRICT, WITHOUT ROWID;
