-- 0005_tags: tags on events, and their index.
--
-- `events.tags` keeps an event's tags as a JSON array (NULL: none), returned on reads and
-- listed by SQL when the scavenger removes the event. `event_tags` is the index reads,
-- subscriptions, queries and append conditions walk: one row per tag of an event, its
-- primary key ordered by (tag, position), so "events carrying tag T after P" is an index
-- walk of those events only, in position order, and "the first one after P" is a single
-- seek. A GIN index on an array column would find them too, but not in position order:
-- every page or condition would collect and sort all matches. An event without tags costs
-- nothing here.

ALTER TABLE events ADD COLUMN tags text;

CREATE TABLE event_tags (
    tag      text   COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tag, position)
);
