-- 0005_tags: tags on events, and their index.
--
-- `events.tags` keeps an event's tags as a JSON array (NULL: none), returned on reads and
-- listed by SQL when the scavenger removes the event. `event_tags` is the index reads,
-- subscriptions, queries and append conditions walk: one row per tag of an event, ordered
-- by (tag, position), so "events carrying tag T after P" is a walk of those events only,
-- in position order, and "the first one after P" is a single seek. WITHOUT ROWID: the
-- primary key is the table, one B-tree, no second copy. An event without tags costs
-- nothing here.

ALTER TABLE events ADD COLUMN tags TEXT;

CREATE TABLE event_tags (
    tag      TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tag, position)
) STRICT, WITHOUT ROWID;
