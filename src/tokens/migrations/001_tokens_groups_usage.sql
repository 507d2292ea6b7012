-- condagate schema 1: tokens (digests only), the groups of channels, usage counters.

CREATE TABLE condagate_tokens (
    digest   bytea PRIMARY KEY CHECK (length(digest) = 32),
    name     text NOT NULL,
    "user"   text NOT NULL,
    scopes   text[] NOT NULL,
    created  timestamptz NOT NULL,
    expires  timestamptz,
    revoked  timestamptz,
    channels text[]
);
-- One active token of a name per user, whichever replica creates it.
CREATE UNIQUE INDEX condagate_tokens_active_name ON condagate_tokens ("user", name) WHERE revoked IS NULL;

CREATE TABLE condagate_groups (
    channel  text NOT NULL,
    name     text NOT NULL,
    members  text[] NOT NULL DEFAULT '{}',
    packages text[] NOT NULL DEFAULT '{}',
    labels   text[],
    PRIMARY KEY (channel, name)
);

-- Written in batches by every replica; no trigger, so counting never makes the replicas reload.
CREATE TABLE condagate_downloads (
    channel text NOT NULL,
    package text NOT NULL,
    count   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, package)
);

CREATE TABLE condagate_token_usage (
    digest    bytea PRIMARY KEY,
    last_used timestamptz NOT NULL
);

-- Every change of tokens or groups, by condagate or by hand, tells the listening replicas.
CREATE FUNCTION condagate_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('condagate', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER condagate_tokens_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON condagate_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION condagate_notify();
CREATE TRIGGER condagate_groups_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON condagate_groups
    FOR EACH STATEMENT EXECUTE FUNCTION condagate_notify();
