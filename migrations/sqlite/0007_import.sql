-- 0007_import: an import in progress. `store-server import` writes this row before the
-- first event and deletes it with the last state line, in that line's transaction: a
-- store with the row holds part of an export, and only an import of the same export
-- (the same head) may carry on into it.

CREATE TABLE import_progress (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    head      BIGINT  NOT NULL
);
