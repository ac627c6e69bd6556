-- depends: 0002_capture
-- API tokens. Only a keyed hash of each token is stored, never the token: a
-- token is 256 random bits, so its hash cannot be reversed or guessed.

CREATE TABLE sync_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    token_hash bytea NOT NULL UNIQUE,
    scopes     text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'audit', 'admin']
                                      AND cardinality(scopes) > 0),
    branch_id  uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
