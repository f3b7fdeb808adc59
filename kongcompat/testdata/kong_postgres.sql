-- Kong's PostgreSQL tables that `caddy acme-migrate` reads, as Kong 3.x's
-- migrations create them (core 000_base and its successors for workspaces,
-- certificates and snis; the acme plugin's 000_base_acme and 001_280_to_300
-- for acme_storage). Tests load this into a fresh database and then write
-- rows the way Kong does.

CREATE TABLE IF NOT EXISTS "workspaces" (
  "id"          UUID                       PRIMARY KEY,
  "name"        TEXT                       UNIQUE,
  "comment"     TEXT,
  "created_at"  TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  "meta"        JSONB,
  "config"      JSONB,
  "updated_at"  TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC')
);
INSERT INTO "workspaces" ("id", "name") VALUES ('5c8c1fb4-0bd4-4b3d-9c29-7a2e1d3d8f10', 'default') ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS "certificates" (
  "id"          UUID                       PRIMARY KEY,
  "created_at"  TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  "cert"        TEXT,
  "key"         TEXT,
  "tags"        TEXT[],
  "ws_id"       UUID                       REFERENCES "workspaces" ("id"),
  "cert_alt"    TEXT,
  "key_alt"     TEXT,
  "updated_at"  TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  UNIQUE ("id", "ws_id")
);
CREATE INDEX IF NOT EXISTS "certificates_tags_idx" ON "certificates" USING GIN ("tags");

CREATE TABLE IF NOT EXISTS "snis" (
  "id"              UUID                       PRIMARY KEY,
  "created_at"      TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  "name"            TEXT                       NOT NULL UNIQUE,
  "certificate_id"  UUID                       REFERENCES "certificates" ("id"),
  "tags"            TEXT[],
  "ws_id"           UUID                       REFERENCES "workspaces" ("id"),
  "updated_at"      TIMESTAMP WITH TIME ZONE   DEFAULT (CURRENT_TIMESTAMP(0) AT TIME ZONE 'UTC'),
  UNIQUE ("id", "ws_id")
);
CREATE INDEX IF NOT EXISTS "snis_certificate_id_idx" ON "snis" ("certificate_id");
CREATE INDEX IF NOT EXISTS "snis_tags_idx" ON "snis" USING GIN ("tags");

CREATE TABLE IF NOT EXISTS "acme_storage" (
  "id"          UUID                       PRIMARY KEY,
  "key"         TEXT                       UNIQUE,
  "value"       TEXT,
  "created_at"  TIMESTAMP WITH TIME ZONE,
  "ttl"         TIMESTAMP WITH TIME ZONE
);
CREATE INDEX IF NOT EXISTS "acme_storage_ttl_idx" ON "acme_storage" ("ttl");
