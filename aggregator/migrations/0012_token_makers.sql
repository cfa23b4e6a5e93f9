-- Who made each API token and share link, so that it ends with its maker:
-- one made by a user stops when that user is disabled or removed; one made
-- by a token stops when that token (or any up its chain) is revoked or
-- expires, and never outlives it. A maker is always older than what it
-- made, so a chain cannot loop.
ALTER TABLE api_tokens
    ADD COLUMN made_by_user  bigint REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN made_by_token bigint REFERENCES api_tokens (id) ON DELETE CASCADE,
    ADD CHECK (made_by_token < id);
ALTER TABLE share_tokens
    ADD COLUMN made_by_user  bigint REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN made_by_token bigint REFERENCES api_tokens (id) ON DELETE CASCADE;

-- When a login last failed: a count of failures older than the lockout
-- starts again, for known logins as for unknown ones.
ALTER TABLE users ADD COLUMN last_failed_at timestamptz;

-- Whether a maker is still good: the user (if any) not disabled, and every
-- token up the chain (if any) neither revoked nor expired, nor made by a
-- disabled user. The chain ends: each maker is older than what it made.
CREATE FUNCTION dash_maker_live(m_user bigint, m_token bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain AS (
        SELECT id, made_by_user, made_by_token, revoked_at, expires_at
        FROM api_tokens WHERE id = m_token
        UNION ALL
        SELECT a.id, a.made_by_user, a.made_by_token, a.revoked_at, a.expires_at
        FROM api_tokens a JOIN chain c ON a.id = c.made_by_token
    )
    SELECT NOT EXISTS (SELECT 1 FROM chain WHERE revoked_at IS NOT NULL OR expires_at <= now())
       AND NOT EXISTS (SELECT 1 FROM users u WHERE u.disabled_at IS NOT NULL
                       AND (u.id = m_user OR u.id IN (SELECT made_by_user FROM chain)))
$$;
