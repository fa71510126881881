-- Knowledge graph: open-IE extractions per passage, phrase nodes, triples between them and synonym edges.
-- Replaces the placeholder tables of 0001, which nothing wrote to. Keep in step with migrations/postgres/0002_graph.sql.
DROP TABLE passage_phrases;
DROP TABLE triples;
DROP TABLE phrases;

-- A phrase node: a normalised entity. `linked` = 1 once its vector is stored and its synonym edges are computed.
CREATE TABLE phrases (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    text   TEXT NOT NULL UNIQUE,
    linked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX phrases_unlinked ON phrases (linked) WHERE linked = 0;

-- One row per extracted passage: which extractor ran and the entities it found (a JSON list).
CREATE TABLE extractions (
    passage_id INTEGER PRIMARY KEY REFERENCES passages (id) ON DELETE CASCADE,
    extractor  TEXT NOT NULL,
    entities   TEXT NOT NULL
);

CREATE TABLE triples (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    passage_id INTEGER NOT NULL REFERENCES passages (id) ON DELETE CASCADE,
    subject_id INTEGER NOT NULL REFERENCES phrases (id),
    relation   TEXT NOT NULL,
    object_id  INTEGER NOT NULL REFERENCES phrases (id)
);
CREATE INDEX triples_passage ON triples (passage_id);

-- Undirected synonym edge (phrase_a < phrase_b), weight = cosine similarity of the phrases' embeddings.
CREATE TABLE synonyms (
    phrase_a INTEGER NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    phrase_b INTEGER NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    weight   REAL NOT NULL,
    PRIMARY KEY (phrase_a, phrase_b)
);
