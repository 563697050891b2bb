-- Keybrake ledger. Money columns are integer micro-dollars; times are Unix epoch milliseconds.

CREATE TABLE management_tokens (
  id           TEXT PRIMARY KEY,            -- tok_…
  name         TEXT NOT NULL,
  token_hash   TEXT NOT NULL UNIQUE,        -- SHA-256 hex of the token; the token itself is never stored
  created_at   INTEGER NOT NULL,
  revoked_at   INTEGER
);

CREATE TABLE vendor_secrets (
  vendor       TEXT NOT NULL,
  field        TEXT NOT NULL,               -- secret_key | account_sid | auth_token | api_key
  ciphertext   TEXT NOT NULL,               -- AES-256-GCM: base64(iv ‖ tag ‖ ciphertext)
  last4        TEXT NOT NULL,
  updated_at   INTEGER NOT NULL,
  PRIMARY KEY (vendor, field)
);

CREATE TABLE vault_keys (
  id                       TEXT PRIMARY KEY,     -- key_…
  key_hash                 TEXT NOT NULL UNIQUE, -- SHA-256 hex of the vault key
  key_hint                 TEXT NOT NULL,        -- first characters, to recognise a key in lists
  vendor                   TEXT NOT NULL CHECK (vendor IN ('stripe', 'twilio', 'resend')),
  daily_cap_micros         INTEGER NOT NULL CHECK (daily_cap_micros >= 0),
  total_cap_micros         INTEGER CHECK (total_cap_micros >= 0),
  allowed_endpoints        TEXT NOT NULL,        -- JSON array of "METHOD /path"
  agent_run_label          TEXT NOT NULL,
  metadata                 TEXT NOT NULL DEFAULT '{}',
  dedupe_window_ms         INTEGER,
  require_idempotency_key  INTEGER NOT NULL DEFAULT 0,
  allow_unpriced           INTEGER NOT NULL DEFAULT 0,
  expires_at               INTEGER NOT NULL,
  created_at               INTEGER NOT NULL,
  revoked_at               INTEGER,
  spent_total_micros       INTEGER NOT NULL DEFAULT 0,
  reserved_total_micros    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX vault_keys_label ON vault_keys (agent_run_label, id);
CREATE INDEX vault_keys_created ON vault_keys (id);

-- One row per key per UTC day: what is settled and what is reserved by calls in flight.
CREATE TABLE key_spend_days (
  key_id           TEXT NOT NULL REFERENCES vault_keys (id),
  day              TEXT NOT NULL,                -- YYYY-MM-DD (UTC)
  spent_micros     INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
  reserved_micros  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
  PRIMARY KEY (key_id, day)
) WITHOUT ROWID;

-- id is the rowid: rows are never deleted, so it only grows, and cursors and time order
-- agree. No AUTOINCREMENT: its sqlite_sequence write cost ~15% of every ledger commit.
CREATE TABLE audit_log (
  id                 INTEGER PRIMARY KEY,
  ts                 INTEGER NOT NULL,
  key_id             TEXT,
  agent_run_label    TEXT,
  vendor             TEXT NOT NULL,
  method             TEXT NOT NULL,
  path               TEXT NOT NULL,
  outcome            TEXT NOT NULL,
  error_code         TEXT,
  vendor_status      INTEGER,
  estimated_micros   INTEGER NOT NULL DEFAULT 0,
  settled_micros     INTEGER,
  ledger_state       TEXT NOT NULL DEFAULT 'none', -- none | reserved | settled | released | unsettled
  spend_day          TEXT,
  vendor_request_id  TEXT,
  vendor_object_id   TEXT,
  idempotency_key    TEXT,
  latency_ms         REAL,
  replay_of          INTEGER
);
CREATE INDEX audit_key ON audit_log (key_id, id);
CREATE INDEX audit_label ON audit_log (agent_run_label, id);
CREATE INDEX audit_ts ON audit_log (ts);
CREATE INDEX audit_outcome ON audit_log (outcome, id);
CREATE INDEX audit_object ON audit_log (vendor_object_id) WHERE vendor_object_id IS NOT NULL;
