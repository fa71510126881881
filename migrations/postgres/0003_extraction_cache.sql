-- Extractions by costly extractors (the LLM's), per passage content (SHA-256 of title, newline, text) and extractor
-- name, reused for identical passages: re-ingestion, or the same text in another document.
-- Keep in step with migrations/sqlite/0003_extraction_cache.sql.
CREATE TABLE extraction_cache (
    content_hash TEXT NOT NULL,
    extractor    TEXT NOT NULL,
    extraction   TEXT NOT NULL,
    PRIMARY KEY (content_hash, extractor)
);

-- Which extractor a job's passages go to, and how many of its passages are extracted so far.
ALTER TABLE jobs ADD COLUMN extractor TEXT;
ALTER TABLE jobs ADD COLUMN passages_extracted BIGINT NOT NULL DEFAULT 0;
