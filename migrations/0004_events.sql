-- The operator trail (SPEC §7): every management action and alert, who did it, to what.
CREATE TABLE events (
  id              TEXT PRIMARY KEY,          -- evt_… (time-ordered: newest first = id descending)
  ts              INTEGER NOT NULL,
  type            TEXT NOT NULL,             -- key.issued, cap.threshold, token.revoked, …
  actor_token_id  TEXT,                      -- null for alerts Keybrake raises itself
  actor_name      TEXT,
  target          TEXT,                      -- key_…, budget_…, tok_…, whk_…, a run label or a vendor
  data            TEXT NOT NULL DEFAULT '{}' -- JSON: what applies of key_id, budget_id, agent_run_label, threshold, spent_usd, cap_usd
);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_ts ON events (ts);
