-- Admin page sessions. The cookie holds a random session id; only its SHA-256 is stored,
-- so a copy of the database cannot be used to take over a browser session.

CREATE TABLE admin_sessions (
  id_hash      TEXT PRIMARY KEY,            -- SHA-256 hex of the session id in the kb_session cookie
  csrf_token   TEXT NOT NULL,               -- sent back on every POST/DELETE from the admin pages
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL,
  ended_at     INTEGER                      -- set by logout; nothing is deleted
);
