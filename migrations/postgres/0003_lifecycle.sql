-- 0003_lifecycle: deletion, truncation and retention.
--
-- A stream's row keeps how it was deleted and its own retention; `removed_before` is how
-- far the scavenger has physically removed its events (every revision below it is gone,
-- system events aside, which stay so that every reader learns of deletions).
-- `category_retention` holds the defaults of a category's streams.

ALTER TABLE streams
    ADD COLUMN deleted         text   CHECK (deleted IN ('soft', 'hard')),
    ADD COLUMN max_count       bigint CHECK (max_count > 0),
    ADD COLUMN max_age_seconds bigint CHECK (max_age_seconds > 0),
    ADD COLUMN truncate_before bigint CHECK (truncate_before >= 0),
    ADD COLUMN removed_before  bigint NOT NULL DEFAULT 0 CHECK (removed_before >= 0);

-- What the scavenger looks at each pass, without walking every stream.
CREATE INDEX streams_retained ON streams (name)
    WHERE max_count IS NOT NULL OR max_age_seconds IS NOT NULL
       OR truncate_before > removed_before;

CREATE TABLE category_retention (
    category        text   COLLATE "C" PRIMARY KEY,
    max_count       bigint CHECK (max_count > 0),
    max_age_seconds bigint CHECK (max_age_seconds > 0)
);

-- Removed rows leave dead tuples: vacuum once 2% of the table is dead rather than the
-- default 20%, so that a table under steady expiry stays near its live size.
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.02,
                        autovacuum_vacuum_threshold = 1000);
