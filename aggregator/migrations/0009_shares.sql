-- Share links: a read-only view of one dashboard over a scope its creator
-- chose, for people without an account (a client, an investor, a
-- patient's family). Always expiring; revocable; stored as a digest.
CREATE TABLE share_tokens (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    dashboard    text        NOT NULL CHECK (dashboard ~ '^[A-Za-z0-9._-]{1,64}$'),
    label        text        NOT NULL DEFAULT '',
    sha256       text        NOT NULL UNIQUE,
    place        text,
    customer     text,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (place IS NULL OR customer IS NULL),
    FOREIGN KEY (tenant, place) REFERENCES places (tenant, place),
    FOREIGN KEY (tenant, customer) REFERENCES customers (tenant, customer)
);
CREATE INDEX share_tokens_by_tenant ON share_tokens (tenant, id);

-- A session's public handle, so its user can list and end it (the key is
-- the cookie's digest, which is never shown).
ALTER TABLE sessions ADD COLUMN id bigserial UNIQUE;
