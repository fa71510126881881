-- Engram schema, SQLite flavour. Keep in step with migrations/postgres/0001_init.sql.
CREATE TABLE documents (
    id           TEXT PRIMARY KEY,
    title        TEXT NOT NULL,
    source       TEXT,
    media_type   TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT 'null',
    indexed      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);
CREATE INDEX documents_created_at ON documents (created_at, id);
CREATE INDEX documents_unindexed ON documents (indexed) WHERE indexed = 0;

CREATE TABLE passages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal     INTEGER NOT NULL,
    title       TEXT NOT NULL,
    text        TEXT NOT NULL,
    start_byte  INTEGER NOT NULL,
    end_byte    INTEGER NOT NULL,
    UNIQUE (document_id, ordinal)
);

CREATE TABLE jobs (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX jobs_status ON jobs (status, created_at);

CREATE TABLE job_items (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    title         TEXT NOT NULL,
    source        TEXT,
    media_type    TEXT NOT NULL,
    text          TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT 'null',
    status        TEXT NOT NULL,
    document_id   TEXT,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, seq)
);

-- Room for the knowledge graph (open-IE phrases and triples per passage).
CREATE TABLE phrases (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL UNIQUE
);

CREATE TABLE passage_phrases (
    passage_id INTEGER NOT NULL REFERENCES passages (id) ON DELETE CASCADE,
    phrase_id  INTEGER NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    PRIMARY KEY (passage_id, phrase_id)
);

CREATE TABLE triples (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    passage_id INTEGER NOT NULL REFERENCES passages (id) ON DELETE CASCADE,
    subject    TEXT NOT NULL,
    relation   TEXT NOT NULL,
    object     TEXT NOT NULL
);
CREATE INDEX triples_passage ON triples (passage_id);
