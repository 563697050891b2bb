-- Pooled budgets, cap alerts and the webhook outbox (SPEC §7). Money in micro-dollars, times in epoch ms.

-- A daily cap shared by every key whose agent_run_label starts with label_prefix (and, if set, of one vendor).
CREATE TABLE budgets (
  id                TEXT PRIMARY KEY,            -- bud_…
  name              TEXT NOT NULL,
  label_prefix      TEXT NOT NULL,
  vendor            TEXT CHECK (vendor IN ('stripe', 'twilio', 'resend')),
  daily_cap_micros  INTEGER NOT NULL CHECK (daily_cap_micros >= 0),
  created_at        INTEGER NOT NULL,
  updated_at        INTEGER NOT NULL,
  deleted_at        INTEGER                      -- nothing is hard-deleted: a deleted budget stops applying
);

-- One row per budget per UTC day, exactly like key_spend_days.
CREATE TABLE budget_spend_days (
  budget_id        TEXT NOT NULL REFERENCES budgets (id),
  day              TEXT NOT NULL,
  spent_micros     INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
  reserved_micros  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
  PRIMARY KEY (budget_id, day)
) WITHOUT ROWID;

-- Which budgets a call's reservation is held on (a retry that carries the reservation over, and
-- settlement after a restart, adjust exactly these).
CREATE TABLE budget_reservations (
  audit_id   INTEGER NOT NULL,                   -- the audit row of the attempt that reserved
  budget_id  TEXT NOT NULL,
  day        TEXT NOT NULL,
  micros     INTEGER NOT NULL,
  PRIMARY KEY (audit_id, budget_id)
) WITHOUT ROWID;

-- Alerts raised once per key or budget, UTC day and threshold (threshold -1 = cap.hit).
CREATE TABLE cap_alert_marks (
  scope_id   TEXT NOT NULL,                      -- key_… or bud_…
  day        TEXT NOT NULL,
  threshold  REAL NOT NULL,
  event_id   TEXT NOT NULL,
  PRIMARY KEY (scope_id, day, threshold)
) WITHOUT ROWID;

CREATE TABLE webhooks (
  id                TEXT PRIMARY KEY,            -- whk_…
  url               TEXT NOT NULL,
  events            TEXT NOT NULL,               -- JSON array of event types
  thresholds        TEXT NOT NULL,               -- JSON array of fractions of a daily cap
  format            TEXT NOT NULL CHECK (format IN ('json', 'slack')),
  secret_sealed     TEXT NOT NULL,               -- AES-256-GCM (SecretBox): signing needs the secret itself
  secret_hint       TEXT NOT NULL,
  created_at        INTEGER NOT NULL,
  deleted_at        INTEGER
);

-- The outbox: one row per (webhook, event), written in the transaction that recorded the event.
CREATE TABLE webhook_deliveries (
  id               TEXT PRIMARY KEY,             -- whd_…
  webhook_id       TEXT NOT NULL REFERENCES webhooks (id),
  event_id         TEXT NOT NULL,
  event_type       TEXT NOT NULL,
  body             TEXT NOT NULL,                -- exactly the bytes sent (and signed) on every attempt
  state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
  attempts         INTEGER NOT NULL DEFAULT 0,
  next_attempt_at  INTEGER NOT NULL,             -- due time; a claim moves it past the send's timeout
  created_at       INTEGER NOT NULL,
  delivered_at     INTEGER,
  UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);

CREATE TABLE webhook_attempts (
  delivery_id  TEXT NOT NULL,
  attempt      INTEGER NOT NULL,
  ts           INTEGER NOT NULL,
  status       INTEGER,                          -- the receiver's HTTP status; null if no answer
  error        TEXT,                             -- timeout, connection refused, …
  duration_ms  INTEGER NOT NULL,
  PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
