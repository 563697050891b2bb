-- Governance (SPEC §7): management tokens carry a role and, for issuers, a policy; every vault
-- key remembers the token that issued it; admin sessions remember the token they were opened
-- with, so revoking a token ends its sessions.

-- Tokens minted before roles existed could do everything: they stay admins.
ALTER TABLE management_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'issuer', 'viewer'));
ALTER TABLE management_tokens ADD COLUMN policy TEXT;  -- JSON issuer policy; null for admin and viewer

-- tok_…, or 'bootstrap' for KEYBRAKE_ADMIN_TOKEN; null for keys issued before this migration (by an admin).
ALTER TABLE vault_keys ADD COLUMN issued_by_token_id TEXT;
CREATE INDEX vault_keys_issuer ON vault_keys (issued_by_token_id, id);

ALTER TABLE admin_sessions ADD COLUMN token_id TEXT;
-- A session from before this migration cannot say which token opened it, so it cannot be ended
-- by a revoke: end them all (one more login, once).
UPDATE admin_sessions SET ended_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000 WHERE ended_at IS NULL;
CREATE INDEX admin_sessions_token ON admin_sessions (token_id) WHERE ended_at IS NULL;
