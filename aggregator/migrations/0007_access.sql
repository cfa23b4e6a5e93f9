-- People and what they may see: users with argon2id passwords, roles bound
-- to a scope (a tenant, a place's subtree, or a customer), sessions, and
-- API tokens. Secrets are stored as digests only.

CREATE TABLE users (
    id              bigserial   PRIMARY KEY,
    login           text        NOT NULL UNIQUE CHECK (login ~ '^[A-Za-z0-9._@+-]{1,128}$'),
    name            text        NOT NULL DEFAULT '',
    email           text,
    -- argon2id in PHC string form; NULL: no password login.
    password_hash   text,
    -- Operators span every tenant (the platform's own staff).
    operator        boolean     NOT NULL DEFAULT false,
    disabled_at     timestamptz,
    -- Failed logins in a row, and the lockout they caused.
    failed_logins   integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A role in a scope: the whole tenant (place and customer NULL), a place
-- and everything below it, or one customer's devices.
CREATE TABLE bindings (
    id          bigserial   PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant      text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    place       text,
    customer    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (place IS NULL OR customer IS NULL),
    FOREIGN KEY (tenant, place) REFERENCES places (tenant, place),
    FOREIGN KEY (tenant, customer) REFERENCES customers (tenant, customer),
    UNIQUE NULLS NOT DISTINCT (user_id, tenant, role, place, customer)
);
CREATE INDEX bindings_by_user ON bindings (user_id);

-- Browser sessions: the cookie's SHA-256, never the cookie.
CREATE TABLE sessions (
    id_sha256   text        PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    client      text,
    user_agent  text
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- API tokens: a role in a scope, like a binding, held by a program.
CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    name         text        NOT NULL,
    sha256       text        NOT NULL UNIQUE,
    role         text        NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    place        text,
    customer     text,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (place IS NULL OR customer IS NULL),
    FOREIGN KEY (tenant, place) REFERENCES places (tenant, place),
    FOREIGN KEY (tenant, customer) REFERENCES customers (tenant, customer),
    UNIQUE (tenant, name)
);

-- Whether a device (its tenant, place, customer) is within a scope's reach:
-- `scope_places` NULL is the whole tenant; otherwise the subtrees of those
-- places, and the devices of `scope_customers`. Every scoped read uses it.
CREATE FUNCTION dash_in_scope(d_tenant text, d_place text, d_customer text,
                              scope_places text[], scope_customers text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT scope_places IS NULL
        OR coalesce(d_customer = ANY (scope_customers), false)
        OR EXISTS (
            SELECT 1 FROM places a JOIN places p ON p.tenant = a.tenant AND starts_with(p.path, a.path)
            WHERE a.tenant = d_tenant AND a.place = ANY (scope_places) AND p.place = d_place)
$$;
