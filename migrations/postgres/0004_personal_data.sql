-- 0004_personal_data: crypto-shredding.
--
-- An event with a data subject keeps its data sealed in `sealed` (AES-256-GCM under the
-- subject's key) and the empty text in `data`. `data_subjects` holds each subject's live
-- key, wrapped by the key file's master key (named by `master_key_id`, never the key), and
-- the first position that key seals (`key_since`). Erasure sets the three to NULL: every
-- event of the subject before a later `key_since` was sealed under a key that is gone.
-- `encryption` names the master key the store's subject keys are wrapped by, and the one a
-- key rotation is moving them to.

ALTER TABLE events
    ADD COLUMN data_subject text COLLATE "C",
    ADD COLUMN sealed       bytea;

-- No index on `data_subject`: measured, its inserts at random places cost single-event
-- appends with a subject 27% of their rate. `GET /data-subjects/{subject}` counts by walking
-- the log from `first_position`, a bound at or below the subject's first event.

CREATE TABLE data_subjects (
    subject       text   COLLATE "C" PRIMARY KEY,
    key_since     bigint CHECK (key_since > 0),
    wrapped_key   bytea,
    master_key_id bytea,
    first_position bigint NOT NULL CHECK (first_position > 0),
    CHECK ((key_since IS NULL) = (wrapped_key IS NULL)
       AND (wrapped_key IS NULL) = (master_key_id IS NULL))
);

CREATE TABLE encryption (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    master_key_id bytea   NOT NULL,
    rotating_to   bytea
);
