-- Users of the API and dashboard, the applications granted to them, and their
-- refresh tokens. Passwords are argon2id hashes; refresh tokens are random and
-- stored as SHA-256 digests only, so a dump of this database reveals neither.
CREATE TABLE users (
    id                  bigserial PRIMARY KEY,
    username            text NOT NULL UNIQUE
                        CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2%'),
    role                text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    disabled            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_applications (
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    application_id  text NOT NULL
                    CHECK (application_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    granted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, application_id)
);

-- One row per issued refresh token. A token is used once: using it marks the row
-- and issues a successor in the same family; presenting a used token again
-- revokes the whole family (it was stolen, or the client is confused).
CREATE TABLE refresh_tokens (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    family      uuid NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
