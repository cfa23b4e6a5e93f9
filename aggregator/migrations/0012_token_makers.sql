-- Who made each API token, so that a token ends with its maker: a token
-- made by a user stops when that user is disabled or removed; one made by
-- another token stops when that one is revoked or expires, and never
-- outlives it.
ALTER TABLE api_tokens
    ADD COLUMN made_by_user  bigint REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN made_by_token bigint REFERENCES api_tokens (id) ON DELETE CASCADE;
