-- Knowledge graph: open-IE extractions per passage, phrase nodes, triples between them and synonym edges.
-- Replaces the placeholder tables of 0001, which nothing wrote to. Keep in step with migrations/sqlite/0002_graph.sql.
DROP TABLE passage_phrases;
DROP TABLE triples;
DROP TABLE phrases;

-- A phrase node: a normalised entity. `linked` = 1 once its vector is stored and its synonym edges are computed.
CREATE TABLE phrases (
    id     BIGSERIAL PRIMARY KEY,
    text   TEXT NOT NULL UNIQUE,
    linked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX phrases_unlinked ON phrases (linked) WHERE linked = 0;

-- One row per extracted passage: which extractor ran and the entities it found (a JSON list).
CREATE TABLE extractions (
    passage_id BIGINT PRIMARY KEY REFERENCES passages (id) ON DELETE CASCADE,
    extractor  TEXT NOT NULL,
    entities   TEXT NOT NULL
);

CREATE TABLE triples (
    id         BIGSERIAL PRIMARY KEY,
    passage_id BIGINT NOT NULL REFERENCES passages (id) ON DELETE CASCADE,
    subject_id BIGINT NOT NULL REFERENCES phrases (id),
    relation   TEXT NOT NULL,
    object_id  BIGINT NOT NULL REFERENCES phrases (id)
);
CREATE INDEX triples_passage ON triples (passage_id);

-- Undirected synonym edge (phrase_a < phrase_b), weight = cosine similarity of the phrases' embeddings.
CREATE TABLE synonyms (
    phrase_a BIGINT NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    phrase_b BIGINT NOT NULL REFERENCES phrases (id) ON DELETE CASCADE,
    weight   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (phrase_a, phrase_b)
);
